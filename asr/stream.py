"""Streaming decisions for one utterance, with no model and no I/O (asr/torch_backend.py does the work).

- `StreamPolicy.due`: re-run the recogniser once `interval_s` of new audio has arrived since the last run.
- `LocalAgreement`: the committed (stable) tokens are the longest prefix two consecutive hypotheses agree on;
  they never shrink, and the next decode is forced to start with them, so at the endpoint only the tokens
  after the committed prefix (the last increment) remain to be decoded.
- `speech_energy_dbfs` + `EnergyGate`: an utterance whose loudest 50 ms frame stays under `floor_dbfs` is
  silence: no model run, empty transcript.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class LocalAgreement:
    """LocalAgreement-2 over token ids."""
    committed: list[int] = field(default_factory=list)
    previous: list[int] | None = None

    def update(self, hypothesis: list[int]) -> list[int]:
        """Feed the newest hypothesis; return the committed prefix (a prefix of `hypothesis` when the
        decoder was forced to start with the committed tokens)."""
        if self.previous is not None:
            n = common_prefix(self.previous, hypothesis)
            if n > len(self.committed) and hypothesis[:len(self.committed)] == self.committed:
                self.committed = list(hypothesis[:n])
        self.previous = list(hypothesis)
        return self.committed


@dataclass
class StreamPolicy:
    interval_s: float = 0.2
    sample_rate: int = 16_000

    def due(self, n_samples: int, last_run_samples: int) -> bool:
        return n_samples - last_run_samples >= int(self.interval_s * self.sample_rate)


def speech_energy_dbfs(audio: np.ndarray, sample_rate: int = 16_000, frame_s: float = 0.05) -> float:
    """Level of the loudest frame in dBFS (RMS, full scale = 1.0); -inf for digital silence."""
    n = max(1, int(frame_s * sample_rate))
    k = len(audio) // n
    if k == 0:
        return float("-inf")
    frames = np.asarray(audio[: k * n], dtype=np.float64).reshape(k, n)
    rms = float(np.sqrt((frames ** 2).mean(axis=1)).max())
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


@dataclass
class EnergyGate:
    floor_dbfs: float = -45.0

    def is_silent(self, audio: np.ndarray, sample_rate: int = 16_000) -> bool:
        return speech_energy_dbfs(audio, sample_rate) < self.floor_dbfs
