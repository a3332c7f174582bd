"""Rotary position embedding fused with the write of K and V into the paged KV cache.

Convention: Llama "rotate_half" (Hugging Face apply_rotary_pos_emb): with x = [x1 | x2] split in halves,
    rot(x) = [x1*cos - x2*sin | x2*cos + x1*sin],    cos/sin = table[position]  ([max_pos, D/2] tables,
i.e. HF's cos = cat(freqs, freqs) stored once). Rounded where Hugging Face rounds (so that a bf16 model agrees with
transformers' bf16 to well under the bf16 noise): cos/sin are cast to the tensor's dtype, each product
x1*cos, x2*sin is rounded to it, then their sum/difference is rounded again (`q * cos + rotate_half(q) * sin` in
q.dtype). For fp32 these roundings are no-ops.

Paged cache per layer: k_cache, v_cache [num_pages, page_size, n_kv_heads, head_dim], contiguous; token t goes to
flat slot slot_mapping[t] = page * page_size + offset_in_page. A negative slot means "don't write" (padding
rows of a CUDA-graph batch). One program per token: reads q, k, v once, writes q_rot and the two cache rows once.
"""

from __future__ import annotations

import torch

from kernels._triton import next_pow2, tl, triton, use_triton


def rotate_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D], cos/sin [T, D/2] -> rotated x [T, H, D], in x.dtype arithmetic like HF's apply_rotary_pos_emb
    (cos/sin cast to x.dtype; every product and sum rounded to x.dtype)."""
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos.to(x.dtype)[:, None, :], sin.to(x.dtype)[:, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def rope_write_kv_ref(q, k, v, positions, cos, sin, k_cache, v_cache, slot_mapping) -> torch.Tensor:
    """q [T,H,D], k/v [T,Hkv,D], positions [T], cos/sin [max_pos, D/2], caches [P, page, Hkv, D],
    slot_mapping [T] -> q_rot [T,H,D]; writes rotated k and v into the caches in place."""
    c, s = cos.index_select(0, positions.long()), sin.index_select(0, positions.long())
    q_rot, k_rot = rotate_ref(q, c, s), rotate_ref(k, c, s)
    hkv, d = k_cache.shape[-2:]
    slots = slot_mapping.long()
    if not bool((slots >= 0).all()):  # padding rows (host sync; this is the CPU / fallback path)
        keep = slots >= 0
        slots, k_rot, v = slots[keep], k_rot[keep], v[keep]
    k_cache.view(-1, hkv, d).index_copy_(0, slots, k_rot.to(k_cache.dtype))
    v_cache.view(-1, hkv, d).index_copy_(0, slots, v.to(v_cache.dtype))
    return q_rot


@triton.jit
def _rope_kv_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, slot_ptr, qo_ptr,
                    H, HKV, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                    stride_cos, stride_slot, stride_qot, stride_qoh,
                    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HKV: tl.constexpr):
    t = tl.program_id(0)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    d = tl.arange(0, BLOCK_HALF)
    dmask = d < HALF
    c = tl.load(cos_ptr + pos * stride_cos + d, mask=dmask, other=0.0)[None, :]
    s = tl.load(sin_ptr + pos * stride_cos + d, mask=dmask, other=0.0)[None, :]
    # HF rounding: the tables in the tensors' dtype, each product and the sum rounded to it (see the docstring)
    QT = q_ptr.dtype.element_ty
    KT = k_ptr.dtype.element_ty
    cq, sq = c.to(QT).to(tl.float32), s.to(QT).to(tl.float32)
    ck, sk = c.to(KT).to(tl.float32), s.to(KT).to(tl.float32)

    # q: [BLOCK_H, BLOCK_HALF] tiles of the two halves
    h = tl.arange(0, BLOCK_H)
    m = (h < H)[:, None] & dmask[None, :]
    qp = q_ptr + t * stride_qt + h[:, None] * stride_qh + d[None, :]
    q1 = tl.load(qp, mask=m, other=0.0).to(tl.float32)
    q2 = tl.load(qp + HALF, mask=m, other=0.0).to(tl.float32)
    op = qo_ptr + t * stride_qot + h[:, None] * stride_qoh + d[None, :]
    o1 = (q1 * cq).to(QT).to(tl.float32) - (q2 * sq).to(QT).to(tl.float32)
    o2 = (q2 * cq).to(QT).to(tl.float32) + (q1 * sq).to(QT).to(tl.float32)
    tl.store(op, o1.to(QT).to(qo_ptr.dtype.element_ty), mask=m)
    tl.store(op + HALF, o2.to(QT).to(qo_ptr.dtype.element_ty), mask=m)

    # k, v -> cache row `slot` ([HKV, 2*HALF] contiguous inside it)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    hk = tl.arange(0, BLOCK_HKV)
    # (hk * 0 + slot): broadcast the scalar test to a vector; the interpreter rejects a scalar mask term
    mk = ((hk < HKV) & (hk * 0 + slot >= 0))[:, None] & dmask[None, :]
    kp = k_ptr + t * stride_kt + hk[:, None] * stride_kh + d[None, :]
    k1 = tl.load(kp, mask=mk, other=0.0).to(tl.float32)
    k2 = tl.load(kp + HALF, mask=mk, other=0.0).to(tl.float32)
    cp = slot * stride_slot + hk[:, None] * (2 * HALF) + d[None, :]
    r1 = (k1 * ck).to(KT).to(tl.float32) - (k2 * sk).to(KT).to(tl.float32)
    r2 = (k2 * ck).to(KT).to(tl.float32) + (k1 * sk).to(KT).to(tl.float32)
    tl.store(kc_ptr + cp, r1.to(KT).to(kc_ptr.dtype.element_ty), mask=mk)
    tl.store(kc_ptr + cp + HALF, r2.to(KT).to(kc_ptr.dtype.element_ty), mask=mk)
    vp = v_ptr + t * stride_vt + hk[:, None] * stride_vh + d[None, :]
    tl.store(vc_ptr + cp, tl.load(vp, mask=mk, other=0.0).to(vc_ptr.dtype.element_ty), mask=mk)
    tl.store(vc_ptr + cp + HALF, tl.load(vp + HALF, mask=mk, other=0.0).to(vc_ptr.dtype.element_ty), mask=mk)


def rope_write_kv_triton(q, k, v, positions, cos, sin, k_cache, v_cache, slot_mapping, *, out=None):
    t, h, d = q.shape
    hkv = k.shape[1]
    assert d % 2 == 0 and k.shape == v.shape == (t, hkv, d) and k_cache.shape[-2:] == (hkv, d)
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1 and cos.stride(-1) == sin.stride(-1) == 1
    assert cos.stride(0) == sin.stride(0) and cos.shape[-1] == d // 2
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    out = torch.empty_like(q) if out is None else out
    if t == 0:
        return out
    _rope_kv_kernel[(t,)](q, k, v, positions, cos, sin, k_cache, v_cache, slot_mapping, out,
                          h, hkv, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                          cos.stride(0), k_cache.stride(1), out.stride(0), out.stride(1),
                          HALF=d // 2, BLOCK_HALF=next_pow2(d // 2), BLOCK_H=next_pow2(h),
                          BLOCK_HKV=next_pow2(hkv), num_warps=4)
    return out


def rope_write_kv(q, k, v, positions, cos, sin, k_cache, v_cache, slot_mapping, *, impl: str = "auto"):
    """Rotate q and k by their positions, store rotated k and v at the cache slots; return rotated q.

    q [T,H,D]; k, v [T,Hkv,D]; positions [T] int; cos, sin [max_pos, D/2]; k_cache, v_cache
    [num_pages, page_size, Hkv, D]; slot_mapping [T] int (page*page_size + offset, < 0 = skip) -> q_rot [T,H,D].
    """
    fn = rope_write_kv_triton if use_triton(q, impl) else rope_write_kv_ref
    return fn(q, k, v, positions, cos, sin, k_cache, v_cache, slot_mapping)
