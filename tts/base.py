"""The one TTS interface both backends implement (piper-tts/onnxruntime on CPU, the torch VITS on GPU)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np


@dataclass
class WordTiming:
    word: str
    start: int  # sample offsets from the start of the phrase's audio
    end: int


@dataclass
class TTSChunk:
    audio: np.ndarray  # float32 mono at the backend's sample_rate
    offset: int  # sample offset of this chunk within its phrase
    last: bool  # the phrase's final chunk
    # word timings of the whole phrase, known once durations are predicted (may be empty for backends without)
    words: list[WordTiming] = field(default_factory=list)


class TTS(Protocol):
    sample_rate: int

    def synthesize(self, text: str) -> Iterator[TTSChunk]:
        """Audio for one phrase, in chunks, the first as early as possible."""
        ...
