"""Token sampling on the device with no host synchronisation: greedy, temperature, top-p.

Exponential race: with E_i ~ Exp(1) i.i.d., argmax_i p_i / E_i is distributed as p (the same trick as gpt-fast's
multinomial_sample_one_no_sync). In log space this is argmax_i (logit_i / T - log E_i), so the softmax
normalisation is never needed. Top-p keeps the smallest set of most probable tokens whose mass reaches top_p;
it is expressed as a per-row cutoff on the logits (keep logit >= cutoff), found with one sort.

What runs where (on CUDA):
  torch:  the Exp(1) noise [B, V] (from `generator`), and, only when top_p is given, the sort + cumsum that
          turns top_p into the cutoff;
  Triton: one fused pass over logits and noise: temperature scaling, top-p mask, the race's argmax, and the
          greedy argmax for rows with temperature == 0 (those rows do not read the noise). Each row is cut into
          slices so that even B = 1 spreads over the SMs; a [B, slices] argmax + gather in torch picks the winner.
The caller knows the sampling settings on the host: pass top_p=None when no row uses top-p, which skips the sort.
"""

from __future__ import annotations

import torch

from kernels._triton import tl, triton, use_triton


def top_p_cutoff(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """logits [B, V] fp32, temperature [B] (> 0), top_p [B] -> cutoff [B] in raw-logit units: keep the tokens
    with logit >= cutoff, the smallest most-probable set under softmax(logits / T) with mass >= top_p (>= 1 token).
    The cutoff is a value of `logits` itself, so the keep-test needs no division and is exact in any kernel."""
    srt, _ = logits.sort(dim=-1, descending=True)
    probs = (srt / temperature[:, None]).softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # mass of strictly more probable tokens
    n_keep = (mass_before < top_p[:, None].float()).sum(-1).clamp_min(1)  # [B]
    return srt.gather(-1, (n_keep - 1)[:, None]).squeeze(-1)


def exp_noise(shape, device, generator=None) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.float32, device=device).exponential_(generator=generator)


def sample_ref(logits, temperature, top_p=None, generator=None, *, noise=None) -> torch.Tensor:
    """logits [B,V], temperature [B] (0 = greedy), top_p [B] or None -> ids [B] int64."""
    lf = logits.float()
    greedy = lf.argmax(-1)
    t = temperature.float().clamp_min(1e-5)[:, None]
    scaled = lf / t
    noise = exp_noise(lf.shape, lf.device, generator) if noise is None else noise
    score = scaled - noise.log()
    if top_p is not None:
        score = torch.where(lf >= top_p_cutoff(lf, t[:, 0], top_p)[:, None], score, float("-inf"))
    return torch.where(temperature > 0, score.argmax(-1), greedy)


@triton.jit
def _sample_kernel(logits_ptr, noise_ptr, temp_ptr, cutoff_ptr, val_ptr, idx_ptr, V, CHUNK, NUM_SPLITS,
                   stride_l, stride_n, HAS_CUTOFF: tl.constexpr, BLOCK: tl.constexpr):
    # grid (B, NUM_SPLITS): program (row, sp) scans columns [sp*CHUNK, (sp+1)*CHUNK) of one row, keeping per-lane
    # (best score, first index), and writes its winner; the host side picks the best of the NUM_SPLITS winners.
    row = tl.program_id(0)
    sp = tl.program_id(1)
    t = tl.load(temp_ptr + row).to(tl.float32)
    sampling = t > 0
    t = tl.where(sampling, tl.maximum(t, 1e-5), 1.0)  # same clamp and division as the reference
    if HAS_CUTOFF:
        cutoff = tl.load(cutoff_ptr + row)
    lanes = tl.arange(0, BLOCK)
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    best_i = tl.full([BLOCK], 2147483647, tl.int32)
    for v0 in range(sp * CHUNK, tl.minimum(sp * CHUNK + CHUNK, V), BLOCK):
        cols = v0 + lanes
        mask = cols < V
        x = tl.load(logits_ptr + row * stride_l + cols, mask=mask, other=float("-inf")).to(tl.float32)
        score = x
        if sampling:  # greedy rows never read the noise
            e = tl.load(noise_ptr + row * stride_n + cols, mask=mask, other=1.0)
            score = tl.math.div_rn(x, t) - tl.log(e)  # IEEE division, as torch's x / t
            if HAS_CUTOFF:
                score = tl.where(x >= cutoff, score, float("-inf"))
        score = tl.where(mask, score, float("-inf"))
        take = score > best  # strict: the earlier index wins ties, like torch.argmax
        best = tl.where(take, score, best)
        best_i = tl.where(take, cols, best_i)
    top = tl.max(best, axis=0)
    idx = tl.min(tl.where(best == top, best_i, 2147483647), axis=0)
    tl.store(val_ptr + row * NUM_SPLITS + sp, top)
    tl.store(idx_ptr + row * NUM_SPLITS + sp, idx.to(tl.int64))


def sample_triton(logits, temperature, top_p=None, generator=None, *, noise=None, out=None, block: int = 1024,
                  num_splits: int | None = None):
    b, v = logits.shape
    assert logits.stride(-1) == 1 and temperature.shape == (b,)
    noise = exp_noise((b, v), logits.device, generator) if noise is None else noise
    cutoff = None
    if top_p is not None:  # the sort runs in torch
        cutoff = top_p_cutoff(logits.float(), temperature.float().clamp_min(1e-5), top_p)
    if num_splits is None:  # ~2 programs per SM, at least 4 blocks per program
        num_splits = max(1, min(-(-264 // b), -(-v // (4 * block))))
    chunk = -(-v // (num_splits * block)) * block
    num_splits = -(-v // chunk)
    vals = torch.empty((b, num_splits), dtype=torch.float32, device=logits.device)
    idxs = torch.empty((b, num_splits), dtype=torch.int64, device=logits.device)
    _sample_kernel[(b, num_splits)](logits, noise, temperature, cutoff if cutoff is not None else noise, vals, idxs,
                                    v, chunk, num_splits, logits.stride(0), noise.stride(0),
                                    HAS_CUTOFF=cutoff is not None, BLOCK=block, num_warps=4)
    # winner of the split winners: argmax takes the first maximum, i.e. the lowest split, so ties keep the lowest id
    best = idxs.gather(1, vals.argmax(-1, keepdim=True)).squeeze(1)
    return best if out is None else out.copy_(best)


def sample(logits, temperature, top_p=None, generator=None, *, impl: str = "auto") -> torch.Tensor:
    """logits [B,V], temperature [B] float (0 = greedy), top_p [B] float or None -> ids [B] int64, on device."""
    fn = sample_triton if use_triton(logits, impl) else sample_ref
    return fn(logits, temperature, top_p, generator)


def argmax_triton(logits: torch.Tensor, block: int = 1024, num_splits: int | None = None) -> torch.Tensor:
    """Greedy ids [B] int64 of logits [B, V]: the sampling pass with every row greedy (the noise is never read).
    For one row torch's argmax runs one block over the whole vocabulary (~38 us for 128 K logits on an H100);
    this spreads the row over the SMs and merges the slice winners (first index wins ties, as torch)."""
    b, v = logits.shape
    assert logits.stride(-1) == 1
    if num_splits is None:
        num_splits = max(1, min(-(-264 // b), -(-v // (4 * block))))
    chunk = -(-v // (num_splits * block)) * block
    num_splits = -(-v // chunk)
    temp = torch.zeros(b, dtype=torch.float32, device=logits.device)
    vals = torch.empty((b, num_splits), dtype=torch.float32, device=logits.device)
    idxs = torch.empty((b, num_splits), dtype=torch.int64, device=logits.device)
    # noise pointer: any fp32 tensor (never read: every row is greedy), stride 0
    _sample_kernel[(b, num_splits)](logits, temp, temp, temp, vals, idxs, v, chunk, num_splits, logits.stride(0),
                                    0, HAS_CUTOFF=False, BLOCK=block, num_warps=4)
    return idxs.gather(1, vals.argmax(-1, keepdim=True)).squeeze(1)


def argmax(logits: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """logits [B, V] -> argmax ids [B] int64 (first maximum), on device, no host sync."""
    return argmax_triton(logits) if use_triton(logits, impl) else logits.argmax(-1)
