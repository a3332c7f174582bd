"""Load a `Llama` from a GGUF file, a Hugging Face safetensors directory, or synthetic weights of a named shape.

GGUF: tensors are dequantized with `gguf` to fp32 and renamed to Hugging Face names. llama.cpp's converter
permutes the rows of Q and K for the llama architecture (it wants GPT-J style interleaved RoPE pairs); we undo
that so the weights match HF and our rotate_half RoPE. The converted fp32 weights and the config are cached as
one safetensors file under $QUICKTURN_HOME/cache/llm/, keyed by the GGUF's sha256, so the second start only
maps that file.

Synthetic weights come from a fixed seed and are labelled (`cfg.synthetic`) in every log and result.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from llm.config import ModelConfig
from llm.llama import Llama, fuse_hf_state_dict

log = logging.getLogger(__name__)


def cache_root() -> Path:
    try:
        from agent.models import home
    except ImportError:  # bench machines may lack the agent package's deps
        home = lambda: Path(os.environ.get("QUICKTURN_HOME", Path.home() / ".cache" / "quickturn"))  # noqa: E731
    return Path(home()) / "cache" / "llm"


_SHA_MEMO: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    st = Path(path).stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = _sha256(path)
    return _SHA_MEMO[key]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def find_gguf(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.gguf"))
        if not found:
            raise FileNotFoundError(f"no .gguf file in {p}")
        return found[0]
    return p


# ---- GGUF ------------------------------------------------------------------------------------------------------


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of llama.cpp's `permute` (convert_hf_to_gguf.py) on rows [n_head * D, ...]: GGUF stores each
    head's rows as interleaved (pair, 2) pairs; HF keeps halves (2, pair)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


_GGUF_NAMES = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def gguf_metadata(reader) -> dict:
    meta = {}
    for key, field in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                   "tokenizer.ggml.scores"):
            continue
        try:
            meta[key] = field.contents()
        except Exception:  # noqa: BLE001 - exotic field types are not needed
            pass
    return meta


def convert_gguf(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """GGUF -> (config, fp32 HF-named state dict)."""
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(path))
    meta = gguf_metadata(reader)
    names = {t.name for t in reader.tensors}
    cfg = ModelConfig.from_gguf_fields(meta, name=meta.get("general.name", path.stem),
                                       has_output="output.weight" in names)
    llama_arch = meta["general.architecture"] == "llama"
    sd: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        w = torch.from_numpy(dequantize(t.data, t.tensor_type).copy()).float()
        w = w.reshape([int(n) for n in reversed(t.shape)]) if w.numel() == t.n_elements else w
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        elif t.name.startswith("blk."):
            _, i, rest = t.name.split(".", 2)
            if rest not in _GGUF_NAMES:
                raise KeyError(f"unexpected GGUF tensor {t.name}")
            name = f"model.layers.{i}.{_GGUF_NAMES[rest]}"
            if llama_arch and rest.startswith("attn_q."):
                w = _unpermute(w, cfg.n_heads)
            elif llama_arch and rest.startswith("attn_k."):
                w = _unpermute(w, cfg.n_kv_heads)
        elif t.name == "rope_freqs.weight":
            continue
        else:
            raise KeyError(f"unexpected GGUF tensor {t.name}")
        sd[name] = w.contiguous()
    return cfg, sd


def load_gguf_cached(path: str | Path, cache_dir: Path | None = None) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """GGUF -> (config, state dict in OUR fused layout), cached as safetensors (+ config in its metadata)."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    path = find_gguf(path)
    cache_dir = cache_dir or cache_root()
    digest = file_sha256(path)[:16]
    cached = cache_dir / f"{path.stem}-{digest}.v2.safetensors"
    if cached.exists():
        with safe_open(str(cached), "pt") as f:
            cfg = ModelConfig.from_json(f.metadata()["config"])
        return cfg, load_file(str(cached))
    t0 = time.perf_counter()
    cfg, sd = convert_gguf(path)
    sd = fuse_hf_state_dict(cfg, sd)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    save_file(sd, str(tmp), metadata={"config": cfg.to_json(), "source": str(path), "sha256_16": digest})
    os.replace(tmp, cached)
    log.info("converted %s in %.1f s -> %s", path.name, time.perf_counter() - t0, cached)
    return cfg, sd


# ---- safetensors directory / synthetic -------------------------------------------------------------------------


def load_hf_dir(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """HF directory -> (config, state dict in our fused layout)."""
    from safetensors.torch import load_file

    p = Path(path)
    cfg = ModelConfig.from_hf(p, name=p.name)
    sd = {}
    for f in sorted(p.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    if not sd:
        raise FileNotFoundError(f"no *.safetensors in {p}")
    return cfg, fuse_hf_state_dict(cfg, sd)


@torch.no_grad()
def init_synthetic(model: Llama, seed: int = 0) -> Llama:
    """Fill every weight from a fixed seed: N(0, 0.02) matrices (HF's init), norms 1, biases N(0, 0.02)."""
    g = torch.Generator(device=model.embed.weight.device).manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02, generator=g)
    return model


def load_model(source: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               max_seq_len: int | None = None, seed: int = 0) -> Llama:
    """`source`: a named shape ("synthetic:llama-3.1-8b" or just "llama-3.1-8b"), a .gguf file or a directory
    holding one, or a Hugging Face directory with config.json + *.safetensors."""
    s = str(source)
    name = s.removeprefix("synthetic:")
    from llm.config import SHAPES

    if s.startswith("synthetic:") or name in SHAPES:
        cfg = replace(ModelConfig.named(name), synthetic=True)
        model = Llama(cfg, max_seq_len, device="meta").to(dtype).to_empty(device=device)  # no fp32 detour
        model.init_rope()
        log.warning("model %s uses SYNTHETIC weights (seed %d)", name, seed)
        return init_synthetic(model, seed).eval()
    p = Path(s).expanduser()
    if p.suffix == ".gguf" or (p.is_dir() and any(p.glob("*.gguf"))):
        cfg, sd = load_gguf_cached(p)
    else:
        cfg, sd = load_hf_dir(p)
    model = Llama(cfg, max_seq_len, device="meta")
    model.load_state_dict(sd, assign=True)  # no copy: the model takes the loaded tensors
    model = model.to(device=device, dtype=dtype)
    model.init_rope()
    return model.eval()
