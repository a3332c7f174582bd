"""One port, every transport: plain HTTP GETs (metrics, health, the WebRTC page) are answered in the websockets
library's `process_request` hook; WebSocket upgrades are dispatched by path."""

from __future__ import annotations

import email.utils
import hmac
import json
import logging
import urllib.parse
from http import HTTPStatus
from pathlib import Path

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .hub import Hub

log = logging.getLogger("quickturn.router")
STATIC = Path(__file__).resolve().parent.parent / "static"

# path -> transport name, for WebSocket upgrades
WS_PATHS = {"/": "quickturn", "/v1/realtime": "realtime", "/realtime": "realtime", "/twilio": "twilio",
            "/webrtc/ws": "webrtc"}
STATIC_FILES = {"/webrtc": ("webrtc.html", "text/html; charset=utf-8")}
# With $QUICKTURN_API_KEY set, these WebSocket endpoints want `Authorization: Bearer <key>` (what the OpenAI SDK
# sends) or `?api_key=<key>`. Twilio cannot send either (validate its X-Twilio-Signature at the proxy); the browser
# page cannot send headers (put it behind your own login).
KEYED_PATHS = {"/", "/v1/realtime", "/realtime"}

INDEX = """<!doctype html><meta charset="utf-8"><title>Quickturn</title>
<h1>Quickturn</h1><ul>
<li><a href="/webrtc">/webrtc</a>: talk to the agent in this browser</li>
<li>ws://&lt;host&gt;/ : Quickturn's own protocol (docs/protocol.md)</li>
<li>ws://&lt;host&gt;/v1/realtime : OpenAI Realtime API subset</li>
<li>ws://&lt;host&gt;/twilio : Twilio Media Streams</li>
<li><a href="/metrics">/metrics</a>, <a href="/healthz">/healthz</a>, <a href="/readyz">/readyz</a></li></ul>"""


def http_response(status: int, body: bytes, content_type: str, extra: dict | None = None) -> Response:
    s = HTTPStatus(status)
    headers = Headers()
    headers["Date"] = email.utils.formatdate(usegmt=True)
    headers["Connection"] = "close"
    headers["Content-Length"] = str(len(body))
    headers["Content-Type"] = content_type
    headers["Cache-Control"] = "no-store"
    for k, v in (extra or {}).items():
        headers[k] = v
    return Response(s.value, s.phrase, headers, body)


def json_response(status: int, obj: dict) -> Response:
    return http_response(status, json.dumps(obj).encode(), "application/json")


def authorized(path: str, headers, key: str | None) -> bool:
    """Does this request carry the API key (when one is configured)?"""
    if not key or route_path(path) not in KEYED_PATHS:
        return True
    auth = headers.get("Authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    if given is None:
        query = urllib.parse.parse_qs(path.partition("?")[2])
        given = (query.get("api_key") or [None])[0]
    return given is not None and hmac.compare_digest(given.encode(), key.encode())


def route_path(path: str) -> str:
    """Request target -> path without the query, without a trailing slash (but "/" stays)."""
    p = path.split("?", 1)[0]
    return p.rstrip("/") or "/"


def refusal_response(r) -> Response:
    """A limits.Refusal before the upgrade: its HTTP status and an OpenAI-style error body."""
    return json_response(r.status, {"error": {"type": "invalid_request_error", "code": r.code, "message": r.message}})


class Router:
    def __init__(self, hub: Hub, quickturn_server):
        self.hub = hub
        self.quickturn = quickturn_server  # agent.server.Server
        self._handlers: dict[str, object] = {}
        from ..limits import AddressCounter, effective_token, parse_networks

        cfg = quickturn_server.rt.config.server
        self.cfg = cfg
        self.api_key = effective_token(cfg.api_key) or None
        self.allowed_origins = [str(o) for o in (cfg.allowed_origins or [])]
        self.addresses = AddressCounter(int(cfg.max_sessions_per_address or 0))
        self.exempt = parse_networks(cfg.per_address_exempt)
        self.trusted = parse_networks(cfg.trusted_proxies)
        self.guards: set = set()  # live connections' guards (agent/transports/guard.py)

    def client(self, peer, headers) -> str | None:
        """The address this connection counts under, or None when it is exempt from the per-address limit."""
        from ..limits import client_address, in_networks

        addr = client_address(peer, headers, self.trusted)
        return None if in_networks(addr, self.exempt) else addr

    def handler(self, transport: str):
        """The transport's connection handler, created on first use (aiortc is imported only when needed)."""
        h = self._handlers.get(transport)
        if h is None:
            if transport == "quickturn":
                h = self.quickturn.handle
            elif transport == "realtime":
                from .realtime import RealtimeHandler
                h = RealtimeHandler(self.hub).handle
            elif transport == "twilio":
                from .twilio import TwilioHandler
                h = TwilioHandler(self.hub).handle
            elif transport == "webrtc":
                from .webrtc import WebRTCHandler
                h = WebRTCHandler(self.hub).handle
            self._handlers[transport] = h
        return h

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = route_path(request.path)
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if upgrade:
            if path in WS_PATHS:
                from ..limits import BAD_ORIGIN, TOO_MANY, UNAUTHORIZED, address_key, origin_allowed

                transport = WS_PATHS[path]
                # browsers send an Origin: a page elsewhere must not drive this server with its visitor's access
                if not origin_allowed(request.headers.get("Origin"), self.allowed_origins,
                                      request.headers.get("Host")):
                    self.hub.refuse(transport, BAD_ORIGIN.code)
                    return refusal_response(BAD_ORIGIN)
                if not authorized(request.path, request.headers, self.api_key):
                    self.hub.error(transport, "unauthorized")
                    self.hub.refuse(transport, UNAUTHORIZED.code)
                    return json_response(401, {"error": {"type": "invalid_request_error", "code": "invalid_api_key",
                                                         "message": "missing or wrong API key"}})
                addr = self.client(connection.remote_address, request.headers)
                if addr is not None and self.addresses.max > 0 and \
                        self.addresses.live.get(address_key(addr), 0) >= self.addresses.max:
                    self.hub.refuse(transport, TOO_MANY.code)
                    return refusal_response(TOO_MANY)
                return None  # go on with the WebSocket handshake
            return connection.respond(HTTPStatus.NOT_FOUND, f"no WebSocket endpoint at {path}\n")
        if path == "/metrics":
            body, ctype = self.hub.metrics.exposition()
            return http_response(200, body, ctype)
        if path == "/healthz":
            h = self.hub.health()
            return json_response(200 if h["status"] == "ok" else 503, h)
        if path == "/readyz":
            ready, body = self.hub.readiness()
            return json_response(200 if ready else 503, body)
        if path in STATIC_FILES:
            name, ctype = STATIC_FILES[path]
            return http_response(200, (STATIC / name).read_bytes(), ctype)
        if path == "/":
            return http_response(200, INDEX.encode(), "text/html; charset=utf-8")
        return connection.respond(HTTPStatus.NOT_FOUND, f"not found: {path}\n")

    async def handle(self, ws: ServerConnection) -> None:
        """Every WebSocket connection: the per-address count (checked again here: handshakes race), then the
        transport's handler behind a Guard (idle / length timers, slow consumers)."""
        import asyncio

        from ..limits import TOO_MANY
        from .guard import Guard

        transport = WS_PATHS[route_path(ws.request.path)]
        if self.cfg.send_buffer_bytes:  # bound what the kernel holds for a client that does not read, too
            import socket

            sock = ws.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(self.cfg.send_buffer_bytes))
        guard = Guard(ws, self.hub, transport, self.cfg)
        addr = self.client(ws.remote_address, ws.request.headers)
        if addr is not None and not self.addresses.acquire(addr):
            await guard.refuse(TOO_MANY)
            return
        self.guards.add(guard)
        watch = asyncio.create_task(guard.watch())
        try:
            await self.handler(transport)(guard)
        finally:
            watch.cancel()
            self.guards.discard(guard)
            if addr is not None:
                self.addresses.release(addr)
