"""Audio I/O and conversions. Internally audio is float32 mono in [-1, 1]; the pipeline runs at 16 kHz."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
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
    if data.size == 0:
        raise AudioError(f"{path}: contains no audio")
    return data.mean(axis=1).astype(np.float32), int(sr)


def decode_audio_bytes(blob: bytes) -> tuple[np.ndarray, int]:
    try:
        data, sr = sf.read(io.BytesIO(blob), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"not a readable audio file ({e})") from None
    return data.mean(axis=1).astype(np.float32), int(sr)


def resample(audio: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio, src, dst, quality="HQ").astype(np.float32)


class StreamResampler:
    """Chunk-by-chunk resampling with state, for live input."""

    def __init__(self, src: int, dst: int):
        self.src, self.dst = src, dst
        self._rs = None if src == dst else soxr.ResampleStream(src, dst, 1, dtype="float32", quality="HQ")

    def __call__(self, chunk: np.ndarray, last: bool = False) -> np.ndarray:
        if self._rs is None:
            return chunk.astype(np.float32, copy=False)
        return self._rs.resample_chunk(chunk.astype(np.float32, copy=False), last=last)

    def flush(self) -> np.ndarray:
        """The end of a stream (a reply's last phrase): what the filter still holds, then a fresh start. Without it
        the last ~55 ms of each reply (22.05 -> 8 kHz) stayed in the filter and opened the next reply instead."""
        tail = self(np.zeros(0, np.float32), last=True)
        self.reset()
        return tail

    def reset(self) -> None:
        """Drop what the filter holds (a flushed, interrupted reply)."""
        if self._rs is not None:
            self._rs = soxr.ResampleStream(self.src, self.dst, 1, dtype="float32", quality="HQ")


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
