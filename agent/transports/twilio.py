"""Twilio Media Streams (`/twilio`): a phone call's audio, G.711 mu-law 8 kHz in 20 ms base64 frames, both ways.

Twilio sends `connected`, `start`, `media`, `dtmf`, `mark`, `stop`; we send `media` (reply audio), `mark` (Twilio
echoes it back when the caller has heard everything before it) and `clear` (barge-in: drop what the caller has not
heard yet). `TwilioProtocol` is sans I/O; `TwilioHandler` wires it to a WebSocket and a Session."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .. import events as ev
from ..audio import StreamResampler, ulaw_decode, ulaw_encode
from ..protocol import ProtocolError, RateMonitor
from ..session import Playback

log = logging.getLogger("quickturn.twilio")

RATE = 8_000
FRAME = 160  # samples (and mu-law bytes) in 20 ms
MAX_PAYLOAD = 16_000  # bytes of mu-law in one media message (2 s); Twilio sends 160


@dataclass(frozen=True)
class Connected:
    protocol: str


@dataclass(frozen=True)
class Start:
    stream_sid: str
    call_sid: str
    custom: dict = field(default_factory=dict)  # <Parameter> values from the TwiML


@dataclass(frozen=True)
class Media:
    samples: np.ndarray  # float32 at 8 kHz
    timestamp_ms: int | None


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class Mark:
    name: str


@dataclass(frozen=True)
class Stop:
    pass


TwilioEvent = Connected | Start | Media | Dtmf | Mark | Stop


class TwilioProtocol:
    """Parses Twilio's messages, builds ours. Errors are ProtocolErrors (logged: Twilio ignores what we send)."""

    def __init__(self):
        self.stream_sid: str | None = None

    def receive(self, message: str | bytes) -> TwilioEvent:
        if not isinstance(message, str):
            raise ProtocolError("bad_message", "Twilio sends text (JSON) messages only")
        try:
            obj = json.loads(message)
        except (ValueError, TypeError, RecursionError):
            raise ProtocolError("bad_json", "messages must be JSON objects") from None
        if not isinstance(obj, dict):
            raise ProtocolError("bad_json", "messages must be JSON objects")
        kind = obj.get("event")
        if kind == "connected":
            return Connected(str(obj.get("protocol", "")))
        if kind == "start":
            if self.stream_sid is not None:
                raise ProtocolError("already_started", "the stream has already started")
            start = obj.get("start")
            if not isinstance(start, dict):
                raise ProtocolError("bad_message", "start.start must be an object")
            fmt = start.get("mediaFormat") or {}
            if not isinstance(fmt, dict) or fmt.get("encoding", "audio/x-mulaw") != "audio/x-mulaw" or \
                    fmt.get("sampleRate", RATE) != RATE or fmt.get("channels", 1) != 1:
                raise ProtocolError("unsupported_format", "only audio/x-mulaw 8000 Hz mono is supported, got "
                                    f"{str(fmt)[:80]}", fatal=True)
            sid = obj.get("streamSid") or start.get("streamSid")
            if not isinstance(sid, str) or not sid:
                raise ProtocolError("bad_message", "start needs a streamSid", fatal=True)
            self.stream_sid = sid
            custom = start.get("customParameters")
            return Start(sid, str(start.get("callSid", "")), custom if isinstance(custom, dict) else {})
        if self.stream_sid is None and kind in ("media", "dtmf", "mark"):
            raise ProtocolError("not_started", f"{kind} before start")
        if kind == "media":
            media = obj.get("media")
            if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
                raise ProtocolError("bad_message", "media.payload must be a base64 string")
            if media.get("track", "inbound") not in ("inbound", "inbound_track"):
                raise ProtocolError("bad_message", "only the inbound track is handled")
            if len(media["payload"]) > MAX_PAYLOAD * 4 // 3 + 4:
                raise ProtocolError("frame_too_large", f"media payload over {MAX_PAYLOAD} bytes")
            try:
                blob = base64.b64decode(media["payload"], validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError("bad_frame", "media.payload is not valid base64") from None
            ts = media.get("timestamp")
            try:
                ts = int(ts) if ts is not None else None
            except (TypeError, ValueError, OverflowError):  # OverflowError: "timestamp": Infinity
                ts = None
            return Media(ulaw_decode(blob), ts)
        if kind == "dtmf":
            d = obj.get("dtmf")
            digit = d.get("digit") if isinstance(d, dict) else None
            if not isinstance(digit, str) or len(digit) != 1 or digit not in "0123456789*#ABCD":
                raise ProtocolError("bad_message", "dtmf.digit must be one of 0-9 * # A-D")
            return Dtmf(digit)
        if kind == "mark":
            m = obj.get("mark")
            name = m.get("name") if isinstance(m, dict) else None
            if not isinstance(name, str):
                raise ProtocolError("bad_message", "mark.name must be a string")
            return Mark(name)
        if kind == "stop":
            return Stop()
        raise ProtocolError("unknown_type", f"unknown event {str(kind)[:40]!r}")

    # ------------------------------------------------------------------------------------------ output
    def media(self, ulaw: bytes) -> str:
        return json.dumps({"event": "media", "streamSid": self.stream_sid,
                           "media": {"payload": base64.b64encode(ulaw).decode()}})

    def mark(self, name: str) -> str:
        return json.dumps({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    def clear(self) -> str:
        return json.dumps({"event": "clear", "streamSid": self.stream_sid})


def mark_name(turn: int, samples: int) -> str:
    """A mark after `samples` reply samples (at the voice's rate) of turn `turn`."""
    return f"qt:{turn}:{samples}"


def parse_mark(name: str) -> tuple[int, int] | None:
    parts = name.split(":")
    if len(parts) == 3 and parts[0] == "qt" and all(p.isascii() and p.isdigit() for p in parts[1:]):
        return int(parts[1]), int(parts[2])
    return None


class MarkPlayback(Playback):
    """The session's playback model, bounded by Twilio's marks: the caller cannot have heard more than the last
    mark Twilio echoed plus the time since (Twilio plays in real time from its buffer). Barge-in truncation and
    `played()` use this bound, so network and buffering delays don't count as heard."""

    def __init__(self, rate: int):
        super().__init__(rate)
        self.confirmed = 0  # samples of this turn the caller has heard, by the last echoed mark
        self.confirmed_at: float | None = None
        self.turn = 0

    def on_mark(self, turn: int, samples: int, now: float | None = None) -> None:
        if turn == self.turn and samples >= self.confirmed:
            self.confirmed, self.confirmed_at = samples, time.monotonic() if now is None else now

    def played(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        by_clock = super().played(now)
        if self.confirmed_at is None:
            return by_clock
        return min(by_clock, self.confirmed + int((now - self.confirmed_at) * self.rate))

    def reset(self) -> None:
        super().reset()
        self.confirmed, self.confirmed_at = 0, None


DtmfHook = Callable[[object, str], Awaitable[None]]  # (session, digit)


class TwilioHandler:
    """One Media Stream <-> one Session. `on_dtmf(session, digit)` may act on key presses (default: log)."""

    def __init__(self, hub, on_dtmf: DtmfHook | None = None, on_start: Callable | None = None):
        self.hub = hub
        self.on_dtmf = on_dtmf
        self.on_start = on_start  # (session, Start) -> awaitable, e.g. set instructions from customParameters

    async def handle(self, ws: ServerConnection) -> None:
        hub, proto = self.hub, TwilioProtocol()
        sid = session = sender = None
        monitor: RateMonitor | None = None  # Twilio streams in real time; /twilio has no key, so a flood is cut
        marks_heard: list[str] = []
        try:
            async for message in ws:
                try:
                    msg = proto.receive(message)
                except ProtocolError as e:
                    hub.error("twilio", e.code)
                    log.warning(json.dumps({"event": "twilio_error", "code": e.code, "message": e.message}))
                    if e.fatal:
                        break
                    continue
                if isinstance(msg, Start):
                    opened = hub.open("twilio", RATE, info={"call_sid": msg.call_sid, "stream_sid": msg.stream_sid,
                                                            "custom": msg.custom})
                    if opened is None:
                        log.warning(json.dumps({"event": "twilio_refused", "call": msg.call_sid,
                                                "code": hub.last_refusal[0], "reason": hub.last_refusal[1]}))
                        break  # Twilio ends the <Stream>; the TwiML after <Connect> can say "busy"
                    sid, session = opened
                    cfg = hub.rt.config.server
                    monitor = RateMonitor(RATE, cfg.realtime_slack_s, cfg.realtime_backlog_s, start=time.monotonic())
                    if hasattr(ws, "watch_queue"):  # agent/transports/guard.py: bound what waits for Twilio
                        ws.watch_queue(session.events)
                    session.playback = MarkPlayback(session.out_rate)
                    await session.start()
                    if self.on_start is not None:
                        await self.on_start(session, msg)
                    sender = asyncio.create_task(self._send_events(ws, proto, session))
                    log.info(json.dumps({"event": "twilio_start", "stream": msg.stream_sid, "call": msg.call_sid}))
                elif isinstance(msg, Media):
                    try:
                        monitor.add(len(msg.samples), time.monotonic())
                    except ProtocolError as e:
                        hub.error("twilio", e.code)
                        log.warning(json.dumps({"event": "twilio_error", "code": e.code, "message": e.message}))
                        break
                    await session.feed(msg.samples)
                elif isinstance(msg, Mark):
                    marks_heard.append(msg.name)
                    if (m := parse_mark(msg.name)) is not None:
                        session.playback.on_mark(*m)
                    elif msg.name == f"qt:{getattr(session, 'end_turn', None)}:done":
                        log.info(json.dumps({"event": "twilio_end", "reason": "end requested by on_turn hook"}))
                        break  # the caller heard the last reply; Twilio goes on with the TwiML after <Connect>
                elif isinstance(msg, Dtmf):
                    log.info(json.dumps({"event": "twilio_dtmf", "digit": msg.digit}))
                    on_dtmf = self.on_dtmf or hub.on_dtmf
                    if on_dtmf is not None:
                        await on_dtmf(session, msg.digit)
                elif isinstance(msg, Stop):
                    break
        except ConnectionClosed:
            pass
        finally:
            if session is not None:
                await session.close()
                await asyncio.sleep(0.05)
            if sender is not None:
                sender.cancel()
            if sid is not None:
                hub.remove(sid)
            await ws.close()

    async def _send_events(self, ws, proto: TwilioProtocol, session) -> None:
        resampler = StreamResampler(session.out_rate, RATE)
        pending = b""  # mu-law not yet sent (we send whole 20 ms frames)
        try:
            while True:
                e = await session.events.get()
                self.hub.observe("twilio", e)
                if isinstance(e, ev.ReplyAudio):
                    pb = session.playback
                    pb.turn = e.turn
                    pending += ulaw_encode(resampler(e.audio))
                    n = len(pending) // FRAME * FRAME
                    for i in range(0, n, FRAME):
                        await ws.send(proto.media(pending[i:i + FRAME]))
                    pending = pending[n:]
                    session.audio_sent(len(e.audio))
                    await ws.send(proto.mark(mark_name(e.turn, pb.sent)))
                elif isinstance(e, ev.ReplyDone):
                    if e.interrupted:  # what was cut is not sent: neither the filter's tail nor a partial frame
                        pending = b""
                    if pending := pending + ulaw_encode(resampler.flush(drop=e.interrupted)):
                        pending += b"\xff" * (-len(pending) % FRAME)  # the last partial frame, padded with silence
                        for i in range(0, len(pending), FRAME):
                            await ws.send(proto.media(pending[i:i + FRAME]))
                        pending = b""
                    await ws.send(proto.mark(f"qt:{e.turn}:done"))
                elif isinstance(e, ev.Flush):
                    pending = b""
                    resampler.reset()
                    await ws.send(proto.clear())
                    log.info(json.dumps({"event": "twilio_clear", "turn": e.turn, "played": e.played_samples}))
        except ConnectionClosed:
            pass
