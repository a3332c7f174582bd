"""`quickturn serve`: the WebSocket transport (docs/protocol.md) around sessions. Parsing lives in protocol.py."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import signal
import time

from websockets.asyncio.server import ServerConnection, serve as ws_serve
from websockets.exceptions import ConnectionClosed

from . import events as ev
from .audio import StreamResampler, float_to_pcm16
from .protocol import Audio, Playback, ProtocolError, RateMonitor, ServerProtocol, Start, Stop
from .runtime import Runtime
from .session import Session
from .transports.hub import Hub

log = logging.getLogger("quickturn.server")
_ids = itertools.count(1)


class Server:
    def __init__(self, rt: Runtime, hub: Hub | None = None):
        self.rt = rt
        self.cfg = rt.config.server
        self.hub = hub or Hub(rt)  # capacity and metrics shared with the other transports (agent/transports/)
        self.refused = 0

    @property
    def sessions(self) -> dict[int, Session]:
        return {sid: s for sid, (t, s) in self.hub.sessions.items() if t == "quickturn"}

    async def handle(self, ws: ServerConnection) -> None:
        sid = self.hub.reserve("quickturn")
        if sid is None:
            self.refused += 1
            code, why = self.hub.last_refusal  # server_full, or server_busy from admission control
            await _send_error(ws, ProtocolError(code, why, fatal=True))
            await ws.close(1013, code.replace("_", " "))
            return
        proto = ServerProtocol(self.cfg.max_frame_bytes)
        session: Session | None = None
        sender: asyncio.Task | None = None
        monitor: RateMonitor | None = None
        try:
            async for message in ws:
                try:
                    msg = proto.receive(message)
                    if isinstance(msg, Start):
                        started_at = time.monotonic()  # the real-time clock starts here, not at the first frame
                        session = self.hub.session_factory(self.rt, msg.sample_rate,
                                                           info={"transport": "quickturn"})
                        self.hub.add(sid, "quickturn", session)
                        if hasattr(ws, "watch_queue"):  # agent/transports/guard.py: bound what waits for the client
                            ws.watch_queue(session.events)
                        await session.start()
                        monitor = RateMonitor(msg.sample_rate, self.cfg.realtime_slack_s,
                                              self.cfg.realtime_backlog_s, start=started_at)
                        out_rate = msg.output_sample_rate or self.cfg.output_sample_rate or session.out_rate
                        await ws.send(json.dumps({"type": "ready", "session": sid, "encoding": "pcm_s16le",
                                                  "input_sample_rate": msg.sample_rate,
                                                  "output_sample_rate": out_rate}))
                        sender = asyncio.create_task(self._send_events(ws, session, out_rate))
                    elif isinstance(msg, Audio):
                        monitor.add(len(msg.samples), time.monotonic())
                        await session.feed(msg.samples)
                    elif isinstance(msg, Playback):
                        pass  # the playback model in Session is used; reported positions are accepted
                    elif isinstance(msg, Stop):
                        # finish the reply for a client that is still there; one that hangs up meanwhile
                        # does not keep its session (and the models' time) until the reply is done
                        if session and session.reply and session.reply.task and not session.reply.task.done():
                            gone = asyncio.ensure_future(ws.wait_closed())
                            await asyncio.wait({session.reply.task, gone}, return_when=asyncio.FIRST_COMPLETED)
                            gone.cancel()
                        break
                except ProtocolError as e:
                    await _send_error(ws, e)
                    if e.fatal:
                        break
        except ConnectionClosed:
            pass
        except Exception as e:  # a bug in this session: tell the client, end only this connection
            log.exception("session %s failed", sid)
            await _send_error(ws, ProtocolError("internal_error", f"the session failed ({type(e).__name__}); "
                                                "please reconnect", fatal=True))
        finally:
            if session is not None:
                await session.close()
                # let the sender drain what the session said before closing
                await asyncio.sleep(0.05)
            if sender is not None:
                sender.cancel()
            self.hub.remove(sid)
            await ws.close()

    async def _send_events(self, ws: ServerConnection, session: Session, out_rate: int) -> None:
        resampler = StreamResampler(session.out_rate, out_rate)
        try:
            while True:
                e = await session.events.get()
                self.hub.observe("quickturn", e)
                if isinstance(e, ev.ReplyAudio):
                    pcm = float_to_pcm16(resampler(e.audio))
                    if pcm:
                        await ws.send(pcm)
                    session.audio_sent(len(e.audio))
                    continue
                if isinstance(e, ev.Flush):
                    resampler.reset()
                elif isinstance(e, ev.ReplyDone) and (pcm := float_to_pcm16(resampler.flush(drop=e.interrupted))):
                    await ws.send(pcm)  # the reply's last few ms, still in the resampler's filter
                await ws.send(json.dumps(event_to_json(e)))
        except ConnectionClosed:
            pass


def event_to_json(e) -> dict:
    match e:
        case ev.SpeechStarted(t=t):
            return {"type": "speech_started", "t": round(t, 3)}
        case ev.SpeechStopped(t=t):
            return {"type": "speech_stopped", "t": round(t, 3)}
        case ev.TranscriptEvent():
            return {"type": "transcript", "final": e.final, "text": e.text, "stable": e.stable, "turn": e.turn}
        case ev.ReplyDelta():
            return {"type": "reply_delta", "text": e.text, "turn": e.turn}
        case ev.ReplyDone():
            return {"type": "reply_done", "text": e.text, "turn": e.turn, "interrupted": e.interrupted}
        case ev.ReplyTruncated():
            return {"type": "reply_truncated", "text": e.text, "turn": e.turn, "played_samples": e.played_samples}
        case ev.Flush():
            return {"type": "flush", "turn": e.turn, "played_samples": e.played_samples}
        case ev.TurnLatency():
            return {"type": "latency", "turn": e.turn, "ms": e.ms, "v2v_ms": e.v2v_ms,
                    "info": {k: v for k, v in e.info.items() if k != "transcript"}}  # timings, not content
        case ev.ErrorEvent():
            return {"type": "error", "code": e.code, "message": e.message, "fatal": e.fatal}
    return {"type": "unknown"}


async def _send_error(ws, err: ProtocolError) -> None:
    try:
        await ws.send(err.to_json())
    except ConnectionClosed:
        pass


async def start_server(rt: Runtime, host: str | None = None, port: int | None = None, hub: Hub | None = None):
    """Start listening; returns (websockets server, Server). port 0 picks a free port.
    One port serves every transport, routed by path (agent/transports/router.py): `/` this protocol,
    `/v1/realtime` OpenAI Realtime, `/twilio` Twilio Media Streams, `/webrtc` the browser page and its signaling,
    `/metrics`, `/healthz`, `/readyz`."""
    from .transports.router import Router

    from .limits import RedactingLogger, check_bind, effective_token, log_content_enabled, tls_context

    cfg = rt.config.server
    check_bind(host or cfg.host, effective_token(cfg.api_key))  # no open port to the models without a key
    ssl_ctx = tls_context(cfg.tls_cert, cfg.tls_key)  # None: plain ws:// (or TLS at a reverse proxy)
    srv = Server(rt, hub)
    router = Router(srv.hub, srv)
    # websockets logs request lines, headers and frames at DEBUG: never the key; frames only if asked for
    ws_log = RedactingLogger(logging.getLogger("websockets.server"), log_content_enabled(cfg.log_content))
    server = await ws_serve(router.handle, host or cfg.host, cfg.port if port is None else port,
                            process_request=router.process_request, ssl=ssl_ctx, logger=ws_log,
                            max_size=cfg.max_message_bytes, ping_interval=20, ping_timeout=20,
                            max_queue=16, write_limit=max(1024, int(cfg.write_limit)),
                            # no permessage-deflate: PCM audio hardly compresses, and deflating every 20 ms frame
                            # both ways was ~1/3 of the event loop's busy time with 32 callers (H200 profile)
                            compression=None)
    srv.router = router
    return server, srv


async def serve(rt: Runtime, drain_s: float = 30.0) -> int:
    """Serve until SIGTERM/SIGINT, then drain: /readyz turns 503 and new sessions are refused while the live ones
    get up to `drain_s` to finish (a Kubernetes rollout sends SIGTERM; see docs/deploy.md)."""
    server, srv = await start_server(rt)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    host, port = list(server.sockets)[0].getsockname()[:2]
    ws_scheme, http_scheme = ("wss", "https") if srv.rt.config.server.tls_cert else ("ws", "http")
    print(f"quickturn: listening on {ws_scheme}://{host}:{port} (protocol: docs/protocol.md)", flush=True)
    print(f"quickturn: also /v1/realtime (OpenAI Realtime), /twilio (Twilio Media Streams), "
          f"{http_scheme}://{host}:{port}/webrtc (browser), /metrics, /healthz, /readyz (docs/transports.md)",
          flush=True)
    try:
        await stop.wait()
        srv.hub.draining = True
        end = loop.time() + drain_s
        while srv.hub.sessions and loop.time() < end:
            await asyncio.sleep(0.2)
        server.close()
        await server.wait_closed()
    finally:
        rt.close()
    return 0

