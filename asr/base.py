"""The one ASR interface both backends implement (faster-whisper on CPU, the torch Whisper on GPU)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Transcript:
    text: str
    final: bool
    # the prefix that consecutive hypotheses agreed on (streaming); equals text when final
    stable: str = ""


class ASR(Protocol):
    sample_rate: int  # 16000

    def transcribe(self, audio: np.ndarray) -> str:
        """Whole-utterance transcription of float32 mono audio at `sample_rate`."""
        ...

    def stream(self) -> "ASRStream":
        """A streaming recogniser for one utterance."""
        ...

    # Optional: transcribe_with_end(audio) -> (text, P(end of text) after the last token, or None). The session's
    # endpoint check reads it (agent/session.py). Both backends have it (the torch one also batched:
    # transcribe_with_end_batch).


class ASRStream(Protocol):
    def feed(self, audio: np.ndarray) -> Transcript | None:
        """Add audio; may return a partial transcript (None when no new hypothesis was computed)."""
        ...

    def finish(self) -> Transcript:
        """The endpoint: return the final transcript of everything fed."""
        ...
