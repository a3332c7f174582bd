"""One port, every transport: plain HTTP GETs (metrics, health, the WebRTC page) are answered in the websockets
library's `process_request` hook; WebSocket upgrades are dispatched by path."""

from __future__ import annotations

import email.utils
import json
import logging
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


def route_path(path: str) -> str:
    """Request target -> path without the query, without a trailing slash (but "/" stays)."""
    p = path.split("?", 1)[0]
    return p.rstrip("/") or "/"


class Router:
    def __init__(self, hub: Hub, quickturn_server):
        self.hub = hub
        self.quickturn = quickturn_server  # agent.server.Server
        self._handlers: dict[str, object] = {}

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
                return None  # go on with the WebSocket handshake
            return connection.respond(HTTPStatus.NOT_FOUND, f"no WebSocket endpoint at {path}\n")
        if path == "/metrics":
            body, ctype = self.hub.metrics.exposition()
            return http_response(200, body, ctype)
        if path == "/healthz":
            return json_response(200, self.hub.health())
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
        transport = WS_PATHS[route_path(ws.request.path)]
        await self.handler(transport)(ws)
