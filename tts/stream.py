"""Chunked decoding of a VITS latent: the first samples leave before the phrase's waveform is complete.

The frame-rate stages (encoder, durations, flow) run over the whole sentence: they are cheap. The HiFi-GAN
decoder (nearly all the FLOPs) runs on windows of the latent z: a window decodes frames [lo, hi) and keeps the
samples of its middle frames [start, end), where lo = start - context and hi = end + context (clamped to the
sentence). With context >= the decoder's receptive-field radius (Generator.context_frames: 11 frames for
Piper medium) the kept samples are the whole-sentence samples (exact trim, no crossfade), up to float rounding.
`plan_windows` is the pure planning; `decode_window` the one model call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Window:
    start: int  # first frame emitted
    end: int  # one past the last frame emitted
    lo: int  # first frame decoded (start - context, clamped)
    hi: int  # one past the last frame decoded

    @property
    def trim(self) -> tuple[int, int]:
        """Frames to drop from the decoded window's front, and frames to keep."""
        return self.start - self.lo, self.end - self.start


def plan_windows(n_frames: int, chunk_frames: int, context: int, first_chunk_frames: int | None = None) -> list[Window]:
    """Cover [0, n_frames) with emitted spans: the first of `first_chunk_frames` (small, for time to first
    audio), then `chunk_frames` each. A short last span's window reaches further left (more context is still
    exact), so decoded widths are few: first + context, chunk + 2 context, or the whole sentence when shorter
    (fewer shapes for CUDA graphs)."""
    assert chunk_frames > 0 and context >= 0
    out, start = [], 0
    size = first_chunk_frames or chunk_frames
    while start < n_frames:
        end = min(start + size, n_frames)
        lo, hi = max(0, start - context), min(n_frames, end + context)
        if start > 0:
            lo = max(0, min(lo, hi - (chunk_frames + 2 * context)))
        out.append(Window(start, end, lo, hi))
        start, size = end, chunk_frames
    return out


def decode_window(decode, z: torch.Tensor, w: Window, hop: int) -> torch.Tensor:
    """z [B, C, F] (already masked) -> samples of frames [w.start, w.end): [B, (end - start) * hop]."""
    drop, keep = w.trim
    audio = decode(z[:, :, w.lo:w.hi])
    return audio[:, drop * hop:(drop + keep) * hop]


def decode_windows_batched(decode, zs: list[torch.Tensor], windows: list[Window], hop: int) -> list[torch.Tensor]:
    """One decoder call for windows of several sentences ([C, F_i] latents, one window each): windows are
    right-padded with zeros to the widest. A window that ends at its sentence's end then sees zeros instead of
    the decoder's own edge padding, which changes its last ~context frames slightly (measured in bench/tts.py)."""
    width = max(w.hi - w.lo for w in windows)
    batch = torch.zeros(len(zs), zs[0].shape[0], width, device=zs[0].device, dtype=zs[0].dtype)
    for i, (z, w) in enumerate(zip(zs, windows)):
        batch[i, :, :w.hi - w.lo] = z[:, w.lo:w.hi]
    audio = decode(batch)
    out = []
    for i, w in enumerate(windows):
        drop, keep = w.trim
        out.append(audio[i, drop * hop:(drop + keep) * hop])
    return out
