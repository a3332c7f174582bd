"""The Llama-family decoder (Llama 3.x, SmolLM2; Qwen2 = Llama with q/k/v bias), over a paged KV cache.

No serving logic here: the engine owns the KV pages, batching, sampling and CUDA graphs. The forward takes a flat
list of tokens (any mix of sequences), their positions, an `AttnMeta` that says where each token's K/V goes and
what each sequence may attend to, and the per-layer caches `[(k, v)]`, each `[num_pages, page_size, Hkv, D]`.

Weight layout is fixed at load time: q/k/v are one matrix `wqkv` [(H + 2 Hkv) D, hidden] and gate/up one matrix
`w13` [2 I, hidden] (gate first), so a layer is 4 matmuls. `load_hf_state_dict` maps Hugging Face names onto it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from llm import ops
from llm.config import ModelConfig, rope_inv_freq


@dataclass
class AttnMeta:
    """Where the T new tokens go and what they attend to.

    decode  (`prefill is None`): B sequences, one new token each (T == B); attention over pages via block_table.
    prefill: `prefill[b] = (n_new, ctx_len)` host ints per sequence; the tokens of sequence b are consecutive in
             the flat batch and sit at positions ctx_len - n_new .. ctx_len - 1.
    """

    # [T] int32 on every path (the Triton RoPE/KV kernel is specialized on the dtype): flat cache slot
    # (page * page_size + offset) of each new token
    slot_mapping: Tensor
    block_table: Tensor  # [B, max_pages] int32: the pages of each sequence, in order
    seq_lens: Tensor  # [B] int32: context length of each sequence, new tokens included
    prefill: list[tuple[int, int]] | None = None
    logits_idx: Tensor | None = None  # rows of the flat batch whose logits are wanted (None: all)


# ops that can be fused on the one-token CUDA path: "qkv" attn-norm+q|k|v, "wo" o_proj as a Triton GEMV, "w13"
# ffn-norm+gate|up, "w2" silu·mul+down, "head" final norm+LM head, "argmax" (in the decode graph) split argmax.
FUSABLE = frozenset({"qkv", "wo", "w13", "w2", "head", "argmax"})
# Default before tuning: only the argmax. On CUDA, Engine.capture runs llm/tune.py, which times every projection
# as cuBLAS, the plain Triton GEMV and the fused one at several tiles and adds the fused ops that won (H100,
# bench/results/llm_h100.json: fused q|k|v and down on the 1B shape, none on the 8B).
DECODE_FUSIONS = frozenset({"argmax"})


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, device=None):
        super().__init__()
        d, dev = cfg.hidden_size, dict(device=device)
        self.attn_norm = nn.Parameter(torch.ones(d, **dev))
        self.wqkv = nn.Linear(d, cfg.q_size + 2 * cfg.kv_size, bias=cfg.qkv_bias, **dev)
        self.wo = nn.Linear(cfg.q_size, d, bias=False, **dev)
        self.ffn_norm = nn.Parameter(torch.ones(d, **dev))
        self.w13 = nn.Linear(d, 2 * cfg.intermediate_size, bias=False, **dev)  # gate | up
        self.w2 = nn.Linear(cfg.intermediate_size, d, bias=False, **dev)


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig, max_seq_len: int | None = None, device=None):
        """device="meta" builds the skeleton without memory (the loaders then call to_empty + load)."""
        super().__init__()
        self.cfg = cfg
        dev = dict(device=device)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size, **dev)
        self.layers = nn.ModuleList(Block(cfg, device) for _ in range(cfg.n_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size, **dev))
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, **dev)
        self.scale = cfg.head_dim ** -0.5
        # one-token CUDA forward (the batch-1 decode graph): which ops run as fused GEMV kernels (kernels/gemv.py)
        self.decode_fusions: frozenset[str] = DECODE_FUSIONS
        # ...and which of the other projections run as the plain Triton GEMV at a given tile instead of cuBLAS
        # ({op: (BLOCK_N, BLOCK_K, warps)}; None = not tuned yet: Engine.capture times them, llm/tune.py)
        self.decode_gemv: dict | None = None
        self.fuse_on_cpu = False  # tests: the fused path's wiring, with the kernels' torch references
        self.max_seq_len = min(max_seq_len or cfg.max_position, cfg.max_position)
        self.init_rope()

    def init_rope(self) -> None:
        """RoPE tables cos/sin [max_seq_len, D/2] in fp32 (as HF); call again after .to(dtype) / to_empty()."""
        dev = self.embed.weight.device
        dev = torch.device("cpu") if dev.type == "meta" else dev
        inv = rope_inv_freq(self.cfg).to(dev)
        ang = torch.outer(torch.arange(self.max_seq_len, dtype=torch.float32, device=dev), inv)
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)

    def head_weight(self) -> Tensor:
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, tokens: Tensor, positions: Tensor, meta: AttnMeta, kv: list[tuple[Tensor, Tensor]]) -> Tensor:
        """tokens/positions [T] -> logits [len(logits_idx) or T, vocab] (in the model dtype)."""
        cfg = self.cfg
        H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        # one token on CUDA: RMSNorm (+ residual add) fused into the next GEMV, SiLU·mul into the down projection
        one = tokens.shape[0] == 1 and (tokens.is_cuda and ops.HAVE_FUSED_DECODE or self.fuse_on_cpu)
        f = self.decode_fusions if one else ()
        g = (self.decode_gemv or {}) if one else {}
        x = self.embed(tokens)  # [T, hidden]
        residual = None
        for layer, (k_cache, v_cache) in zip(self.layers, kv):
            qkv, residual = ops.rmsnorm_linear(x, layer.attn_norm, cfg.rms_eps, layer.wqkv, residual, "qkv" in f,
                                                 g.get("qkv"))
            residual = x if residual is None else residual  # first layer: the stream is the embedding
            q, k, v = qkv.split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
            q, k, v = q.view(-1, H, D), k.view(-1, Hkv, D), v.view(-1, Hkv, D)
            q = ops.rope_write_kv(q, k, v, positions, self.cos, self.sin, k_cache, v_cache, meta.slot_mapping)
            o = self._attention(q, k_cache, v_cache, meta)  # [T, H, D]
            x = ops.linear(o.reshape(-1, H * D), layer.wo, "wo" in f, g.get("wo"))
            gu, residual = ops.rmsnorm_linear(x, layer.ffn_norm, cfg.rms_eps, layer.w13, residual, "w13" in f,
                                                g.get("w13"))
            x = ops.silu_linear(gu, layer.w2, "w2" in f, g.get("w2"))
        if "head" in f:  # final residual add + norm + LM head in one kernel
            return ops.rmsnorm_head(x, self.norm, cfg.rms_eps, self.head_weight(), residual, g.get("head"))
        x = x + residual
        if meta.logits_idx is not None:
            x = x.index_select(0, meta.logits_idx)
        x = ops.rmsnorm(x, self.norm, cfg.rms_eps)
        return ops.linear_w(x, self.head_weight(), gemv=g.get("head"))

    def _attention(self, q, k_cache, v_cache, meta: AttnMeta) -> Tensor:
        if meta.prefill is None:
            return ops.paged_decode_attention(q, k_cache, v_cache, meta.block_table, meta.seq_lens, self.scale)
        ps, outs, start = k_cache.shape[1], [], 0
        for b, (n_new, ctx) in enumerate(meta.prefill):
            pages = meta.block_table[b, : (ctx + ps - 1) // ps].long()
            sl = slice(start, start + n_new)
            outs.append(ops.prefill_attention(q[sl], k_cache, v_cache, pages, ctx, self.scale))
            start += n_new
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    # ---- weights ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def load_hf_state_dict(self, sd: dict[str, Tensor]) -> None:
        """Load Hugging Face names (copying into this model's tensors)."""
        self.load_state_dict(fuse_hf_state_dict(self.cfg, sd))

    @torch.no_grad()
    def hf_state_dict(self) -> dict[str, Tensor]:
        """The inverse of load_hf_state_dict (to build transformers' reference model from the same weights)."""
        cfg = self.cfg
        sd = {"model.embed_tokens.weight": self.embed.weight, "model.norm.weight": self.norm}
        sd["lm_head.weight"] = self.head_weight()
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            q, k, v = layer.wqkv.weight.split([cfg.q_size, cfg.kv_size, cfg.kv_size])
            sd.update({p + "input_layernorm.weight": layer.attn_norm, p + "post_attention_layernorm.weight":
                       layer.ffn_norm, p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                       p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": layer.wo.weight})
            if cfg.qkv_bias:
                qb, kb, vb = layer.wqkv.bias.split([cfg.q_size, cfg.kv_size, cfg.kv_size])
                sd.update({p + "self_attn.q_proj.bias": qb, p + "self_attn.k_proj.bias": kb,
                           p + "self_attn.v_proj.bias": vb})
            g, u = layer.w13.weight.chunk(2)
            sd.update({p + "mlp.gate_proj.weight": g, p + "mlp.up_proj.weight": u,
                       p + "mlp.down_proj.weight": layer.w2.weight})
        return sd


def fuse_hf_state_dict(cfg: ModelConfig, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face LlamaForCausalLM / Qwen2ForCausalLM names -> our names and fused layout (q|k|v, gate|up).
    Raises on missing or unexpected keys (rotary buffers and a tied lm_head copy may be extra)."""
    used: set[str] = set()

    def take(name: str) -> Tensor:
        if name not in sd:
            raise KeyError(f"weight {name!r} missing")
        used.add(name)
        return sd[name]

    out = {"embed.weight": take("model.embed_tokens.weight"), "norm": take("model.norm.weight")}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    elif "lm_head.weight" in sd:
        used.add("lm_head.weight")
    for i in range(cfg.n_layers):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        a = p + "self_attn."
        out[o + "attn_norm"] = take(p + "input_layernorm.weight")
        out[o + "ffn_norm"] = take(p + "post_attention_layernorm.weight")
        out[o + "wqkv.weight"] = torch.cat([take(a + f"{n}_proj.weight") for n in "qkv"])
        if cfg.qkv_bias:
            out[o + "wqkv.bias"] = torch.cat([take(a + f"{n}_proj.bias") for n in "qkv"])
        out[o + "wo.weight"] = take(a + "o_proj.weight")
        out[o + "w13.weight"] = torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
        out[o + "w2.weight"] = take(p + "mlp.down_proj.weight")
    extra = [k for k in sd if k not in used and "rotary_emb" not in k]
    if extra:
        raise KeyError(f"unexpected weights: {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    return out
