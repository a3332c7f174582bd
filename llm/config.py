"""Typed model configuration for the Llama family (Llama 3.x, SmolLM2, Qwen2 = Llama + q/k/v bias).

Built from a Hugging Face `config.json`, from GGUF metadata, or from a named real shape (`SHAPES`) used with
synthetic weights for benchmarks.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.x "llama3" frequency scaling (the only kind our models use); factor 1 = none."""

    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    max_position: int = 8192
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2
    rope_scaling: RopeScaling | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    synthetic: bool = False  # weights are random (benchmarks); always shown in logs and results

    def __post_init__(self):
        assert self.n_heads % self.n_kv_heads == 0, "GQA needs n_heads divisible by n_kv_heads"
        assert self.head_dim % 2 == 0, "rotate_half RoPE needs an even head_dim"

    @property
    def q_size(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_kv_heads * self.head_dim

    def n_params(self) -> int:
        d, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        attn = d * (self.q_size + 2 * self.kv_size) + self.q_size * d
        if self.qkv_bias:
            attn += self.q_size + 2 * self.kv_size
        layer = attn + 3 * d * i + 2 * d
        return self.n_layers * layer + v * d * (1 if self.tie_embeddings else 2) + d

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        d = json.loads(text)
        if d.get("rope_scaling"):
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        return cls(**d)

    # ---- constructors -------------------------------------------------------------------------------------

    @classmethod
    def from_hf(cls, cfg: dict | str | Path, name: str | None = None) -> "ModelConfig":
        """From a Hugging Face config.json (a dict, the file, or its directory)."""
        if not isinstance(cfg, dict):
            p = Path(cfg)
            p = p / "config.json" if p.is_dir() else p
            cfg = json.loads(p.read_text())
        arch = (cfg.get("architectures") or ["LlamaForCausalLM"])[0]
        if cfg.get("model_type") not in (None, "llama", "qwen2") and "Llama" not in arch and "Qwen2" not in arch:
            raise ValueError(f"unsupported model type {cfg.get('model_type')!r} ({arch})")
        heads = cfg["num_attention_heads"]
        rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
        scaling = None
        if rs.get("rope_type", rs.get("type")) == "llama3":
            scaling = RopeScaling(rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"],
                                  rs["original_max_position_embeddings"])
        theta = cfg.get("rope_theta") or rs.get("rope_theta") or 10000.0
        eos = cfg.get("eos_token_id")
        return cls(
            name=name or cfg.get("_name_or_path") or cfg.get("model_type", "llama"),
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            n_layers=cfg["num_hidden_layers"],
            n_heads=heads,
            n_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rope_theta=float(theta),
            rms_eps=cfg.get("rms_norm_eps", 1e-5),
            max_position=cfg.get("max_position_embeddings", 8192),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=cfg.get("model_type") == "qwen2" or "Qwen2" in arch or bool(cfg.get("attention_bias")),
            rope_scaling=scaling,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
        )

    @classmethod
    def from_gguf_fields(cls, meta: dict, name: str, has_output: bool) -> "ModelConfig":
        """From GGUF key/values (`{key: python value}`); `has_output` = the file has an output.weight."""
        arch = meta["general.architecture"]
        if arch not in ("llama", "qwen2"):
            raise ValueError(f"unsupported GGUF architecture {arch!r}")
        a = lambda k, default=None: meta.get(f"{arch}.{k}", default)  # noqa: E731
        d, heads = int(a("embedding_length")), int(a("attention.head_count"))
        vocab = a("vocab_size") or len(meta.get("tokenizer.ggml.tokens", ()))
        # Llama 3.1+ GGUFs carry llama3 scaling as a `rope_freqs` tensor; not read yet (the CPU default has none).
        scaling = None
        return cls(
            name=name,
            vocab_size=int(vocab),
            hidden_size=d,
            intermediate_size=int(a("feed_forward_length")),
            n_layers=int(a("block_count")),
            n_heads=heads,
            n_kv_heads=int(a("attention.head_count_kv", heads)),
            head_dim=int(a("attention.key_length", d // heads)),
            rope_theta=float(a("rope.freq_base", 10000.0)),
            rms_eps=float(a("attention.layer_norm_rms_epsilon", 1e-5)),
            max_position=int(a("context_length", 8192)),
            tie_embeddings=not has_output,
            qkv_bias=arch == "qwen2",
            rope_scaling=scaling,
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        )

    @classmethod
    def named(cls, name: str) -> "ModelConfig":
        """A named real shape (for synthetic weights)."""
        try:
            return SHAPES[name]
        except KeyError:
            raise KeyError(f"unknown model shape {name!r}; known: {', '.join(SHAPES)}") from None

    def hf_dict(self) -> dict:
        """The equivalent Hugging Face config.json (used to build transformers' reference model)."""
        d = {
            "architectures": ["Qwen2ForCausalLM" if self.qkv_bias else "LlamaForCausalLM"],
            "model_type": "qwen2" if self.qkv_bias else "llama",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads, "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim, "rope_theta": self.rope_theta, "rms_norm_eps": self.rms_eps,
            "max_position_embeddings": self.max_position, "tie_word_embeddings": self.tie_embeddings,
            "hidden_act": "silu", "attention_bias": False,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
        }
        if self.rope_scaling:
            r = self.rope_scaling
            d["rope_scaling"] = {"rope_type": "llama3", "factor": r.factor, "low_freq_factor": r.low_freq_factor,
                                 "high_freq_factor": r.high_freq_factor,
                                 "original_max_position_embeddings": r.original_max_position,
                                 "rope_theta": self.rope_theta}
        return d


def rope_inv_freq(cfg: ModelConfig):
    """Inverse frequencies [head_dim/2] as an fp32 tensor, with llama3 scaling, computed with the same fp32 ops in
    the same order as transformers (its rope init): a float64 computation rounds differently in the last bit, and a
    one-ulp change of a frequency moves the bf16 cos/sin tables enough for a 16-layer bf16 model to end ~3 % away
    from transformers' logits (bench/bf16_noise.py)."""
    import torch

    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).to(torch.float) / d))
    r = cfg.rope_scaling
    if r is None or r.factor == 1.0:
        return inv
    low_wl = r.original_max_position / r.low_freq_factor
    high_wl = r.original_max_position / r.high_freq_factor
    wl = 2 * math.pi / inv
    scaled = torch.where(wl > low_wl, inv / r.factor, inv)
    smooth = (r.original_max_position / wl - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor)
    smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled
    return torch.where(~(wl < high_wl) * ~(wl > low_wl), smoothed, scaled)


_LLAMA3_ROPE = dict(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192)

SHAPES: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        ModelConfig("llama-3.2-1b", vocab_size=128256, hidden_size=2048, intermediate_size=8192, n_layers=16,
                    n_heads=32, n_kv_heads=8, head_dim=64, rope_theta=500000.0, rms_eps=1e-5,
                    max_position=131072, tie_embeddings=True, rope_scaling=RopeScaling(32.0, **_LLAMA3_ROPE),
                    bos_token_id=128000, eos_token_id=128009, synthetic=True),
        ModelConfig("llama-3.1-8b", vocab_size=128256, hidden_size=4096, intermediate_size=14336, n_layers=32,
                    n_heads=32, n_kv_heads=8, head_dim=128, rope_theta=500000.0, rms_eps=1e-5,
                    max_position=131072, tie_embeddings=False, rope_scaling=RopeScaling(8.0, **_LLAMA3_ROPE),
                    bos_token_id=128000, eos_token_id=128009, synthetic=True),
        ModelConfig("qwen2.5-7b", vocab_size=152064, hidden_size=3584, intermediate_size=18944, n_layers=28,
                    n_heads=28, n_kv_heads=4, head_dim=128, rope_theta=1000000.0, rms_eps=1e-6,
                    max_position=32768, tie_embeddings=False, qkv_bias=True,
                    bos_token_id=151643, eos_token_id=151645, synthetic=True),
        ModelConfig("smollm2-135m", vocab_size=49152, hidden_size=576, intermediate_size=1536, n_layers=30,
                    n_heads=9, n_kv_heads=3, head_dim=64, rope_theta=100000.0, rms_eps=1e-5,
                    max_position=8192, tie_embeddings=True, bos_token_id=1, eos_token_id=2, synthetic=True),
    ]
}


def tiny(name: str = "tiny", **kw) -> ModelConfig:
    """A very small shape for fast tests (synthetic)."""
    base = dict(vocab_size=256, hidden_size=64, intermediate_size=128, n_layers=2, n_heads=4, n_kv_heads=2,
                head_dim=16, rope_theta=10000.0, max_position=4096, tie_embeddings=True, synthetic=True)
    base.update(kw)
    return ModelConfig(name, **base)


__all__ = ["ModelConfig", "RopeScaling", "SHAPES", "rope_inv_freq", "tiny", "replace", "field"]
