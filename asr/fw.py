"""The CPU ASR backend: faster-whisper (CTranslate2, int8) on a CTranslate2 Whisper directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Transcript

SAMPLE_RATE = 16_000


class FasterWhisperASR:
    sample_rate = SAMPLE_RATE

    def __init__(self, model_dir: str | Path, compute_type: str = "int8", beam_size: int = 1,
                 language: str | None = "en", cpu_threads: int = 0, partial_interval_s: float = 1.0):
        from faster_whisper import WhisperModel  # heavy import, kept out of module import time

        self.model = WhisperModel(str(model_dir), device="cpu", compute_type=compute_type,
                                  cpu_threads=cpu_threads)
        multilingual = self.model.model.is_multilingual
        self.language = language if multilingual else None
        self.beam_size = beam_size
        self.partial_interval_s = partial_interval_s

    def transcribe(self, audio: np.ndarray) -> str:
        if audio.size < SAMPLE_RATE // 10:
            return ""
        segments, _ = self.model.transcribe(
            audio.astype(np.float32, copy=False), language=self.language, beam_size=self.beam_size,
            vad_filter=True,  # Silero gate: silence and noise give no segments instead of hallucinations
            condition_on_previous_text=False, without_timestamps=True,
        )
        return " ".join(s.text.strip() for s in segments if s.no_speech_prob < 0.8).strip()

    def stream(self) -> "RetranscribeStream":
        return RetranscribeStream(self, self.partial_interval_s)


class RetranscribeStream:
    """Partials by re-transcribing the utterance every `interval_s` of new audio (cheap enough for tiny.en);
    the stable prefix is the words two consecutive hypotheses agree on (LocalAgreement-2)."""

    def __init__(self, asr: FasterWhisperASR, interval_s: float):
        self.asr = asr
        self.interval = int(interval_s * SAMPLE_RATE) if interval_s > 0 else 0
        self.chunks: list[np.ndarray] = []
        self.n = 0
        self.last_at = 0
        self.prev_words: list[str] = []
        self.stable: list[str] = []

    def feed(self, audio: np.ndarray) -> Transcript | None:
        self.chunks.append(audio)
        self.n += len(audio)
        if not self.interval or self.n - self.last_at < self.interval:
            return None
        self.last_at = self.n
        text = self.asr.transcribe(np.concatenate(self.chunks))
        words = text.split()
        agree = 0
        while agree < min(len(words), len(self.prev_words)) and words[agree] == self.prev_words[agree]:
            agree += 1
        if agree > len(self.stable):
            self.stable = words[:agree]
        self.prev_words = words
        return Transcript(text=text, final=False, stable=" ".join(self.stable))

    def finish(self) -> Transcript:
        audio = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        text = self.asr.transcribe(audio)
        return Transcript(text=text, final=True, stable=text)
