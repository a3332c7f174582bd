import pytest
import torch
from kutil import needs_interpreter, poison, rel_err

from kernels.rope_kv import rope_write_kv, rope_write_kv_ref, rope_write_kv_triton


def tables(max_pos, d, base=10000.0):
    inv = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    f = torch.outer(torch.arange(max_pos, dtype=torch.float64), inv)  # [max_pos, D/2]
    return f.cos(), f.sin()


def hf_rope(x, pos, cos_half, sin_half):
    """Hugging Face apply_rotary_pos_emb, float64: x*cos + rotate_half(x)*sin with cos = cat(f, f)."""
    cos = torch.cat([cos_half, cos_half], -1)[pos][:, None, :]
    sin = torch.cat([sin_half, sin_half], -1)[pos][:, None, :]
    x1, x2 = x.double().chunk(2, -1)
    return x.double() * cos + torch.cat([-x2, x1], -1) * sin


def make(t, h, hkv, d, pages, page_size, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(t, n, d, generator=g).to(dtype) for n in (h, hkv, hkv))
    positions = torch.randperm(40, generator=g)[:t]
    slots = torch.randperm(pages * page_size, generator=g)[:t]
    slots[0] = -1  # a padding row: must not be written
    cos, sin = tables(40, d)
    return q, k, v, positions, cos.float(), sin.float(), slots, cos, sin


def test_reference_matches_hf_convention():
    q, k, v, pos, cos, sin, slots, cos64, sin64 = make(6, 4, 2, 16, 3, 4, torch.float32, 0)
    kc, vc = poison(torch.empty(3, 4, 2, 16)), poison(torch.empty(3, 4, 2, 16))
    q_rot = rope_write_kv(q, k, v, pos, cos, sin, kc, vc, slots, impl="torch")
    assert rel_err(q_rot, hf_rope(q, pos, cos64, sin64)) < 1e-6
    flat_k, flat_v = kc.view(-1, 2, 16), vc.view(-1, 2, 16)
    k_rot = hf_rope(k, pos, cos64, sin64)
    for i, s in enumerate(slots.tolist()):
        if s >= 0:
            assert rel_err(flat_k[s], k_rot[i]) < 1e-6 and torch.equal(flat_v[s], v[i])
    written = slots[slots >= 0]
    untouched = torch.ones(12, dtype=torch.bool)
    untouched[written] = False
    assert flat_k[untouched].isnan().all() and flat_v[untouched].isnan().all()


@needs_interpreter
@pytest.mark.parametrize("dtype,h,hkv,d", [(torch.float32, 4, 2, 16), (torch.float16, 6, 3, 24),
                                           (torch.float32, 8, 1, 8)])
def test_triton_matches_reference(dtype, h, hkv, d):
    t, pages, page_size = 5, 3, 4
    q, k, v, pos, cos, sin, slots, _, _ = make(t, h, hkv, d, pages, page_size, dtype, h * d)
    shape = (pages, page_size, hkv, d)
    kc, vc, kc_ref, vc_ref = (poison(torch.empty(shape, dtype=dtype)) for _ in range(4))
    out = poison(torch.empty_like(q))
    got = rope_write_kv_triton(q, k, v, pos.int(), cos, sin, kc, vc, slots.int(), out=out)
    want = rope_write_kv_ref(q, k, v, pos, cos, sin, kc_ref, vc_ref, slots)
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    assert got is out and rel_err(got, want) < tol
    written = slots[slots >= 0]
    assert rel_err(kc.view(-1, hkv, d)[written], kc_ref.view(-1, hkv, d)[written]) < tol
    assert torch.equal(vc.view(-1, hkv, d)[written], vc_ref.view(-1, hkv, d)[written])
    # every other slot keeps its poison: no stray writes (the padding row included)
    assert torch.equal(kc.isnan(), kc_ref.isnan()) and torch.equal(vc.isnan(), vc_ref.isnan())


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_interpreter)])
def test_rounds_like_transformers_in_half_precision(impl):
    """fp16 (the interpreter's bf16 casts are not round-to-nearest-even; the GPU's are): bit-identical to HF's
    `q * cos + rotate_half(q) * sin` with cos/sin cast to the tensor dtype, so a bf16 model agrees with
    transformers' bf16 (a single fp32 rounding instead differs in ~1/3 of the elements by one ulp)."""
    dtype = torch.float16
    q, k, v, pos, cos, sin, slots, _, _ = make(7, 8, 2, 64, 4, 4, dtype, 11)
    slots = torch.randperm(16, generator=torch.Generator().manual_seed(2))[:7]  # every row written, distinct
    kc, vc = poison(torch.empty(4, 4, 2, 64, dtype=dtype)), poison(torch.empty(4, 4, 2, 64, dtype=dtype))
    fn = rope_write_kv_triton if impl == "triton" else rope_write_kv_ref
    got = fn(q, k, v, pos.int(), cos, sin, kc, vc, slots.int())

    def hf(x):  # transformers' apply_rotary_pos_emb, in x.dtype
        c = torch.cat([cos, cos], -1)[pos.long()].to(dtype)[:, None, :]
        s = torch.cat([sin, sin], -1)[pos.long()].to(dtype)[:, None, :]
        x1, x2 = x.chunk(2, -1)
        return (x * c) + (torch.cat((-x2, x1), -1) * s)

    assert torch.equal(got, hf(q))
    assert torch.equal(kc.view(-1, 2, 64)[slots.long()], hf(k))
