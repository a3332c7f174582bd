"""VITS for inference, as in a Piper voice: text encoder, stochastic duration predictor, flow, HiFi-GAN decoder.

Only the reverse (synthesis) paths exist; no posterior encoder, no discriminators, no dropout. Parameter names
follow the original VITS names that Piper's ONNX export keeps (`enc_p.*`, `dp.*`, `flow.flows.N.*`, `dec.*`),
so loading (tts/piper_weights.py) is a name map. Shapes: B batch, T phoneme ids, F frames (hop 256 samples),
C channels. Masks are float [B, 1, T] / [B, 1, F] with 1 on real positions; padded batches give the same
result per item as unpadded ones (every op that mixes time steps is masked).

Synthesis is split into stages so a server can stream and batch between them:
  encode(ids, lengths)           -> TextStats (hidden x, prior mean m, log-std logs, mask)   [B, C, T]
  durations(stats, ...)          -> frames per phoneme id, int [B, T]
  expand(stats, durations, ...)  -> prior sample z_p and frame mask                        [B, C, F]
  flow_reverse(z_p, y_mask)      -> latent z                                               [B, C, F]
  decode(z)                      -> waveform                                             [B, F*256]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VitsConfig:
    n_vocab: int = 256
    hidden: int = 192  # text encoder width = inter (latent) channels = dp filter channels
    filter: int = 768  # encoder FFN width
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3  # encoder FFN and DDSConv kernel
    window: int = 4  # relative attention window
    flow_couplings: int = 4
    wn_kernel: int = 5
    wn_layers: int = 4
    dp_bins: int = 10
    dp_tail: float = 5.0
    dp_flows: tuple[str, ...] = ("7", "5", "3")  # ConvFlows used in reverse (flows.1 is the 'useless vflow')
    dec_channels: int = 256
    upsample_rates: tuple[int, ...] = (8, 8, 4)
    upsample_kernels: tuple[int, ...] = (16, 16, 8)
    resblock_kernels: tuple[int, ...] = (3, 5, 7)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 2), (2, 6), (3, 12))
    sample_rate: int = 22050

    def __post_init__(self):
        assert self.hidden % self.n_heads == 0
        assert len(self.upsample_rates) == len(self.upsample_kernels)

    @property
    def hop(self) -> int:
        return math.prod(self.upsample_rates)  # samples per frame (256)


def sequence_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] lengths -> [B, 1, max_len] float mask."""
    return (torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]).unsqueeze(1).float()


class LayerNorm(nn.Module):
    """LayerNorm over channels of a [B, C, T] tensor."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return F.layer_norm(x.transpose(1, 2), x.shape[1:2], self.gamma, self.beta, 1e-5).transpose(1, 2)


# ---------------------------------------------------------------------------------------------- text encoder


class RelativeAttention(nn.Module):
    """Multi-head self-attention with relative position embeddings shared by heads, window ±w (VITS encoder)."""

    def __init__(self, c: VitsConfig):
        super().__init__()
        self.n_heads, self.window = c.n_heads, c.window
        d = c.hidden // c.n_heads
        self.conv_q, self.conv_k = nn.Conv1d(c.hidden, c.hidden, 1), nn.Conv1d(c.hidden, c.hidden, 1)
        self.conv_v, self.conv_o = nn.Conv1d(c.hidden, c.hidden, 1), nn.Conv1d(c.hidden, c.hidden, 1)
        self.emb_rel_k = nn.Parameter(torch.zeros(1, 2 * c.window + 1, d))  # [1, 2w+1, d]
        self.emb_rel_v = nn.Parameter(torch.zeros(1, 2 * c.window + 1, d))

    def forward(self, x, attn_mask):  # x [B, C, T], attn_mask [B, 1, T, T]
        B, C, T = x.shape
        H, w = self.n_heads, self.window
        q, k, v = (conv(x).view(B, H, C // H, T).transpose(2, 3) for conv in (self.conv_q, self.conv_k, self.conv_v))
        q = q / math.sqrt(C // H)  # [B, H, T, d]
        # relative offset r = j - i of key j seen from query i, as an index into the 2w+1 embeddings
        pos = torch.arange(T, device=x.device)
        rel = pos[None, :] - pos[:, None]  # [T, T]
        inside = (rel.abs() <= w).to(x.dtype)
        idx = (rel.clamp(-w, w) + w).expand(B, H, T, T)
        rel_logits = q @ self.emb_rel_k.transpose(1, 2)  # [B, H, T, 2w+1]
        scores = q @ k.transpose(2, 3) + rel_logits.gather(3, idx) * inside  # [B, H, T, T]
        p = scores.masked_fill(attn_mask == 0, -1e4).softmax(-1)
        # value side: weight of offset r for query i is p[i, i+r] (0 outside the sequence)
        cols = (pos[:, None] + torch.arange(-w, w + 1, device=x.device)[None, :])  # [T, 2w+1]
        valid = ((cols >= 0) & (cols < T)).to(x.dtype)
        rel_p = p.gather(3, cols.clamp(0, T - 1).expand(B, H, T, 2 * w + 1)) * valid  # [B, H, T, 2w+1]
        out = p @ v + rel_p @ self.emb_rel_v  # [B, H, T, d]
        return self.conv_o(out.transpose(2, 3).reshape(B, C, T))


class FFN(nn.Module):
    def __init__(self, c: VitsConfig):
        super().__init__()
        self.pad = c.kernel_size // 2
        self.conv_1 = nn.Conv1d(c.hidden, c.filter, c.kernel_size)
        self.conv_2 = nn.Conv1d(c.filter, c.hidden, c.kernel_size)

    def forward(self, x, mask):
        x = torch.relu(self.conv_1(F.pad(x * mask, (self.pad, self.pad))))
        return self.conv_2(F.pad(x * mask, (self.pad, self.pad))) * mask


class Encoder(nn.Module):
    def __init__(self, c: VitsConfig):
        super().__init__()
        self.attn_layers = nn.ModuleList(RelativeAttention(c) for _ in range(c.n_layers))
        self.norm_layers_1 = nn.ModuleList(LayerNorm(c.hidden) for _ in range(c.n_layers))
        self.ffn_layers = nn.ModuleList(FFN(c) for _ in range(c.n_layers))
        self.norm_layers_2 = nn.ModuleList(LayerNorm(c.hidden) for _ in range(c.n_layers))

    def forward(self, x, mask):
        attn_mask = mask.unsqueeze(2) * mask.unsqueeze(-1)  # [B, 1, T, T]
        x = x * mask
        for attn, n1, ffn, n2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            x = n1(x + attn(x, attn_mask))
            x = n2(x + ffn(x, mask))
        return x * mask


class TextStats(NamedTuple):
    x: torch.Tensor  # [B, C, T] encoder output (duration predictor input)
    m: torch.Tensor  # [B, C, T] prior mean
    logs: torch.Tensor  # [B, C, T] prior log-std
    mask: torch.Tensor  # [B, 1, T]


class TextEncoder(nn.Module):
    def __init__(self, c: VitsConfig):
        super().__init__()
        self.emb = nn.Embedding(c.n_vocab, c.hidden)
        self.encoder = Encoder(c)
        self.proj = nn.Conv1d(c.hidden, 2 * c.hidden, 1)

    def forward(self, ids, lengths) -> TextStats:  # ids [B, T] int64, lengths [B]
        x = self.emb(ids).transpose(1, 2) * math.sqrt(self.emb.embedding_dim)  # [B, C, T]
        mask = sequence_mask(lengths, ids.shape[1]).to(x.dtype)
        x = self.encoder(x * mask, mask)
        m, logs = (self.proj(x) * mask).chunk(2, dim=1)
        return TextStats(x, m, logs, mask)


# ---------------------------------------------------------------------------------- stochastic duration predictor


class DDSConv(nn.Module):
    """Dilated depth-separable convolutions (dilation kernel**i), residual, GELU."""

    def __init__(self, channels: int, kernel: int, n_layers: int = 3):
        super().__init__()
        self.convs_sep = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, groups=channels, dilation=kernel**i,
                      padding=(kernel * kernel**i - kernel**i) // 2) for i in range(n_layers))
        self.convs_1x1 = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in range(n_layers))
        self.norms_1 = nn.ModuleList(LayerNorm(channels) for _ in range(n_layers))
        self.norms_2 = nn.ModuleList(LayerNorm(channels) for _ in range(n_layers))

    def forward(self, x, mask, g=None):
        if g is not None:
            x = x + g
        for sep, pw, n1, n2 in zip(self.convs_sep, self.convs_1x1, self.norms_1, self.norms_2):
            y = F.gelu(n1(sep(x * mask)))
            x = x + F.gelu(n2(pw(y)))
        return x * mask


def rq_spline_inverse(y, widths_u, heights_u, derivs_u, tail: float, min_w=1e-3, min_h=1e-3, min_d=1e-3):
    """Inverse of a monotone rational-quadratic spline on [-tail, tail], identity outside (linear tails).

    y [...]; widths_u/heights_u [..., K]; derivs_u [..., K-1] (inner knots; the outer two are fixed so the
    spline's slope is 1 at the bounds). Computed for every element (no data-dependent indexing, so no host sync);
    elements outside the interval take y back unchanged.
    """
    K = widths_u.shape[-1]
    const = math.log(math.exp(1 - min_d) - 1)
    derivs_u = F.pad(derivs_u, (1, 1), value=const)

    def knots(u, min_bin):
        cum = torch.cumsum(min_bin + (1 - min_bin * K) * u.softmax(-1), -1)
        cum = F.pad(cum, (1, 0)) * 2 * tail - tail
        cum = torch.cat([torch.full_like(cum[..., :1], -tail), cum[..., 1:-1], torch.full_like(cum[..., :1], tail)], -1)
        return cum, cum[..., 1:] - cum[..., :-1]

    cumw, w = knots(widths_u, min_w)
    cumh, h = knots(heights_u, min_h)
    d = min_d + F.softplus(derivs_u)
    inside = (y >= -tail) & (y <= tail)
    # bin index: number of inner+left knots <= y (the last knot nudged by 1e-6 as in the reference)
    edges = torch.cat([cumh[..., :-1], cumh[..., -1:] + 1e-6], -1)
    b = ((y[..., None] >= edges).sum(-1, keepdim=True) - 1).clamp(0, K - 1)

    def at(t):
        return t.gather(-1, b)[..., 0]

    x_k, w_k, y_k, h_k = at(cumw), at(w), at(cumh), at(h)
    delta = at(h / w)
    d0, d1 = at(d[..., :-1]), at(d[..., 1:])
    dy = y - y_k
    s = d0 + d1 - 2 * delta
    a = dy * s + h_k * (delta - d0)
    bq = h_k * d0 - dy * s
    c = -delta * dy
    root = (2 * c) / (-bq - torch.sqrt((bq * bq - 4 * a * c).clamp_min(0)))
    return torch.where(inside, root * w_k + x_k, y)


class ConvFlow(nn.Module):
    """Neural-spline coupling: x1 transformed by a spline whose knots are predicted from x0 (+ condition)."""

    def __init__(self, c: VitsConfig):
        super().__init__()
        self.bins, self.tail, self.filter = c.dp_bins, c.dp_tail, c.hidden
        self.pre = nn.Conv1d(1, c.hidden, 1)
        self.convs = DDSConv(c.hidden, c.kernel_size)
        self.proj = nn.Conv1d(c.hidden, 3 * c.dp_bins - 1, 1)

    def reverse(self, z, mask, g):  # z [B, 2, T]
        x0, x1 = z[:, :1], z[:, 1:]
        h = self.proj(self.convs(self.pre(x0), mask, g=g)) * mask  # [B, 3K-1, T]
        h = h.transpose(1, 2)  # [B, T, 3K-1]
        K = self.bins
        x1 = rq_spline_inverse(x1[:, 0], h[..., :K] / math.sqrt(self.filter), h[..., K:2 * K] / math.sqrt(self.filter),
                               h[..., 2 * K:], self.tail)
        return torch.cat([x0, x1[:, None]], 1) * mask


class ElementwiseAffine(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.m = nn.Parameter(torch.zeros(channels, 1))
        self.logs = nn.Parameter(torch.zeros(channels, 1))

    def reverse(self, z, mask):
        return (z - self.m) * torch.exp(-self.logs) * mask


class StochasticDurationPredictor(nn.Module):
    def __init__(self, c: VitsConfig):
        super().__init__()
        self.pre = nn.Conv1d(c.hidden, c.hidden, 1)
        self.convs = DDSConv(c.hidden, c.kernel_size)
        self.proj = nn.Conv1d(c.hidden, c.hidden, 1)
        self.order = c.dp_flows
        self.flows = nn.ModuleDict({"0": ElementwiseAffine(2), **{k: ConvFlow(c) for k in c.dp_flows}})

    def forward(self, x, mask, noise: torch.Tensor):
        """x [B, C, T] encoder output, noise [B, 2, T] (already scaled) -> log durations [B, 1, T]."""
        g = self.proj(self.convs(self.pre(x), mask)) * mask
        z = noise
        for k in self.order:  # reversed flow: (Flip, ConvFlow) x3, Flip, affine
            z = self.flows[k].reverse(z.flip(1), mask, g)
        z = self.flows["0"].reverse(z.flip(1), mask)
        return z[:, :1]


# ------------------------------------------------------------------------------------------------------ flow


class WN(nn.Module):
    """WaveNet stack: dilated convs with gated tanh*sigmoid units, residual and skip outputs."""

    def __init__(self, c: VitsConfig):
        super().__init__()
        C, k, n = c.hidden, c.wn_kernel, c.wn_layers
        self.in_layers = nn.ModuleList(nn.Conv1d(C, 2 * C, k, padding=k // 2) for _ in range(n))
        self.res_skip_layers = nn.ModuleList(nn.Conv1d(C, 2 * C if i < n - 1 else C, 1) for i in range(n))

    def forward(self, x, mask):
        C = x.shape[1]
        out = torch.zeros_like(x)
        for i, (inp, rs) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            a, b = inp(x).chunk(2, dim=1)
            acts = rs(torch.tanh(a) * torch.sigmoid(b))
            if i < len(self.in_layers) - 1:
                x = (x + acts[:, :C]) * mask
                out = out + acts[:, C:]
            else:
                out = out + acts
        return out * mask


class ResidualCoupling(nn.Module):
    """Mean-only affine coupling: x1 shifted by a WaveNet of x0."""

    def __init__(self, c: VitsConfig):
        super().__init__()
        half = c.hidden // 2
        self.pre = nn.Conv1d(half, c.hidden, 1)
        self.enc = WN(c)
        self.post = nn.Conv1d(c.hidden, half, 1)

    def reverse(self, z, mask):
        x0, x1 = z.chunk(2, dim=1)
        m = self.post(self.enc(self.pre(x0) * mask, mask)) * mask
        return torch.cat([x0, (x1 - m) * mask], 1)


class Flow(nn.Module):
    def __init__(self, c: VitsConfig):
        super().__init__()
        self.flows = nn.ModuleDict({str(2 * i): ResidualCoupling(c) for i in range(c.flow_couplings)})

    def reverse(self, z, mask):  # (Flip, coupling) from the last coupling to the first
        for k in reversed(list(self.flows)):
            z = self.flows[k].reverse(z.flip(1), mask)
        return z


# --------------------------------------------------------------------------------------------------- decoder


class ResBlock2(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=d, padding=(kernel * d - d) // 2)
                                   for d in dilations)

    def forward(self, x):
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, 0.1))
        return x


class Generator(nn.Module):
    """HiFi-GAN generator with ResBlock type 2: [B, C, F] latent -> [B, F*hop] waveform in [-1, 1]."""

    def __init__(self, c: VitsConfig):
        super().__init__()
        ch = c.dec_channels
        self.conv_pre = nn.Conv1d(c.hidden, ch, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(c.upsample_rates, c.upsample_kernels)):
            self.ups.append(nn.ConvTranspose1d(ch >> i, ch >> (i + 1), k, u, padding=(k - u) // 2))
            for rk, rd in zip(c.resblock_kernels, c.resblock_dilations):
                self.resblocks.append(ResBlock2(ch >> (i + 1), rk, rd))
        self.conv_post = nn.Conv1d(ch >> len(c.upsample_rates), 1, 7, padding=3, bias=False)
        self.n_kernels = len(c.resblock_kernels)

    def forward(self, z):
        x = self.conv_pre(z)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, 0.1))
            blocks = self.resblocks[i * self.n_kernels:(i + 1) * self.n_kernels]
            x = sum(block(x) for block in blocks) / self.n_kernels
        return torch.tanh(self.conv_post(F.leaky_relu(x))).squeeze(1)  # slope 0.01 here, as in VITS

    @staticmethod
    def context_frames(c: VitsConfig) -> int:
        """Receptive-field radius in latent frames: decoding a window with this much real context on each side
        gives the same samples in its middle as decoding the whole latent."""
        radius = 3.0  # conv_pre, in frames
        rate = 1
        for u, k in zip(c.upsample_rates, c.upsample_kernels):
            radius += math.ceil(k / u) / rate  # transposed conv: a few input steps at this stage's input rate
            rate *= u
            radius += max(sum((rk - 1) // 2 * d for d in rd)
                          for rk, rd in zip(c.resblock_kernels, c.resblock_dilations)) / rate
        radius += 3 / rate  # conv_post
        return math.ceil(radius)


# ------------------------------------------------------------------------------------------------------- VITS


class Vits(nn.Module):
    def __init__(self, c: VitsConfig):
        super().__init__()
        self.config = c
        self.enc_p = TextEncoder(c)
        self.dp = StochasticDurationPredictor(c)
        self.flow = Flow(c)
        self.dec = Generator(c)

    def encode(self, ids, lengths) -> TextStats:
        return self.enc_p(ids, lengths)

    def durations(self, s: TextStats, noise_w: float = 0.8, length_scale: float = 1.0, generator=None):
        """Frames per phoneme id, [B, T] int64 (0 on padding)."""
        B, _, T = s.x.shape
        noise = torch.randn(B, 2, T, device=s.x.device, dtype=s.x.dtype, generator=generator) * noise_w
        logw = self.dp(s.x, s.mask, noise)
        return torch.ceil(torch.exp(logw) * s.mask * length_scale)[:, 0].long()

    def expand(self, s: TextStats, durations, noise_scale: float = 0.667, n_frames: int | None = None,
               generator=None):
        """Repeat each id's prior stats for its frames and sample z_p. -> z_p [B, C, F], y_mask [B, 1, F]."""
        ends = durations.cumsum(1)  # [B, T]
        y_len = ends[:, -1].clamp_min(1)
        F_ = int(y_len.max()) if n_frames is None else n_frames
        frames = torch.arange(F_, device=durations.device)
        owner = (frames[None, :, None] >= ends[:, None, :]).sum(-1).clamp_max(durations.shape[1] - 1)  # [B, F]
        y_mask = sequence_mask(y_len, F_).to(s.m.dtype)
        idx = owner[:, None, :].expand(-1, s.m.shape[1], -1)
        m, logs = s.m.gather(2, idx), s.logs.gather(2, idx)
        eps = torch.randn(m.shape, device=m.device, dtype=m.dtype, generator=generator)
        return (m + eps * torch.exp(logs) * noise_scale) * y_mask, y_mask

    def flow_reverse(self, z_p, y_mask):
        return self.flow.reverse(z_p, y_mask)

    def decode(self, z):
        return self.dec(z)

    def forward(self, ids, lengths, noise_scale=0.667, length_scale=1.0, noise_w=0.8, generator=None):
        """Whole-utterance synthesis -> (audio [B, F*hop], durations [B, T]). Audio past an item's length is
        not meaningful; its length is durations.sum(1) * hop."""
        s = self.encode(ids, lengths)
        dur = self.durations(s, noise_w, length_scale, generator)
        z_p, y_mask = self.expand(s, dur, noise_scale, generator=generator)
        z = self.flow_reverse(z_p, y_mask)
        return self.decode(z * y_mask), dur
