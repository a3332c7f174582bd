"""Whisper log-mel features in torch (CPU or GPU), computed the way faster-whisper's FeatureExtractor does:
160 samples of zero padding at the end, centred STFT (reflect padding, periodic Hann 400, hop 160), power
spectrum without the last frame, Slaney mel filters, log10 floored at 1e-10, dynamic range clipped to 8
(over the frames of this clip), then (x + 4) / 4.  Tested against faster_whisper.feature_extractor
(tests/test_asr_features.py states the tolerance)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
FRAMES_30S = 3000


@lru_cache(maxsize=4)
def mel_filters(n_mels: int, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """(n_mels, n_fft//2 + 1) Slaney-scale, Slaney-normalised triangular filters (float32)."""
    fft_hz = np.linspace(0, sr / 2, n_fft // 2 + 1)
    # Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (step ln(6.4)/27)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0

    def mel_to_hz(m):
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    top_mel = min_log_mel + math.log(8000.0 / min_log_hz) / logstep  # 8 kHz = Nyquist at 16 kHz
    edges = mel_to_hz(np.linspace(0.0, top_mel, n_mels + 2))  # (n_mels + 2,) band edges in Hz
    widths = np.diff(edges)
    rising = (fft_hz[None, :] - edges[:-2, None]) / widths[:-1, None]
    falling = (edges[2:, None] - fft_hz[None, :]) / widths[1:, None]
    tri = np.clip(np.minimum(rising, falling), 0.0, None)
    return (tri * (2.0 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32)


class LogMel:
    """Callable: audio (T,) or (B, T) float32 at 16 kHz -> log-mel (n_mels, F) / (B, n_mels, F), F = T // 160
    (faster-whisper's `features[..., :-1]`, i.e. its `content_frames`)."""

    def __init__(self, n_mels: int = 80, device: str | torch.device = "cpu", bucket_frames: int = 0):
        self.device = torch.device(device)
        self.filters = torch.from_numpy(mel_filters(n_mels)).to(self.device)
        self.window = torch.hann_window(N_FFT, periodic=True, device=self.device)
        # > 0: the STFT runs on the audio zero-padded to a multiple of this many frames, and the frames past the
        # unpadded STFT's are dropped (same values: see __call__). On CUDA each new STFT length makes a cuFFT plan
        # (milliseconds on the ASR thread while serving: 69 in the first 64-caller run on an H100); with buckets
        # there are at most 30 s / bucket of them, all made by warm()
        self.bucket = bucket_frames

    def __call__(self, audio) -> torch.Tensor:
        x = torch.as_tensor(audio, dtype=torch.float32).to(self.device)
        single = x.dim() == 1
        x = x[None] if single else x
        x = torch.nn.functional.pad(x, (0, HOP))
        n = 1 + x.shape[-1] // HOP  # frames of the centred STFT of x
        if self.bucket:
            # The frames kept below (all but the last) read at most 40 samples past x's end, which the reflect
            # padding fills from x's last 160 samples: the zeros added above. Zero padding gives the same zeros.
            step = self.bucket * HOP
            x = torch.nn.functional.pad(x, (0, -(-x.shape[-1] // step) * step - x.shape[-1]))
        spec = torch.stft(x, N_FFT, HOP, window=self.window, center=True, pad_mode="reflect",
                          return_complex=True)[..., :n]
        power = spec[..., :-1].abs() ** 2  # (B, 201, F + 1): FeatureExtractor drops the last STFT frame
        log = torch.clamp(self.filters @ power, min=1e-10).log10()
        log = torch.maximum(log, log.amax(dim=(-2, -1), keepdim=True) - 8.0)  # range over F + 1 frames
        log = ((log + 4.0) / 4.0)[..., :-1]  # transcribe() uses features[..., :-1] (content_frames)
        return log[0] if single else log

    def warm(self, max_samples: int) -> int:
        """Compute the features once at every bucket length up to max_samples (the cuFFT plans, made now rather
        than while serving). Returns how many lengths ran (0 without buckets)."""
        if not self.bucket:
            return 0
        step = self.bucket * HOP
        lengths = range(step - HOP, max_samples + step, step)  # + HOP in __call__: each one bucket multiple
        for t in lengths:
            self(torch.zeros(t, device=self.device))
        return len(lengths)
