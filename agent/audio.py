"""Audio I/O and conversions. Internally audio is float32 mono in [-1, 1]; the pipeline runs at 16 kHz."""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
import soundfile as sf
import soxr

INTERNAL_RATE = 16_000
SUPPORTED_RATES = (8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)


class AudioError(ValueError):
    """Audio that cannot be decoded or used; the message says why."""


def load_audio(path: str | Path, rate: int | None = INTERNAL_RATE) -> np.ndarray:
    """Decode a WAV/FLAC/OGG file to float32 mono, resampled to `rate` (None keeps the file's rate)."""
    audio, sr = load_audio_native(path)
    return resample(audio, sr, rate) if rate else audio


def load_audio_native(path: str | Path) -> tuple[np.ndarray, int]:
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile's errors are RuntimeError/LibsndfileError with terse text
        raise AudioError(f"{path}: not a readable audio file ({e})") from None
    return _mono(data, str(path)), int(sr)


def decode_audio_bytes(blob: bytes) -> tuple[np.ndarray, int]:
    try:
        data, sr = sf.read(io.BytesIO(blob), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"not a readable audio file ({e})") from None
    return _mono(data, "audio"), int(sr)


def _mono(data: np.ndarray, what: str) -> np.ndarray:
    """The channels' mean as float32; a file with no samples, or with NaN or infinite ones (a float WAV can hold
    them), is an AudioError rather than audio that would poison the VAD, the ASR and the judge downstream."""
    if data.size == 0:
        raise AudioError(f"{what}: contains no audio")
    mono = data.mean(axis=1, dtype=np.float64)
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"{what}: contains NaN or infinite samples")
    return mono.astype(np.float32)


def resample(audio: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio, src, dst, quality="HQ").astype(np.float32)


class StreamResampler:
    """Chunk-by-chunk resampling with state, for live audio: a polyphase windowed-sinc filter short enough that the
    stream lags its input by 2-7 ms. soxr's stream (the HQ one-shot `resample` above is soxr) held back 63 ms on
    average and up to 115 ms of 8 kHz phone audio on its way to 16 kHz, and the VAD, the turn taker and every
    latency after them waited for it (`bench/resample.py`).

    The filter: passband to 90 % of the lower rate's Nyquist frequency, stopband from that Nyquist frequency on at
    -80 dB (Kaiser window), each phase normalised to unity gain at DC. Output sample n sits at input time n·src/dst
    (no delay: the filter is centred), so it needs `half` input samples past that: that is the lag. Costs 3.5-10 ms
    of one core per second of audio, 6.5-15x soxr's stream."""

    PASS = 0.9  # passband edge, as a fraction of min(src, dst) / 2
    ATTEN_DB = 80.0

    def __init__(self, src: int, dst: int):
        self.src, self.dst = src, dst
        g = math.gcd(src, dst)
        self.up, self.down = dst // g, src // g  # L, M: output n sits at input position n·M/L
        self.taps: np.ndarray | None = None
        if src != dst:
            self.taps, self.half = _polyphase(src, dst, self.PASS, self.ATTEN_DB)
        self.reset()

    @property
    def lag_s(self) -> float:
        """How far the stream's output lags its input, at most (s)."""
        return 0.0 if self.taps is None else (self.half + 1) / self.src

    def reset(self) -> None:
        """Start a new stream (drop what the filter holds: an interrupted reply)."""
        self._buf = np.zeros(0 if self.taps is None else self.half, np.float32)  # input from index _base on
        self._base = 0 if self.taps is None else -self.half  # zeros before the stream's first sample
        self._n_in = 0  # input samples received
        self._n_out = 0  # output samples produced

    def __call__(self, chunk: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample the next chunk; returns every output sample its input completes. last=True ends the stream
        (flush() does that and starts a new one)."""
        x = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if self.taps is None:
            return x
        self._buf = np.concatenate([self._buf, x])
        self._n_in += len(x)
        L, M, h = self.up, self.down, self.half
        if last:  # the stream ends: zeros after it, and as many outputs as the input's length calls for
            self._buf = np.concatenate([self._buf, np.zeros(h + 1, np.float32)])
            n_end = (self._n_in * L + M - 1) // M
        else:  # output n needs input up to floor(n·M/L) + half
            n_end = max(self._n_out, ((self._n_in - h) * L - 1) // M + 1)
        n = np.arange(self._n_out, n_end, dtype=np.int64)
        if len(n) == 0:
            return np.zeros(0, np.float32)
        q, r = (n * M) // L, (n * M) % L
        win = sliding_window_view(self._buf, 2 * h + 1)  # win[i] = the inputs an output centred at _base + i + h needs
        rows = q - h - self._base
        if L <= 4:  # few phases: outputs n, n + L, ... share one; a matrix-vector product each
            y = np.empty(len(n), np.float32)
            for p in range(min(L, len(n))):
                y[p::L] = win[rows[p::L]] @ self.taps[r[p]]
        else:
            y = np.einsum("nk,nk->n", win[rows], self.taps[r]).astype(np.float32, copy=False)
        self._n_out = n_end
        keep = (n_end * M) // L - h - self._base  # the oldest input the next output needs
        if keep > 0:
            self._buf, self._base = self._buf[keep:], self._base + keep
        return y

    def flush(self, drop: bool = False) -> np.ndarray:
        """The end of a stream (a reply's last phrase): what the filter still holds — nothing with drop (a reply cut
        short) — then a fresh start. Without it the reply's last few ms stayed in the filter and opened the next
        reply instead."""
        tail = np.zeros(0, np.float32)
        if not drop:
            tail = self(tail, last=True)
        self.reset()
        return tail


@functools.lru_cache(maxsize=32)
def _polyphase(src: int, dst: int, pass_frac: float, atten_db: float) -> tuple[np.ndarray, int]:
    """taps [up, 2·half + 1]: row r weights inputs q-half .. q+half for an output at input position q + r/up."""
    up = dst // math.gcd(src, dst)
    fs = src * up  # the filter runs at the common rate, where input sample j sits at j·up
    nyq = min(src, dst) / 2
    f_pass, f_stop = pass_frac * nyq, nyq
    cutoff = (f_pass + f_stop) / 2 / fs  # cycles per common-rate sample
    beta = 0.1102 * (atten_db - 8.7)
    span = (atten_db - 8.0) / (2.285 * 2 * np.pi * (f_stop - f_pass) / fs)  # Kaiser's length formula (samples)
    d_max = span / 2
    half = int(math.ceil(d_max / up)) + 1
    k = np.arange(-half, half + 1)
    d = np.arange(up)[:, None] + k[None, :] * up  # output at q + r/up to input q - k, in common-rate samples
    w = np.where(np.abs(d) <= d_max, np.i0(beta * np.sqrt(np.clip(1 - (d / d_max) ** 2, 0, None))) / np.i0(beta), 0)
    taps = 2 * cutoff * np.sinc(2 * cutoff * d) * w
    taps /= taps.sum(axis=1, keepdims=True)
    return np.ascontiguousarray(taps[:, ::-1], dtype=np.float32), half  # reversed: inputs q-half .. q+half


def pcm16_to_float(blob: bytes) -> np.ndarray:
    if len(blob) % 2:
        raise AudioError(f"PCM16 frame has an odd number of bytes ({len(blob)})")
    return np.frombuffer(blob, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def write_wav(path: str | Path, audio: np.ndarray, rate: int) -> None:
    sf.write(str(path), np.clip(audio, -1, 1), rate, subtype="PCM_16")


# G.711 mu-law (Twilio, OpenAI Realtime g711_ulaw), vectorised.
_MU_BIAS, _MU_CLIP = 0x84, 32635


def ulaw_decode(blob: bytes) -> np.ndarray:
    u = ~np.frombuffer(blob, dtype=np.uint8)
    sign, exponent, mantissa = u & 0x80, (u >> 4) & 0x07, u & 0x0F
    sample = (((mantissa.astype(np.int32) << 3) + _MU_BIAS) << exponent) - _MU_BIAS
    return (np.where(sign, -sample, sample) / 32768.0).astype(np.float32)


def ulaw_encode(audio: np.ndarray) -> bytes:
    x = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    x = np.minimum(np.abs(x), _MU_CLIP) + _MU_BIAS
    exponent = np.floor(np.log2(x)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (x >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()
