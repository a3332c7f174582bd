"""Shared switch for the Triton kernels: import Triton if it is there, and decide per call which path runs.

Each kernel file has a torch reference (`*_ref`), a Triton kernel and a dispatcher with an `impl` keyword:
  impl="auto"   -> Triton when the tensor is on CUDA, else the torch reference (the CPU path of the engine);
  impl="triton" -> force the Triton kernel (tests use this on CPU with TRITON_INTERPRET=1);
  impl="torch"  -> force the reference.
`triton.jit` decides at decoration time whether it builds a compiled or an interpreted kernel, so
TRITON_INTERPRET=1 must be set before `kernels.*` is first imported (tests/kernels/conftest.py does that).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # CPU installs without the `gpu` extra: kernels are defined but never launched
    HAVE_TRITON = False

    class _Stub:
        constexpr = None

        @staticmethod
        def jit(fn=None, **_):
            return fn if fn is not None else (lambda f: f)

    triton = tl = _Stub()  # type: ignore[assignment]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreting() -> bool:
    """True when Triton kernels in this process were built for the CPU interpreter."""
    return HAVE_TRITON and INTERPRET


def use_triton(x: torch.Tensor, impl: str = "auto") -> bool:
    if impl == "torch":
        return False
    if impl == "triton":
        if not HAVE_TRITON:
            raise RuntimeError("impl='triton' but triton is not installed")
        if not x.is_cuda and not INTERPRET:
            raise RuntimeError("impl='triton' on a CPU tensor needs TRITON_INTERPRET=1 set before import")
        return True
    if impl != "auto":
        raise ValueError(f"impl must be 'auto', 'triton' or 'torch', not {impl!r}")
    return HAVE_TRITON and x.is_cuda


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
