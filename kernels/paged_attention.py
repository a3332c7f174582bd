"""Decode attention (one query token per sequence) over a paged KV cache, GQA, split-K.

Cache per layer: k_cache, v_cache [num_pages, page_size, Hkv, D]; sequence b's token t lives in page
block_table[b, t // page_size] at offset t % page_size. H query heads share Hkv kv heads (group G = H / Hkv).

Triton plan (memory bound: every K/V byte of the context is read once):
  pass 1, grid (B, Hkv, S): program (b, kvh, s) takes the G query heads of kv head `kvh` (padded to 16 rows so
    the scores are one tensor-core dot) over the s-th of S equal slices of the sequence, with an online softmax;
    it writes its partial output (already divided by its own sum) and its log-sum-exp (base 2).
  pass 2, grid (B, H): merges the S partials: out = sum_s 2^(lse_s - max) o_s / sum_s 2^(lse_s - max).
  With S == 1 pass 1 writes the output directly and pass 2 is skipped.
S is chosen on the host from B, Hkv and the capacity of the block table (max_pages * page_size), never from
seq_lens (that would need a device->host sync and would break CUDA-graph capture); slices are cut per sequence
from its real length inside the kernel, so empty slices are allowed (they carry lse = -inf).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from kernels._triton import next_pow2, tl, triton, use_triton


def paged_decode_attention_ref(q, k_cache, v_cache, block_table, seq_lens, scale, num_splits=None):
    """q [B,H,D], caches [P,page,Hkv,D], block_table [B,max_pages], seq_lens [B] -> out [B,H,D].

    fp32 attention over the block table's pages with a length mask: no host sync on CUDA, so it is also the
    sync-free torch fallback. num_splits is accepted and ignored (splitting only changes the summation order)."""
    b, h, d = q.shape
    num_pages, page, hkv = k_cache.shape[:3]
    bt = block_table.long().clamp(0, num_pages - 1)  # entries past a sequence's pages may be any filler
    if not q.is_cuda and b > 0:  # on the CPU a host read is free: skip the table's unused capacity
        n = int(seq_lens.max())
        bt = bt[:, : max(1, -(-n // page))]
        if b == 1 and n > 0:  # the CPU engine's common case: exactly n keys, no mask
            k = k_cache.index_select(0, bt[0]).flatten(0, 1)[:n].transpose(0, 1)[None].float()  # [1, Hkv, n, D]
            v = v_cache.index_select(0, bt[0]).flatten(0, 1)[:n].transpose(0, 1)[None].float()
            o = F.scaled_dot_product_attention(q.float()[:, :, None, :], k, v, scale=scale, enable_gqa=True)
            return o[:, :, 0, :].to(q.dtype)
    # [B, Hkv, L, D], L = pages * page (index_select: several times faster than advanced indexing on the CPU)
    k = k_cache.index_select(0, bt.flatten()).view(b, -1, hkv, d).transpose(1, 2).float()
    v = v_cache.index_select(0, bt.flatten()).view(b, -1, hkv, d).transpose(1, 2).float()
    valid = torch.arange(k.shape[2], device=q.device)[None, :] < seq_lens[:, None]  # [B, L]
    o = F.scaled_dot_product_attention(q.float()[:, :, None, :], k, v, attn_mask=valid[:, None, None, :],
                                       scale=scale, enable_gqa=True)  # [B, H, 1, D]
    # seq_len 0 (padding row): every key masked -> NaN; the kernel writes 0 there
    return torch.nan_to_num(o[:, :, 0, :], nan=0.0).to(q.dtype)


@triton.jit
def _attn_split_kernel(q_ptr, kc_ptr, vc_ptr, bt_ptr, lens_ptr, part_ptr, lse_ptr, out_ptr, qk_scale,
                       stride_qb, stride_qh, stride_bt, stride_page, stride_tok, stride_pb, stride_ph, stride_ps,
                       stride_lb, stride_lh, stride_ob, stride_oh, num_splits,
                       G: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr,
                       BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DIRECT: tl.constexpr):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    sp = tl.program_id(2)
    seq_len = tl.load(lens_ptr + b)
    chunk = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = sp * chunk
    end = tl.minimum(start + chunk, seq_len)

    g = tl.arange(0, BLOCK_G)
    heads = kvh * G + g
    gmask = g < G
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=gmask[:, None] & dmask[None, :], other=0.0)  # [BLOCK_G, BLOCK_D]

    m = tl.full([BLOCK_G], float("-inf"), tl.float32)  # running max of scores (base-2 units)
    l = tl.zeros([BLOCK_G], tl.float32)  # running sum of 2^(s - m)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        toks = n0 + tl.arange(0, BLOCK_N)
        tmask = toks < end
        page = tl.load(bt_ptr + b * stride_bt + toks // PAGE, mask=tmask, other=0).to(tl.int64)
        row = page * stride_page + (toks % PAGE) * stride_tok + kvh * D  # [BLOCK_N] cache row offsets
        kvmask = tmask[:, None] & dmask[None, :]
        k = tl.load(kc_ptr + row[:, None] + d[None, :], mask=kvmask, other=0.0)  # [BLOCK_N, BLOCK_D]
        s = tl.dot(q, tl.trans(k)) * qk_scale  # [BLOCK_G, BLOCK_N], log2-scaled scores
        s = tl.where(tmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m - m_new)
        v = tl.load(vc_ptr + row[:, None] + d[None, :], mask=kvmask, other=0.0)
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new

    o = acc / tl.where(l > 0, l, 1.0)[:, None]  # empty slice (or seq_len 0): o = 0
    omask = gmask[:, None] & dmask[None, :]
    if DIRECT:
        tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=omask)
    else:
        base = b * stride_pb + heads * stride_ph + sp * stride_ps  # [BLOCK_G]
        tl.store(part_ptr + base[:, None] + d[None, :], o, mask=omask)
        lse = tl.where(l > 0, m + tl.log2(tl.where(l > 0, l, 1.0)), float("-inf"))
        tl.store(lse_ptr + b * stride_lb + heads * stride_lh + sp, lse, mask=gmask)


@triton.jit
def _attn_merge_kernel(part_ptr, lse_ptr, out_ptr, stride_pb, stride_ph, stride_ps, stride_lb, stride_lh,
                       stride_ob, stride_oh, num_splits,
                       D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    # grid (B, H): log-sum-exp merge of the num_splits partial outputs of one (sequence, head)
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    smask = s < num_splits
    d = tl.arange(0, BLOCK_D)
    lse = tl.load(lse_ptr + b * stride_lb + h * stride_lh + s, mask=smask, other=float("-inf"))
    mx = tl.max(lse, axis=0)
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    w = tl.exp2(lse - mx)  # [BLOCK_S], 0 for empty slices
    total = tl.sum(w, axis=0)
    part = tl.load(part_ptr + b * stride_pb + h * stride_ph + s[:, None] * stride_ps + d[None, :],
                   mask=smask[:, None] & (d < D)[None, :], other=0.0)
    o = tl.sum(w[:, None] * part, axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, o.to(out_ptr.dtype.element_ty), mask=d < D)


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_num_splits(batch: int, n_kv_heads: int, max_len: int, num_sms: int = 132, min_chunk: int = 64) -> int:
    """Enough (sequence, kv head, slice) programs for ~2 waves over the SMs, slices of >= min_chunk tokens (one
    BLOCK_N). max_len is the block table's capacity (host-known), so the choice is fixed for a CUDA-graph bucket.
    H100 sweep (bench/results/kernels_h100.json): B=1, ctx 512: 8 slices 6.8 us vs 2 slices 11.1 us (8B shape)."""
    want = -(-2 * num_sms // max(1, batch * n_kv_heads))
    return max(1, min(want, -(-max_len // min_chunk), 128))


def paged_decode_attention_triton(q, k_cache, v_cache, block_table, seq_lens, scale, num_splits=None, *,
                                  out=None, block_n: int | None = None, num_warps: int = 4,
                                  num_stages: int | None = None):
    b, h, d = q.shape
    _, page, hkv, dk = k_cache.shape
    assert dk == d and h % hkv == 0 and v_cache.shape == k_cache.shape
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and q.stride(-1) == 1
    assert block_table.stride(-1) == 1 and block_table.shape[0] == b and seq_lens.shape == (b,)
    if block_n is None:  # H100 sweep: 128-token tiles 10-20 % faster for D=64, on par or mixed for D=128
        block_n = 128 if d <= 64 else 64
    if num_splits is None:
        sms = _num_sms(q.device.index or 0) if q.is_cuda else 132
        num_splits = choose_num_splits(b, hkv, block_table.shape[1] * page, sms, min_chunk=block_n)
    out = torch.empty_like(q) if out is None else out
    block_d = next_pow2(d)
    g = h // hkv
    meta = dict(G=g, D=d, PAGE=page, BLOCK_G=max(16, next_pow2(g)), BLOCK_N=block_n,
                BLOCK_D=block_d, num_warps=num_warps)
    if num_stages is not None:
        meta["num_stages"] = num_stages
    qk_scale = scale * math.log2(math.e)
    if num_splits == 1:
        _attn_split_kernel[(b, hkv, 1)](q, k_cache, v_cache, block_table, seq_lens, out, out, out, qk_scale,
                                        q.stride(0), q.stride(1), block_table.stride(0), k_cache.stride(0),
                                        k_cache.stride(1), 0, 0, 0, 0, 0, out.stride(0), out.stride(1), 1,
                                        DIRECT=True, **meta)
        return out
    # partials [B, H, S, BLOCK_D] fp32 (each normalised by its own sum), lse [B, H, S] fp32 (base 2)
    part = torch.empty((b, h, num_splits, block_d), dtype=torch.float32, device=q.device)
    lse = torch.empty((b, h, num_splits), dtype=torch.float32, device=q.device)
    _attn_split_kernel[(b, hkv, num_splits)](q, k_cache, v_cache, block_table, seq_lens, part, lse, out, qk_scale,
                                             q.stride(0), q.stride(1), block_table.stride(0), k_cache.stride(0),
                                             k_cache.stride(1), part.stride(0), part.stride(1), part.stride(2),
                                             lse.stride(0), lse.stride(1), out.stride(0), out.stride(1), num_splits,
                                             DIRECT=False, **meta)
    _attn_merge_kernel[(b, h)](part, lse, out, part.stride(0), part.stride(1), part.stride(2), lse.stride(0),
                               lse.stride(1), out.stride(0), out.stride(1), num_splits, D=d,
                               BLOCK_S=next_pow2(num_splits), BLOCK_D=block_d, num_warps=4)
    return out


def paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale, num_splits=None, *,
                           impl: str = "auto"):
    """q [B,H,D]; k_cache, v_cache [num_pages, page_size, Hkv, D]; block_table [B, max_pages] int32;
    seq_lens [B] int32 (0 = padding row, output 0); scale (usually D**-0.5) -> out [B,H,D].
    num_splits=None picks the split-K factor from B, Hkv and the block table's capacity."""
    fn = paged_decode_attention_triton if use_triton(q, impl) else paged_decode_attention_ref
    return fn(q, k_cache, v_cache, block_table, seq_lens, scale, num_splits)
