import pytest
import torch
from kutil import needs_interpreter, poison, rel_err

from kernels.rmsnorm import rmsnorm, rmsnorm_ref, rmsnorm_triton


def plain_rmsnorm(x, w, eps):  # straightforward float64 math
    x = x.double()
    return w.double() * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_matches_plain_math(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 96, generator=g).to(dtype)
    res = torch.randn(7, 96, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(96, generator=g)).to(dtype)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert rel_err(rmsnorm_ref(x, w, 1e-5), plain_rmsnorm(x, w, 1e-5)) < tol
    out, new_res = rmsnorm_ref(x, w, 1e-5, residual=res)
    assert torch.equal(new_res, x + res)
    assert rel_err(out, plain_rmsnorm(x + res, w, 1e-5)) < tol
    assert rmsnorm(x, w, 1e-5, impl="torch").shape == x.shape  # CPU dispatch goes to the reference


@needs_interpreter
@pytest.mark.parametrize("dtype,n,d", [(torch.float32, 5, 96), (torch.float16, 3, 64), (torch.float32, 2, 200)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_triton_matches_reference(dtype, n, d, with_residual):
    g = torch.Generator().manual_seed(n * d)
    x = torch.randn(n, d, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(d, generator=g)).to(dtype)
    res = torch.randn(n, d, generator=g).to(dtype) if with_residual else None
    out, nres = poison(torch.empty_like(x)), poison(torch.empty_like(x))
    got = rmsnorm_triton(x, w, 1e-6, res, out=out, new_residual=nres)
    want = rmsnorm_ref(x, w, 1e-6, res)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    if with_residual:
        assert rel_err(got[1], want[1]) < tol and got[1] is nres
        got, want = got[0], want[0]
    assert got is out
    assert rel_err(got, want) < tol
