"""An audio end-of-turn judge: the smart-turn v3.2 model (pipecat-ai, BSD-2-Clause; an 8.7 MB int8 ONNX
Whisper-encoder classifier) reads the last 8 s of the turn's audio and says how likely the speaker has finished.

It needs no transcript, so on a 2-core CPU it answers ~50-100 ms into a pause, long before the ASR of that pause
is done (and with it the LLM's P(end-of-turn token)). Intonation and pace are what it hears: a falling, finished
sentence scores high, a voice cut at a word gap mid-sentence low.

Input, as the model was trained (Whisper's feature extractor with an 8 s chunk): 16 kHz mono, the last 8 s,
zero-padded at the start; the waveform normalised to zero mean and unit variance over those 8 s; log-mel with a
periodic Hann window of 400, hop 160, 80 Slaney mel bands, the last STFT frame dropped, log10 floored at 1e-10,
clipped to 8 below its maximum, then (x + 4) / 4 -> (80, 800). Output: P(complete), already a sigmoid."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
WINDOW_S = 8
N_FFT = 400
HOP = 160
N_MELS = 80
N_FRAMES = WINDOW_S * SAMPLE_RATE // HOP  # 800


def last_window(audio16k: np.ndarray, seconds: int = WINDOW_S) -> np.ndarray:
    """The last `seconds` of the audio, zero-padded at the start to exactly that length (float32)."""
    n = seconds * SAMPLE_RATE
    x = np.asarray(audio16k, dtype=np.float32).reshape(-1)
    if len(x) >= n:
        return x[-n:].copy()
    return np.concatenate([np.zeros(n - len(x), np.float32), x])


def features(audio16k: np.ndarray) -> np.ndarray:
    """(80, 800) float32 log-mel features of the last 8 s, as smart-turn v3 expects them."""
    from asr.features import mel_filters  # the same Slaney filters our Whisper features use

    x = last_window(audio16k)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)  # waveform normalisation, before the spectrogram
    xp = np.pad(x.astype(np.float64), (N_FFT // 2, N_FFT // 2), mode="reflect")
    window = np.hanning(N_FFT + 1)[:-1]  # periodic Hann
    frames = np.lib.stride_tricks.sliding_window_view(xp, N_FFT)[::HOP]  # (801, 400)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # (801, 201)
    mel = mel_filters(N_MELS).astype(np.float64) @ power.T  # (80, 801)
    log = np.log10(np.maximum(mel, 1e-10))[:, :-1]  # drop the last frame -> (80, 800)
    log = np.maximum(log, log.max() - 8.0)
    return ((log + 4.0) / 4.0).astype(np.float32)


class SmartTurn:
    """P(the speaker finished their turn) from audio. Thread-safe; one call is ~50-100 ms on one CPU core."""

    def __init__(self, path: str | Path, threads: int = 1, concurrency: int = 1):
        import onnxruntime as ort

        path = Path(path)
        if path.is_dir():  # a model directory from the registry: the one .onnx in it
            found = sorted(path.glob("*.onnx"))
            if len(found) != 1:
                raise FileNotFoundError(f"expected one .onnx file in {path}, found {len(found)}")
            path = found[0]
        if not path.exists():
            raise FileNotFoundError(f"smart-turn model not found: {path}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = path
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or list(inputs[0].shape[1:]) != [N_MELS, N_FRAMES]:
            raise ValueError(f"{path}: not a smart-turn v3 model (inputs {[(i.name, i.shape) for i in inputs]})")
        self.input_name = inputs[0].name
        # onnxruntime's run is thread-safe; this bounds how many run at once (each on `threads` cores)
        self._lock = threading.BoundedSemaphore(max(1, int(concurrency)))
        self.p_end(np.zeros(SAMPLE_RATE, np.float32))  # the first run costs ~1.5 s (kernel set-up): not on a caller

    def p_end(self, audio16k: np.ndarray) -> float:
        """P(complete) for a turn whose 16 kHz audio (speech start .. now) is given. Empty audio: ValueError."""
        x = np.asarray(audio16k, dtype=np.float32).reshape(-1)
        if x.size == 0:
            raise ValueError("smart-turn: no audio to judge")
        if not np.all(np.isfinite(x)):
            raise ValueError("smart-turn: audio contains NaN or infinity")
        feats = features(x)[None]
        with self._lock:
            out = self.session.run(None, {self.input_name: feats})[0]
        return float(np.asarray(out).reshape(-1)[0])
