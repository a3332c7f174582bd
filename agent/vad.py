"""Silero VAD (v6, ONNX) over a live 16 kHz stream: one speech probability per 32 ms window."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WINDOW = 512  # samples at 16 kHz = 32 ms
CONTEXT = 64  # the model sees the previous window's last 64 samples too


class SileroVAD:
    sample_rate = 16_000
    window = WINDOW

    def __init__(self, model_path: str | Path):
        import onnxruntime

        path = Path(model_path)
        if path.is_dir():
            path = path / "silero_vad.onnx"
        if not path.exists():
            raise FileNotFoundError(f"Silero VAD model missing: {path}")
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), sess_options=opts,
                                                    providers=["CPUExecutionProvider"])

    def stream(self) -> "VADStream":
        return VADStream(self)

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Offline: P(speech) for each full window of `audio`."""
        s = self.stream()
        return np.array(s.feed(audio), dtype=np.float32)


class VADStream:
    def __init__(self, vad: SileroVAD):
        self.session = vad.session
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros((1, CONTEXT), dtype=np.float32)
        self.pending = np.zeros(0, dtype=np.float32)
        self.sr = np.array(16_000, dtype=np.int64)

    def feed(self, audio: np.ndarray) -> list[float]:
        """Add audio; returns one probability per completed window, in order."""
        buf = np.concatenate([self.pending, audio.astype(np.float32, copy=False)])
        n = len(buf) // WINDOW
        probs = []
        for i in range(n):
            frame = buf[i * WINDOW:(i + 1) * WINDOW][None, :]
            x = np.concatenate([self.context, frame], axis=1)
            out, self.state = self.session.run(None, {"input": x, "state": self.state, "sr": self.sr})
            self.context = frame[:, -CONTEXT:]
            probs.append(float(out[0, 0]))
        self.pending = buf[n * WINDOW:]
        return probs


def speech_bounds(vad: SileroVAD, audio: np.ndarray, threshold: float = 0.5) -> tuple[float, float] | None:
    """(start_s, end_s) of speech in a clip by the same model, or None: the clip's 'true end of speech'."""
    probs = vad.probabilities(audio)
    idx = np.flatnonzero(probs >= threshold)
    if not len(idx):
        return None
    return idx[0] * WINDOW / 16_000, (idx[-1] + 1) * WINDOW / 16_000
