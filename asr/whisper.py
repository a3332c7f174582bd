"""Whisper in PyTorch: the model only (no decoding loop, no serving logic).

The decoder reads and writes an explicit, static `KVCache` (preallocated to `n_text_ctx` positions, written at
per-row positions with index_put), so one decoder step has fixed shapes and can be captured in a CUDA graph.
The encoder accepts fewer than 3000 mel frames: positions are then a prefix of the 1500-entry positional table
(the "truncated window"; asr/decoding.py decides whether to pad to 30 s instead).
Weights: asr/ct2.py maps a CTranslate2 model.bin onto these parameter names; `synthetic()` makes random ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class WhisperDims:
    n_mels: int = 80
    n_audio_ctx: int = 1500  # encoder positions for 30 s (3000 mel frames, conv stride 2)
    n_audio_state: int = 384
    n_audio_head: int = 6
    n_audio_layer: int = 4
    n_vocab: int = 51864
    n_text_ctx: int = 448
    n_text_state: int = 384
    n_text_head: int = 6
    n_text_layer: int = 4

    def __post_init__(self):
        assert self.n_audio_state % self.n_audio_head == 0 and self.n_text_state % self.n_text_head == 0
        assert self.n_audio_state == self.n_text_state, "cross-attention expects equal widths"


# The published architectures (weights not included: synthetic() fills them from a seed).
SHAPES: dict[str, WhisperDims] = {
    "tiny.en": WhisperDims(),
    "base": WhisperDims(n_audio_state=512, n_audio_head=8, n_audio_layer=6, n_vocab=51865,
                        n_text_state=512, n_text_head=8, n_text_layer=6),
    "small": WhisperDims(n_audio_state=768, n_audio_head=12, n_audio_layer=12, n_vocab=51865,
                         n_text_state=768, n_text_head=12, n_text_layer=12),
    "large-v3-turbo": WhisperDims(n_mels=128, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
                                  n_vocab=51866, n_text_state=1280, n_text_head=20, n_text_layer=4),
}


class MultiHeadAttention(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, H, T, Dh)
        b, t, d = x.shape
        return x.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)

    def merge(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, T, Dh) -> (B, T, D)
        b, h, t, dh = x.shape
        return x.transpose(1, 2).reshape(b, t, h * dh)

    def attend(self, q, k, v, mask=None) -> torch.Tensor:
        # q (B,H,T,Dh), k/v (B,H,S,Dh), mask broadcastable to (B,H,T,S), True = may attend
        return self.out(self.merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


class KVCache:
    """Static key/value buffers for the decoder: self-attention (written one position at a time) and
    cross-attention (written once per encoder run, padded to `n_audio_ctx` with a validity mask)."""

    def __init__(self, dims: WhisperDims, batch: int, device=None, dtype=torch.float32):
        L, H, Dh = dims.n_text_layer, dims.n_text_head, dims.n_text_state // dims.n_text_head
        kw = dict(device=device, dtype=dtype)
        self.self_k = torch.zeros(L, batch, H, dims.n_text_ctx, Dh, **kw)  # (L, B, H, Lmax, Dh)
        self.self_v = torch.zeros(L, batch, H, dims.n_text_ctx, Dh, **kw)
        self.cross_k = torch.zeros(L, batch, H, dims.n_audio_ctx, Dh, **kw)  # (L, B, H, S, Dh)
        self.cross_v = torch.zeros(L, batch, H, dims.n_audio_ctx, Dh, **kw)
        self.cross_valid = torch.zeros(batch, dims.n_audio_ctx, dtype=torch.bool, device=device)  # (B, S)

    def narrow(self, b: int) -> "KVCache":
        """A cache over rows 0..b-1 that shares this one's storage."""
        view = object.__new__(KVCache)
        view.self_k, view.self_v = self.self_k[:, :b], self.self_v[:, :b]
        view.cross_k, view.cross_v = self.cross_k[:, :b], self.cross_v[:, :b]
        view.cross_valid = self.cross_valid[:b]
        return view

    @property
    def batch(self) -> int:
        return self.self_k.shape[1]

    def update(self, layer: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k/v (B,H,T,Dh) at positions pos (B,T); return the layer's whole (B,H,Lmax,Dh) buffers."""
        rows = torch.arange(pos.shape[0], device=pos.device)[:, None]  # (B, 1)
        # advanced indices around a slice put (B,T) first: the target view is (B, T, H, Dh)
        self.self_k[layer][rows, :, pos] = k.transpose(1, 2)
        self.self_v[layer][rows, :, pos] = v.transpose(1, 2)
        return self.self_k[layer], self.self_v[layer]


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d: int, n_head: int, cross: bool):
        super().__init__()
        self.attn = MultiHeadAttention(d, n_head)
        self.attn_ln = nn.LayerNorm(d)
        self.cross_attn = MultiHeadAttention(d, n_head) if cross else None
        self.cross_attn_ln = nn.LayerNorm(d) if cross else None
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.mlp_ln = nn.LayerNorm(d)

    def encoder_forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D), full bidirectional attention
        a, h = self.attn, self.attn_ln(x)
        x = x + a.attend(a.heads(a.query(h)), a.heads(a.key(h)), a.heads(a.value(h)))
        return x + self.mlp(self.mlp_ln(x))

    def decoder_forward(self, x, layer: int, pos, self_mask, cache: KVCache) -> torch.Tensor:
        # x (B,T,D); pos (B,T) absolute positions; self_mask (B,1,T,Lmax)
        a, h = self.attn, self.attn_ln(x)
        k, v = cache.update(layer, pos, a.heads(a.key(h)), a.heads(a.value(h)))
        x = x + a.attend(a.heads(a.query(h)), k, v, self_mask)
        c, h = self.cross_attn, self.cross_attn_ln(x)
        cross_mask = cache.cross_valid[:, None, None, :]  # (B,1,1,S)
        x = x + c.attend(c.heads(c.query(h)), cache.cross_k[layer], cache.cross_v[layer], cross_mask)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    def __init__(self, dims: WhisperDims):
        super().__init__()
        d = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.positional_embedding = nn.Parameter(torch.zeros(dims.n_audio_ctx, d))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(d, dims.n_audio_head, cross=False)
                                    for _ in range(dims.n_audio_layer))
        self.ln_post = nn.LayerNorm(d)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        # mel (B, n_mels, F) with F even and <= 3000 -> (B, F/2, D)
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positional_embedding[: x.shape[1]]
        for block in self.blocks:
            x = block.encoder_forward(x)
        return self.ln_post(x)


class TextDecoder(nn.Module):
    def __init__(self, dims: WhisperDims):
        super().__init__()
        d = dims.n_text_state
        self.token_embedding = nn.Embedding(dims.n_vocab, d)
        self.positional_embedding = nn.Parameter(torch.zeros(dims.n_text_ctx, d))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(d, dims.n_text_head, cross=True)
                                    for _ in range(dims.n_text_layer))
        self.ln = nn.LayerNorm(d)

    @torch.no_grad()
    def set_cross(self, cache: KVCache, audio: torch.Tensor, valid: torch.Tensor, rows: torch.Tensor | None = None):
        """Project encoder output audio (b, S, D) into the cross k/v of cache rows `rows` (default: first b);
        valid (b, S) marks real encoder positions."""
        b, s, _ = audio.shape
        # the first b rows as a slice: plain copies and a fill, nothing from the host (capturable in a CUDA graph)
        sel = slice(0, b) if rows is None else rows
        for i, block in enumerate(self.blocks):
            c = block.cross_attn
            cache.cross_k[i, sel, :, :s] = c.heads(c.key(audio))
            cache.cross_v[i, sel, :, :s] = c.heads(c.value(audio))
        if rows is None:
            cache.cross_valid[:b].fill_(False)
        else:
            cache.cross_valid[rows] = False
        cache.cross_valid[sel, :s] = valid

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        # tokens, pos (B, T) -> logits (B, T, V). Each query attends to cached keys at positions <= its own.
        x = self.token_embedding(tokens) + self.positional_embedding[pos]
        lmax = cache.self_k.shape[3]
        self_mask = (torch.arange(lmax, device=pos.device) <= pos[..., None])[:, None]  # (B,1,T,Lmax)
        for i, block in enumerate(self.blocks):
            x = block.decoder_forward(x, i, pos, self_mask, cache)
        return self.ln(x) @ self.token_embedding.weight.T


class Whisper(nn.Module):
    def __init__(self, dims: WhisperDims):
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims)
        self.decoder = TextDecoder(dims)

    def new_cache(self, batch: int) -> KVCache:
        p = next(self.parameters())
        return KVCache(self.dims, batch, device=p.device, dtype=p.dtype)


def synthetic(name: str | WhisperDims, seed: int = 0, dtype=torch.float32, device="cpu") -> Whisper:
    """A Whisper of a published shape with random weights from a fixed seed (for GPU benchmarks: latency
    does not depend on the values when the number of generated tokens is fixed)."""
    dims = SHAPES[name] if isinstance(name, str) else name
    g = torch.Generator().manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith(("ln.weight", "ln_post.weight", "_ln.weight")):
                p.fill_(1.0)
            elif pname.endswith("bias") and "_ln" in pname or pname.endswith(("ln.bias", "ln_post.bias")):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.to(device=device, dtype=dtype).eval()
