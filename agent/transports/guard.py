"""Per-connection limits, wired around every WebSocket transport by the router (agent/transports/router.py):
idle timeout and maximum session length (agent/limits.py SessionTimers), slow consumers (a send that makes no
progress for `send_timeout_s`, or more than `max_outbound_events` session events waiting to be sent) and the
refusals that end a connection after the upgrade: an error event in the transport's own format, then the close
code, each one counted (Hub.refuse -> quickturn_refusals_total).

`Guard` stands in for the websockets ServerConnection it wraps: transports iterate it and send through it as
before, so every inbound message resets the idle timer and every outbound message has a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Callable

from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.frames import Close

from ..limits import IDLE, SLOW_CONSUMER, TOO_LONG, Refusal, SessionTimers

log = logging.getLogger("quickturn.guard")

ERROR_SEND_S = 1.0  # how long the error event of a refusal may wait for the client
CLOSE_WAIT_S = 5.0  # then the close handshake; past it the TCP connection is aborted
BACKLOG_POLL_S = 0.1  # how often the outbound backlog is looked at (a session adds a few events per 100 ms)


def error_message(transport: str, r: Refusal) -> str | None:
    """The refusal as the transport's error event (None: the transport has no error events; Twilio)."""
    if transport == "realtime":
        kind = "server_error" if r in (SLOW_CONSUMER,) else "invalid_request_error"
        return json.dumps({"type": "error", "event_id": f"event_{r.code}",
                           "error": {"type": kind, "code": r.code, "message": r.message}})
    if transport == "twilio":
        return None
    return json.dumps({"type": "error", "code": r.code, "message": r.message, "fatal": True})


class Guard:
    """A ServerConnection with limits. Attribute access falls through to the connection."""

    def __init__(self, ws, hub, transport: str, cfg, now: Callable[[], float] = time.monotonic):
        self.ws, self.hub, self.transport = ws, hub, transport
        self.now = now
        self.timers = SessionTimers(now(), float(cfg.idle_timeout_s or 0), float(cfg.max_session_s or 0))
        self.send_timeout = float(cfg.send_timeout_s or 0)
        self.max_backlog = int(cfg.max_outbound_events or 0)
        self.backlog: Callable[[], int] | None = None  # set by the transport: its session's event queue size
        self.max_seen_backlog = 0
        self.refused: Refusal | None = None
        self._closing: asyncio.Task | None = None

    def __getattr__(self, name):
        return getattr(self.ws, name)

    # --------------------------------------------------------------------------------------------- inbound
    def touch(self) -> None:
        """Client activity that does not arrive on the WebSocket (WebRTC's microphone track)."""
        self.timers.touch(self.now())

    async def __aiter__(self):
        async for message in self.ws:
            self.timers.touch(self.now())
            yield message

    async def recv(self, *args, **kwargs):
        message = await self.ws.recv(*args, **kwargs)
        self.timers.touch(self.now())
        return message

    # -------------------------------------------------------------------------------------------- outbound
    def watch_queue(self, q: asyncio.Queue) -> None:
        self.backlog = q.qsize

    async def send(self, message, *args, **kwargs) -> None:
        if self.refused is not None:
            raise self._closed_exc()
        if self.send_timeout <= 0:
            return await self.ws.send(message, *args, **kwargs)
        try:
            # websockets' send() waits while more than write_limit bytes are buffered: that wait is the
            # throttle; a client that makes no progress for send_timeout_s is dropped
            await asyncio.wait_for(self.ws.send(message, *args, **kwargs), self.send_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            await self.refuse(SLOW_CONSUMER)
            raise self._closed_exc() from None

    def _closed_exc(self) -> ConnectionClosed:
        r = self.refused or SLOW_CONSUMER
        return ConnectionClosedError(None, Close(r.close_code, r.code))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        await self._close_ws(code, reason)

    async def _close_ws(self, code: int, reason: str) -> None:
        """The close handshake, bounded: websockets' close() waits for the buffered output to drain and for the
        client's close frame; past CLOSE_WAIT_S the TCP connection is aborted (a client that reads nothing cannot
        hold it open). Meanwhile what the client still sends is read and dropped: with its inbound queue full
        (max_queue) websockets stops reading, and the client's close frame would wait behind the unread messages
        (a flood cut by the rate check took the whole CLOSE_WAIT_S to close)."""
        drain = asyncio.ensure_future(self._discard_inbound())
        try:
            await asyncio.wait_for(self.ws.close(code, reason), CLOSE_WAIT_S)
        except (asyncio.TimeoutError, TimeoutError):
            transport = getattr(self.ws, "transport", None)
            if transport is not None:
                transport.abort()
        except ConnectionClosed:
            pass
        finally:
            drain.cancel()

    async def _discard_inbound(self) -> None:
        # RuntimeError: websockets' ConcurrencyError, when the transport's handler is still reading (then nothing
        # is stuck in the queue)
        with contextlib.suppress(ConnectionClosed, RuntimeError):
            async for _ in self.ws:
                pass

    # ------------------------------------------------------------------------------------------- refusals
    async def refuse(self, r: Refusal) -> None:
        """Say why (error event), close with the refusal's code; bounded in time even if the client reads
        nothing. Idempotent: the first refusal wins."""
        if self.refused is not None:
            if self._closing is not None:
                await asyncio.shield(self._closing)
            return
        self.refused = r
        self.hub.refuse(self.transport, r.code)
        log.warning(json.dumps({"event": "connection_refused", "transport": self.transport, "code": r.code}))
        self._closing = asyncio.ensure_future(self._close(r))
        await asyncio.shield(self._closing)

    async def _close(self, r: Refusal) -> None:
        msg = error_message(self.transport, r)
        if msg is not None:
            try:
                await asyncio.wait_for(self.ws.send(msg), ERROR_SEND_S)
            except (asyncio.TimeoutError, TimeoutError, ConnectionClosed):
                pass
        await self._close_ws(r.close_code, r.code)

    async def watch(self) -> None:
        """Runs beside the transport's handler: timers and the outbound backlog."""
        try:
            while self.refused is None:
                now = self.now()
                expired = self.timers.expired(now)
                if expired is not None:
                    await self.refuse(expired)
                    return
                if self.backlog is not None:
                    n = self.backlog()
                    self.max_seen_backlog = max(self.max_seen_backlog, n)
                    if self.max_backlog > 0 and n > self.max_backlog:
                        await self.refuse(SLOW_CONSUMER)
                        return
                wait = self.timers.next_check(now)
                await asyncio.sleep(min(wait, BACKLOG_POLL_S) if self.backlog is not None else min(wait, 5.0))
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("connection guard failed")


REFUSALS_AFTER_UPGRADE = (IDLE, TOO_LONG, SLOW_CONSUMER)
