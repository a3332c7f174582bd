import pytest
import torch
from kutil import needs_interpreter, rel_err

from kernels.gemv import gemv, rmsnorm_gemv, rmsnorm_gemv_ref, silu_gemv, silu_gemv_ref


def _data(n, k, dtype, seed, two=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 2 * k if two else k, generator=g).to(dtype)
    w = (0.1 * torch.randn(n, k, generator=g)).to(dtype)
    return x, w, g


@needs_interpreter
@pytest.mark.parametrize("dtype,n,k,config", [(torch.float32, 40, 96, (16, 32, 4)), (torch.float16, 33, 64, (8, 64, 4)),
                                              (torch.float32, 16, 200, (4, 64, 2))])
def test_gemv_matches_linear(dtype, n, k, config):
    x, w, g = _data(n, k, dtype, n + k)
    bias = torch.randn(n, generator=g).to(dtype)
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    assert rel_err(gemv(x, w, impl="triton", config=config), torch.nn.functional.linear(x, w)) < tol
    assert rel_err(gemv(x, w, bias, impl="triton", config=config), torch.nn.functional.linear(x, w, bias)) < tol


@needs_interpreter
@pytest.mark.parametrize("dtype,with_res", [(torch.float32, True), (torch.float16, True), (torch.float32, False)])
def test_rmsnorm_gemv_matches_unfused(dtype, with_res):
    n, k = 24, 80  # k not a power of two: masked tail in both the stats and the main loop
    x, w, g = _data(n, k, dtype, 3)
    res = torch.randn(1, k, generator=g).to(dtype) if with_res else None
    wn = (1 + 0.1 * torch.randn(k, generator=g)).to(dtype)
    out, r = rmsnorm_gemv(x, wn, 1e-5, w, res, impl="triton", config=(8, 32, 4))
    want, want_r = rmsnorm_gemv_ref(x, wn, 1e-5, w, res)
    assert rel_err(out, want) < (1e-6 if dtype == torch.float32 else 2e-3)
    if with_res:
        assert torch.equal(r, want_r)  # the new residual: one rounded add, written by program 0
    else:
        assert r is None


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_silu_gemv_matches_unfused(dtype):
    n, k = 20, 96
    gu, w, _ = _data(n, k, dtype, 4, two=True)
    got = silu_gemv(gu, w, impl="triton", config=(8, 32, 4))
    assert rel_err(got, silu_gemv_ref(gu, w)) < (1e-6 if dtype == torch.float32 else 2e-3)


def test_torch_path_is_the_reference():
    x, w, g = _data(8, 16, torch.float32, 5)
    assert torch.equal(gemv(x, w, impl="torch"), x @ w.T)
    gu, w2, _ = _data(8, 16, torch.float32, 6, two=True)
    assert torch.equal(silu_gemv(gu, w2, impl="torch"), silu_gemv_ref(gu, w2))
