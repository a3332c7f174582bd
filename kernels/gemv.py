"""Matrix-vector product for one-token decode (M = 1), with the op before it fused into its prologue.

    gemv(x, w, bias)                          out = x @ w.T (+ bias)                         x [1, K], w [N, K]
    rmsnorm_gemv(x, w_norm, eps, w, residual) r = x + residual; out = rmsnorm(r) @ w.T      -> (out, r)
    silu_gemv(gu, w)                          out = (silu(gate) * up) @ w.T                  gu [1, 2K] = gate | up

Why: a decode step of one session is ~10 dependent kernels per layer, each of which costs 2-4 us in a CUDA graph
whatever its size. Folding RMSNorm (+ residual add) into the following GEMV and SiLU·mul into the down projection
removes 3 of them per layer. The prologue is recomputed by every program from the input row, which is a few KB
and stays in L2; the weight, which is what the kernel is there to stream, is read once with evict-first loads.

Rounding matches the unfused ops (and Hugging Face): r rounded to x.dtype; the normalised row rounded before the
multiply by w_norm and again after it; silu rounded before the multiply by up and again after it; the dot product
accumulated in fp32 and rounded once. Program 0 writes r (the new residual stream).
The references are the unfused torch ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._triton import next_pow2, tl, triton, use_triton


def gemv_ref(x, w, bias=None):
    return F.linear(x, w, bias)


def rmsnorm_gemv_ref(x, w_norm, eps, w, residual=None, bias=None):
    from kernels.rmsnorm import rmsnorm_ref

    if residual is None:
        return F.linear(rmsnorm_ref(x, w_norm, eps), w, bias), None
    h, r = rmsnorm_ref(x, w_norm, eps, residual)
    return F.linear(h, w, bias), r


def silu_gemv_ref(gu, w):
    from kernels.activation import silu_and_mul_ref

    return F.linear(silu_and_mul_ref(gu), w)


@triton.jit
def _gemv_kernel(x_ptr, res_ptr, nw_ptr, w_ptr, b_ptr, out_ptr, newres_ptr, N, K, stride_w, eps,
                 PROLOGUE: tl.constexpr, HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_X: tl.constexpr):
    # PROLOGUE 0: x as is; 1: rmsnorm(x (+ residual)) * w_norm; 2: silu(x[:K]) * x[K:]
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    kk = tl.arange(0, BLOCK_K)
    XT = x_ptr.dtype.element_ty
    rstd = 1.0
    if PROLOGUE == 1:
        # statistics of the whole row in one shot (K <= BLOCK_X: every load in flight together)
        xc = tl.arange(0, BLOCK_X)
        xm = xc < K
        xv = tl.load(x_ptr + xc, mask=xm, other=0.0)
        if HAS_RES:
            xv = (xv.to(tl.float32) + tl.load(res_ptr + xc, mask=xm, other=0.0).to(tl.float32)).to(XT)
            tl.store(newres_ptr + xc, xv, mask=xm & ((xc * 0 + pid) == 0))  # program 0 writes the residual
        xf = xv.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / K + eps)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + kk
        cmask = cols < K
        if PROLOGUE == 2:
            g = tl.load(x_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            u = tl.load(x_ptr + K + cols, mask=cmask, other=0.0).to(tl.float32)
            a = (g / (1.0 + tl.exp(-g))).to(XT).to(tl.float32)
            xk = (a * u).to(XT).to(tl.float32)
        else:
            xk = tl.load(x_ptr + cols, mask=cmask, other=0.0)
            if PROLOGUE == 1:
                if HAS_RES:
                    xk = (xk.to(tl.float32) + tl.load(res_ptr + cols, mask=cmask, other=0.0).to(tl.float32)).to(XT)
                h = (xk.to(tl.float32) * rstd).to(XT).to(tl.float32)
                nw = tl.load(nw_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
                xk = (h * nw).to(XT)
            xk = xk.to(tl.float32)
        w = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                    other=0.0, eviction_policy="evict_first")
        acc += w.to(tl.float32) * xk[None, :]
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(b_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=rmask)


# (BLOCK_N, BLOCK_K, num_warps) by weight shape; see gemv_config
CONFIGS: dict[tuple[int, int], tuple[int, int, int]] = {}
DEFAULT_CONFIG = (16, 512, 4)


def gemv_config(n: int, k: int) -> tuple[int, int, int]:
    cfg = CONFIGS.get((n, k))
    if cfg is not None:
        return cfg
    bn, bk, warps = DEFAULT_CONFIG
    return bn, min(bk, next_pow2(k)), warps


def _launch(prologue, x, w, bias=None, residual=None, w_norm=None, eps=0.0, config=None):
    assert x.dim() == 2 and x.shape[0] == 1 and x.is_contiguous() and w.is_contiguous()
    n, k = w.shape
    assert x.shape[1] == (2 * k if prologue == 2 else k)
    bn, bk, warps = config or gemv_config(n, k)
    out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    new_res = torch.empty_like(x) if residual is not None else out
    _gemv_kernel[(triton.cdiv(n, bn),)](
        x, residual if residual is not None else x, w_norm if w_norm is not None else x, w,
        bias if bias is not None else x, out, new_res, n, k, w.stride(0), eps,
        PROLOGUE=prologue, HAS_RES=residual is not None, HAS_BIAS=bias is not None,
        BLOCK_N=bn, BLOCK_K=bk, BLOCK_X=next_pow2(k) if prologue == 1 else 16, num_warps=warps)
    return out, (new_res if residual is not None else None)


def gemv(x, w, bias=None, *, impl: str = "auto", config=None):
    """x [1, K], w [N, K] (bias [N]) -> [1, N]"""
    if use_triton(x, impl):
        return _launch(0, x, w, bias, config=config)[0]
    return gemv_ref(x, w, bias)


def rmsnorm_gemv(x, w_norm, eps, w, residual=None, bias=None, *, impl: str = "auto", config=None):
    """x [1, K] (+ residual [1, K]) -> (rmsnorm(x + residual) * w_norm @ w.T [1, N], x + residual or None)"""
    if use_triton(x, impl):
        return _launch(1, x, w, bias, residual, w_norm, eps, config=config)
    return rmsnorm_gemv_ref(x, w_norm, eps, w, residual, bias)


def silu_gemv(gu, w, *, impl: str = "auto", config=None):
    """gu [1, 2K] (gate | up), w [N, K] -> (silu(gate) * up) @ w.T [1, N]"""
    if use_triton(gu, impl):
        return _launch(2, gu, w, config=config)[0]
    return silu_gemv_ref(gu, w)
