import pytest
import torch
from kutil import needs_interpreter, poison, rel_err

from kernels.paged_attention import (choose_num_splits, paged_decode_attention, paged_decode_attention_ref,
                                     paged_decode_attention_triton)


def make(seq_lens, h, hkv, d, page, dtype, seed, extra_pages=3):
    """Random K/V per sequence, scattered into randomly permuted pages of a pool."""
    g = torch.Generator().manual_seed(seed)
    b = len(seq_lens)
    max_pages = max(1, max(-(-n // page) for n in seq_lens))
    n_pages = b * max_pages + extra_pages
    k_cache = torch.randn(n_pages, page, hkv, d, generator=g).to(dtype)  # unused slots hold random junk
    v_cache = torch.randn(n_pages, page, hkv, d, generator=g).to(dtype)
    perm = torch.randperm(n_pages, generator=g)
    block_table = perm[: b * max_pages].view(b, max_pages).int()
    q = torch.randn(b, h, d, generator=g).to(dtype)
    return q, k_cache, v_cache, block_table, torch.tensor(seq_lens, dtype=torch.int32)


def plain_attention(q, k_cache, v_cache, block_table, seq_lens, scale):
    """float64: gather each sequence's K/V contiguously, repeat kv heads, softmax(q k^T * scale) v."""
    b, h, d = q.shape
    page, hkv = k_cache.shape[1], k_cache.shape[2]
    out = torch.zeros(b, h, d, dtype=torch.float64)
    for i, n in enumerate(seq_lens.tolist()):
        toks = torch.arange(n)
        rows = block_table[i].long()[toks // page] * page + toks % page
        k = k_cache.reshape(-1, hkv, d)[rows].double().repeat_interleave(h // hkv, dim=1)  # [n, H, D]
        v = v_cache.reshape(-1, hkv, d)[rows].double().repeat_interleave(h // hkv, dim=1)
        p = (torch.einsum("hd,nhd->hn", q[i].double(), k) * scale).softmax(-1)
        out[i] = torch.einsum("hn,nhd->hd", p, v)
    return out


def test_reference_matches_plain_math():
    q, kc, vc, bt, lens = make([1, 23, 40], h=6, hkv=2, d=16, page=8, dtype=torch.float32, seed=0)
    got = paged_decode_attention(q, kc, vc, bt, lens, 0.25, impl="torch")
    assert rel_err(got, plain_attention(q, kc, vc, bt, lens, 0.25)) < 1e-5


def test_choose_num_splits():
    assert choose_num_splits(64, 8, 16384) == 1  # 512 programs already fill 132 SMs
    assert choose_num_splits(1, 8, 512) == 8  # capped by >= 64 tokens per slice
    assert choose_num_splits(1, 8, 512, min_chunk=128) == 4
    assert choose_num_splits(1, 8, 16384) == 33  # ~2 waves of 132 SMs
    assert choose_num_splits(1, 8, 16384, num_sms=132, min_chunk=16384) == 1


@needs_interpreter
@pytest.mark.parametrize("num_splits", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_matches_reference(num_splits, dtype):
    # seq 0 has 1 token (most slices empty), seq 3 is a padding row (length 0 -> output 0)
    q, kc, vc, bt, lens = make([1, 37, 50, 0], h=8, hkv=2, d=16, page=4, dtype=dtype, seed=num_splits)
    out = poison(torch.empty_like(q))
    got = paged_decode_attention_triton(q, kc, vc, bt, lens, 16 ** -0.5, num_splits, out=out, block_n=16)
    want = paged_decode_attention_ref(q, kc, vc, bt, lens, 16 ** -0.5)
    assert got is out
    assert rel_err(got, want) < (1e-5 if dtype == torch.float32 else 3e-3)
    assert torch.equal(got[3], torch.zeros_like(got[3]))


@needs_interpreter
def test_triton_gqa_group_of_one_and_odd_page():
    # H == Hkv (no grouping), page size 3, D 32, default num_splits and block_n (128 for D <= 64)
    q, kc, vc, bt, lens = make([9, 30], h=2, hkv=2, d=32, page=3, dtype=torch.float32, seed=7)
    got = paged_decode_attention_triton(q, kc, vc, bt, lens, 0.1, out=poison(torch.empty_like(q)))
    assert rel_err(got, plain_attention(q, kc, vc, bt, lens, 0.1)) < 1e-5
