"""SiLU-and-multiply for the gated MLP: out = silu(gate) * up, with gate = x[:, :I] and up = x[:, I:].

The gate/up projections are one fused matmul producing x [N, 2I]; this kernel reads x once and writes
out [N, I] once. It rounds where Hugging Face's `act_fn(gate) * up` does: silu(gate) (computed in fp32) is rounded
to x.dtype, then the product is rounded again (no-ops in fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._triton import tl, triton, use_triton


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """x [N, 2I] -> [N, I], in x.dtype arithmetic like HF (silu rounded, then the product)"""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, I, stride_x, stride_o, BLOCK: tl.constexpr):
    # grid (N, cdiv(I, BLOCK)): one program = BLOCK columns of one row
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < I
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + I + cols, mask=mask, other=0.0).to(tl.float32)
    XT = x_ptr.dtype.element_ty
    act = (gate / (1.0 + tl.exp(-gate))).to(XT).to(tl.float32)  # silu rounded to x.dtype, as HF's act_fn
    out = act * up
    tl.store(out_ptr + row * stride_o + cols, out.to(XT).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul_triton(x: torch.Tensor, out: torch.Tensor | None = None, block: int = 1024) -> torch.Tensor:
    assert x.dim() == 2 and x.stride(-1) == 1 and x.shape[1] % 2 == 0
    n, i = x.shape[0], x.shape[1] // 2
    out = torch.empty((n, i), dtype=x.dtype, device=x.device) if out is None else out
    assert out.shape == (n, i) and out.stride(-1) == 1
    _silu_and_mul_kernel[(n, triton.cdiv(i, block))](x, out, i, x.stride(0), out.stride(0), BLOCK=block,
                                                     num_warps=4)
    return out


def silu_and_mul(x: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """x [N, 2I] (gate | up) -> silu(gate) * up [N, I]"""
    return silu_and_mul_triton(x) if use_triton(x, impl) else silu_and_mul_ref(x)
