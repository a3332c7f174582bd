"""Helpers for the kernel tests (imported by name: pytest puts tests/kernels on sys.path)."""

import pytest
import torch

from kernels._triton import HAVE_TRITON, interpreting

needs_interpreter = pytest.mark.skipif(
    not interpreting(),
    reason=("triton is not installed" if not HAVE_TRITON else
            "kernels were imported before TRITON_INTERPRET=1 was set (run tests/kernels on its own, "
            "or export TRITON_INTERPRET=1); the GPU check of the kernels is bench/kernels.py"),
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64; NaN anywhere fails."""
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite output (unwritten poison?)"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with NaN (float) or -1 (int) so unwritten elements show."""
    return t.fill_(float("nan") if t.dtype.is_floating_point else -1)
