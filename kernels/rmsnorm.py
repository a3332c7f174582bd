"""RMSNorm fused with the residual add (Llama/Qwen2 pre-norm).

    new_residual = x + residual                       (rounded to x.dtype, as the unfused model does)
    out          = weight * (r * rsqrt(mean(r^2) + eps))   with r = new_residual, statistics in fp32

Rounding follows Hugging Face's LlamaRMSNorm: the normalised row is cast to x.dtype before the multiply by
weight. One pass over the row: x and residual read once, new_residual and out written once.
"""

from __future__ import annotations

import torch

from kernels._triton import next_pow2, tl, triton, use_triton


def rmsnorm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """x [N, D], weight [D], residual [N, D] or None -> out [N, D] (or (out, new_residual))."""
    if residual is not None:
        x = x + residual  # new residual stream, in x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    out = (weight * h.to(x.dtype)).to(x.dtype)
    return out if residual is None else (out, x)


@triton.jit
def _rmsnorm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, new_res_ptr, D, stride_x, stride_r, stride_o, stride_nr, eps,
                    HAS_RES: tl.constexpr, BLOCK_D: tl.constexpr):
    # one program = one row of D elements
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)  # round like the unfused add
        tl.store(new_res_ptr + row * stride_nr + cols, x, mask=mask)
    h = x.to(tl.float32)
    var = tl.sum(h * h, axis=0) / D
    h = (h * (1.0 / tl.sqrt(var + eps))).to(x.dtype)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    out = h.to(tl.float32) * w.to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def rmsnorm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None, *,
                   out: torch.Tensor | None = None, new_residual: torch.Tensor | None = None):
    """Same contract as rmsnorm_ref; `out` / `new_residual` may be given (they may alias x / residual)."""
    assert x.dim() == 2 and x.stride(-1) == 1 and weight.is_contiguous()
    n, d = x.shape
    out = torch.empty_like(x) if out is None else out
    new_res = out if residual is None else (torch.empty_like(x) if new_residual is None else new_residual)
    res = residual if residual is not None else x
    assert res.stride(-1) == 1
    block = next_pow2(d)
    warps = 4 if block <= 2048 else 8
    _rmsnorm_kernel[(n,)](x, res, weight, out, new_res, d, x.stride(0), res.stride(0), out.stride(0),
                          new_res.stride(0), eps, HAS_RES=residual is not None, BLOCK_D=block, num_warps=warps)
    return out if residual is None else (out, new_res)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None, *,
            impl: str = "auto"):
    """x [N, D] -> out [N, D]; with residual [N, D] -> (out, new_residual = x + residual)."""
    if use_triton(x, impl):
        return rmsnorm_triton(x, weight, eps, residual)
    return rmsnorm_ref(x, weight, eps, residual)
