"""What a session tells its transport. Transports turn these into their own wire messages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SpeechStarted:
    t: float  # stream seconds


@dataclass
class SpeechStopped:
    t: float


@dataclass
class TranscriptEvent:
    text: str
    final: bool
    turn: int
    stable: str = ""


@dataclass
class ReplyDelta:
    text: str
    turn: int


@dataclass
class ReplyAudio:
    audio: np.ndarray  # float32 mono at sample_rate
    sample_rate: int
    turn: int
    phrase: int


@dataclass
class ReplyDone:
    text: str  # what the history keeps: all of it, or what was played before an interruption
    turn: int
    interrupted: bool = False
    full_text: str = ""  # what the LLM generated


@dataclass
class ReplyTruncated:
    """After a barge-in: the history keeps only `text`, the part of the reply the listener heard."""
    text: str
    turn: int
    played_samples: int


@dataclass
class Flush:
    """Barge-in: drop every reply sample not yet played."""
    turn: int
    played_samples: int


@dataclass
class TurnLatency:
    turn: int
    ms: dict = field(default_factory=dict)  # stage -> ms after the end of speech
    v2v_ms: float | None = None
    info: dict = field(default_factory=dict)


@dataclass
class ErrorEvent:
    code: str
    message: str
    fatal: bool = False


Event = (SpeechStarted | SpeechStopped | TranscriptEvent | ReplyDelta | ReplyAudio | ReplyDone | ReplyTruncated | Flush
         | TurnLatency | ErrorEvent)
