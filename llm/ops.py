"""The engine's compute ops: the Triton kernels from `kernels/` when they exist (they dispatch to Triton on CUDA
and to their torch reference on CPU), otherwise the torch fallbacks below, which have the same contract.

Swapping a fallback for its kernel is one import; `BACKENDS` says which one each op uses (logged by benchmarks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BACKENDS: dict[str, str] = {}


# ---- torch fallbacks (same semantics as the kernels' *_ref) ---------------------------------------------------


def _rmsnorm(x, weight, eps, residual=None):
    """x [N, D] -> out [N, D]; with residual: (out, new_residual = x + residual). Stats in fp32 (HF rounding)."""
    if residual is not None:
        x = x + residual
    if x.dtype == torch.float32:  # one fused op on CPU (same math as below)
        out = F.rms_norm(x, x.shape[-1:], weight, eps)
    else:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        out = weight * h.to(x.dtype)
    return out if residual is None else (out, x)


def _rotate(x, cos, sin):
    # x [T, heads, D]; cos/sin [T, D/2] -> Llama rotate_half: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def _rope_write_kv(q, k, v, positions, cos, sin, k_cache, v_cache, slot_mapping):
    """q [T,H,D], k/v [T,Hkv,D]; cos/sin [max_pos, D/2]; caches [pages, page_size, Hkv, D] -> q_rot [T,H,D].

    Rotates q and k at `positions`, writes k (rotated) and v at flat slots `slot_mapping` [T]."""
    c = cos.index_select(0, positions).to(q.dtype)
    s = sin.index_select(0, positions).to(q.dtype)
    H = q.shape[1]
    if q.data_ptr() + q.shape[-1] * H * q.element_size() == k.data_ptr() and q.stride(0) == k.stride(0):
        # q and k are adjacent column blocks of one qkv row (our fused projection): rotate them in one go
        qk = torch.as_strided(q, (q.shape[0], H + k.shape[1], q.shape[2]), (q.stride(0), q.stride(1), 1))
        qk = _rotate(qk, c, s)
        q, k = qk[:, :H], qk[:, H:]
    else:
        q = _rotate(q, c, s)
        k = _rotate(k, c, s)
    if slot_mapping.numel() and int(slot_mapping.min()) < 0:  # padding rows: no write (host sync: CPU path)
        keep = slot_mapping >= 0
        slot_mapping, k, v = slot_mapping[keep], k[keep], v[keep]
    slot_mapping = slot_mapping.long()
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v.to(v_cache.dtype))
    return q


def _gather(cache, pages, length):
    # cache [P, ps, Hkv, D], pages [n] int -> [length, Hkv, D] (the sequence's K or V in order)
    return cache.index_select(0, pages).flatten(0, 1)[:length]


def _paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale):
    """q [B,H,D]; block_table [B, max_pages] int32; seq_lens [B] int32 -> [B,H,D]. One query per sequence."""
    B, H, D = q.shape
    ps = k_cache.shape[1]
    if B == 1:  # common CPU case: no padding, no mask; two small bmm (SDPA is slow for one query on CPU)
        n = int(seq_lens[0])
        Hkv = k_cache.shape[2]
        pages = block_table[0, : (n + ps - 1) // ps].long()
        k, v = _gather(k_cache, pages, n), _gather(v_cache, pages, n)  # [n, Hkv, D]
        qg = q[0].view(Hkv, H // Hkv, D)  # [Hkv, G, D]
        s = torch.bmm(qg, k.permute(1, 2, 0)) * scale  # [Hkv, G, n]
        o = torch.bmm(s.softmax(-1), v.transpose(0, 1))  # [Hkv, G, D]
        return o.reshape(1, H, D)
    L = block_table.shape[1] * ps
    k = k_cache[block_table.long()].flatten(1, 2)  # [B, L, Hkv, D]
    v = v_cache[block_table.long()].flatten(1, 2)
    mask = torch.arange(L, device=q.device)[None, :] < seq_lens[:, None]  # [B, L]
    o = F.scaled_dot_product_attention(q[:, :, None, :], k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=mask[:, None, None, :], scale=scale, enable_gqa=True)
    return torch.nan_to_num(o[:, :, 0, :], nan=0.0)  # seq_len 0 (padding row) -> 0


def _silu_and_mul(x):
    """x [N, 2I] (gate | up) -> silu(gate) * up [N, I]."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def _sample(logits, temperature, top_p, generator=None):
    """logits [B,V]; temperature/top_p [B] -> ids [B] int64. Greedy where temperature == 0. No host sync."""
    greedy = logits.argmax(-1)
    t = temperature.to(logits.dtype).clamp_min(1e-5)[:, None]
    probs = torch.softmax(logits.float() / t, dim=-1)
    sp, si = probs.sort(dim=-1, descending=True)
    keep = (sp.cumsum(-1) - sp) < top_p[:, None]  # always keeps the top token
    sp = sp * keep
    # exponential-race sampling: argmax(p / E), E ~ Exp(1), without a multinomial host sync
    e = torch.empty_like(sp).exponential_(1.0, generator=generator)
    pick = si.gather(-1, (sp / e).argmax(-1, keepdim=True))[:, 0]
    return torch.where(temperature == 0, greedy, pick)


# ---- dispatch: the Triton kernels from kernels/ on CUDA, the fallbacks above on CPU -------------------------
# (the kernels' own torch references are written to be sync-free on GPU, not fast on CPU: on CPU ours are used)

_KERNELS = {}
for _name, _mod in [("rmsnorm", "rmsnorm"), ("rope_write_kv", "rope_kv"),
                    ("paged_decode_attention", "paged_attention"), ("silu_and_mul", "activation"),
                    ("sample", "sampling")]:
    try:
        _KERNELS[_name] = getattr(__import__(f"kernels.{_mod}", fromlist=[_name]), _name)
        BACKENDS[_name] = f"kernels.{_mod} on CUDA, llm.ops torch on CPU"
    except (ImportError, AttributeError):
        BACKENDS[_name] = "llm.ops torch"


def _pick(name, fallback):
    kernel = _KERNELS.get(name)
    if kernel is None:
        return fallback

    def op(x, *args, **kw):
        return kernel(x, *args, **kw) if x.is_cuda else fallback(x, *args, **kw)

    op.__name__ = name
    return op


rmsnorm = _pick("rmsnorm", _rmsnorm)
rope_write_kv = _pick("rope_write_kv", _rope_write_kv)
paged_decode_attention = _pick("paged_decode_attention", _paged_decode_attention)
silu_and_mul = _pick("silu_and_mul", _silu_and_mul)
sample = _pick("sample", _sample)


# ---- one-token decode on CUDA: GEMVs with the op before them fused in (kernels/gemv.py), GPU argmax ------------

try:
    from kernels import gemv as _gemv
    from kernels.sampling import argmax as _argmax
    HAVE_FUSED_DECODE = _gemv.triton is not None and hasattr(_gemv.triton, "cdiv")
except ImportError:
    HAVE_FUSED_DECODE = False


def rmsnorm_linear(x, norm_w, eps, lin, residual=None, fuse=False, gemv=None):
    """(rmsnorm(x (+ residual)) @ lin.weight.T (+ bias), new residual or None); fused into one kernel if asked
    (at tile `gemv`, or the kernel's default tile), else the norm and then the projection (the Triton GEMV at tile
    `gemv` if given, else cuBLAS)."""
    if fuse:
        return _gemv.rmsnorm_gemv(x, norm_w, eps, lin.weight, residual, lin.bias, config=gemv)
    if residual is None:
        h = rmsnorm(x, norm_w, eps)
    else:
        h, residual = rmsnorm(x, norm_w, eps, residual)
    return linear(h, lin, False, gemv), residual


def rmsnorm_head(x, norm_w, eps, head_w, residual, gemv=None):
    """One token: logits = rmsnorm(x + residual) @ head_w.T in one fused kernel (at tile `gemv` if given)."""
    return _gemv.rmsnorm_gemv(x, norm_w, eps, head_w, residual, config=gemv)[0]


def linear_w(x, w, bias=None, gemv=None):
    """x @ w.T (+ bias), as the Triton GEMV at tile `gemv` if given (one row on CUDA), else cuBLAS."""
    return _gemv.gemv(x.contiguous(), w, bias, config=gemv) if gemv else F.linear(x, w, bias)


def linear(x, lin, fuse=False, gemv=None):
    """lin(x); one row on CUDA may run as the Triton GEMV (its default tile if fuse, tile `gemv` if given)."""
    if fuse:
        return _gemv.gemv(x.contiguous(), lin.weight, lin.bias, config=gemv)
    return linear_w(x, lin.weight, lin.bias, gemv)


def silu_linear(gu, lin, fuse=False, gemv=None):
    if fuse:
        return _gemv.silu_gemv(gu, lin.weight, config=gemv)
    return linear(silu_and_mul(gu), lin, False, gemv)


def argmax(logits, fuse=False):
    return _argmax(logits) if fuse else logits.argmax(-1)


PREFILL_LOWER_RIGHT = True  # GPU prefill after cached context: CausalBias instead of a dense mask


def prefill_attention(q, k_cache, v_cache, pages, ctx_len, scale):
    """One sequence's chunk: q [T,H,D] (rotated; its K/V already written to the cache), context `ctx_len` tokens
    (including these T) in `pages` [n] -> [T,H,D]. Causal: new token i sits at position ctx_len - T + i."""
    T = q.shape[0]
    # K is read back from the cache: rope_write_kv rotated it on the way in
    kk, vv = _gather(k_cache, pages, ctx_len), _gather(v_cache, pages, ctx_len)
    if ctx_len == T:  # nothing cached before this chunk: plain causal
        mask, causal = None, True
    elif q.is_cuda and PREFILL_LOWER_RIGHT:
        # causal aligned to the bottom-right corner, kept on the fused SDPA kernels (a dense bool mask may not be)
        from torch.nn.attention.bias import causal_lower_right

        G = q.shape[1] // kk.shape[1]
        kk, vv = kk.repeat_interleave(G, dim=1), vv.repeat_interleave(G, dim=1)  # GQA -> [ctx, H, D]
        o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], kk.transpose(0, 1)[None],
                                           vv.transpose(0, 1)[None], attn_mask=causal_lower_right(T, ctx_len),
                                           scale=scale)
        return o[0].transpose(0, 1)
    else:
        qpos = torch.arange(ctx_len - T, ctx_len, device=q.device)
        mask = torch.arange(ctx_len, device=q.device)[None, :] <= qpos[:, None]  # [T, ctx]
        causal = False
    o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], kk.transpose(0, 1)[None].to(q.dtype),
                                       vv.transpose(0, 1)[None].to(q.dtype), attn_mask=mask, is_causal=causal,
                                       scale=scale, enable_gqa=True)
    return o[0].transpose(0, 1)
