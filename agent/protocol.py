"""Quickturn's WebSocket protocol (docs/protocol.md), sans I/O: messages in, typed events or errors out.
Nothing here touches a socket or a clock, so every rule is tested and fuzzed directly."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .audio import SUPPORTED_RATES, AudioError, pcm16_to_float

ENCODINGS = ("pcm_s16le",)


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, fatal: bool = False):
        super().__init__(message)
        self.code, self.message, self.fatal = code, message, fatal

    def to_json(self) -> str:
        return json.dumps({"type": "error", "code": self.code, "message": self.message, "fatal": self.fatal})


@dataclass(frozen=True)
class Start:
    sample_rate: int
    encoding: str = "pcm_s16le"
    channels: int = 1
    output_sample_rate: int = 0  # 0: the voice's own rate


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32 mono at the declared rate


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Playback:
    """The client says how many reply samples it has actually played (optional, improves barge-in)."""
    samples: int


ClientEvent = Start | Audio | Stop | Playback


class ServerProtocol:
    """Per-connection state of the protocol."""

    def __init__(self, max_frame_bytes: int = 65_536):
        self.max_frame_bytes = max_frame_bytes
        self.start: Start | None = None

    def receive(self, message: str | bytes) -> ClientEvent:
        """Parse one client message; raises ProtocolError with a code the client can act on."""
        if isinstance(message, (bytes, bytearray, memoryview)):
            return self._audio(bytes(message))
        try:
            obj = json.loads(message)
        except (TypeError, ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
            raise ProtocolError("bad_json", "text messages must be JSON objects") from None
        if not isinstance(obj, dict):
            raise ProtocolError("bad_json", "text messages must be JSON objects")
        kind = obj.get("type")
        if kind == "start":
            return self._start(obj)
        if kind == "stop":
            return Stop()
        if kind == "playback":
            n = obj.get("samples")
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ProtocolError("bad_message", "playback.samples must be a non-negative integer")
            return Playback(n)
        raise ProtocolError("unknown_type", f"unknown message type {str(kind)[:40]!r} (start, stop, playback)")

    def _start(self, obj: dict) -> Start:
        if self.start is not None:
            raise ProtocolError("already_started", "the session has already started")
        rate, enc = obj.get("sample_rate"), obj.get("encoding", "pcm_s16le")
        channels, out_rate = obj.get("channels", 1), obj.get("output_sample_rate", 0)
        if enc not in ENCODINGS:
            raise ProtocolError("unsupported_format",
                                f"encoding {str(enc)[:40]!r} is not supported (supported: {', '.join(ENCODINGS)})")
        if channels != 1:
            raise ProtocolError("unsupported_format", "only mono audio (channels = 1) is supported")
        for name, value, allow_zero in (("sample_rate", rate, False), ("output_sample_rate", out_rate, True)):
            if isinstance(value, bool) or not isinstance(value, int) or (value == 0 and not allow_zero) or (
                    value != 0 and value not in SUPPORTED_RATES):
                raise ProtocolError("unsupported_sample_rate",
                                    f"{name} {str(value)[:20]} is not supported "
                                    f"(supported: {', '.join(map(str, SUPPORTED_RATES))})")
        self.start = Start(rate, enc, channels, out_rate)
        return self.start

    def _audio(self, blob: bytes) -> Audio:
        if self.start is None:
            raise ProtocolError("not_started", "send a start message before audio")
        if len(blob) > self.max_frame_bytes:
            raise ProtocolError("frame_too_large",
                                f"audio frame of {len(blob)} bytes exceeds the limit of {self.max_frame_bytes}")
        try:
            return Audio(pcm16_to_float(blob))
        except AudioError as e:
            raise ProtocolError("bad_frame", str(e)) from None


class RateMonitor:
    """Audio must arrive in real time, as a leaky bucket: `level` is how far the audio received runs ahead of the
    wall clock (seconds). Every frame adds its duration; wall time drains it, but only down to -backlog_s, so
    credit for time in which nothing arrived is capped. A client more than `slack_s` ahead is refused: it is
    sending at another rate than it declared, or flooding.

    What this accepts: a client whose network (or our event loop) stalled and that then sends its backlog in one
    burst, up to backlog_s + slack_s of it; a client that buffered audio while the session was starting (the clock
    starts at `start`, the start message, not at the first frame). What it refuses: sustained faster than real
    time (at r x real time, within about (slack_s + backlog_s) / (r - 1) s), and a client that sent nothing for a
    long time and then floods (the credit does not grow past backlog_s)."""

    def __init__(self, declared_rate: int, slack_s: float, backlog_s: float = 0.0, start: float | None = None):
        self.rate, self.slack, self.backlog = declared_rate, slack_s, max(0.0, backlog_s)
        self.t0: float | None = start
        self.last: float | None = start
        self.level = 0.0  # seconds of audio ahead of the wall clock (negative: behind, i.e. credit)
        self.samples = 0

    def add(self, n: int, now: float) -> None:
        if self.t0 is None:
            self.t0 = self.last = now
        if now > self.last:  # a clock that steps back never adds credit
            self.level = max(-self.backlog, self.level - (now - self.last))
            self.last = now
        self.samples += n
        self.level += n / self.rate
        if self.level > self.slack:
            raise ProtocolError(
                "sample_rate_mismatch",
                f"audio arrives faster than real time for the declared {self.rate} Hz "
                f"({self.samples / self.rate:.1f} s of audio in {now - self.t0:.1f} s, {self.level:.1f} s ahead; "
                f"at most {self.slack:g} s is allowed): is the sample rate right?",
                fatal=True)
