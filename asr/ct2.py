"""Read a CTranslate2 Whisper directory (model.bin + config.json + tokenizer.json) into torch tensors.

model.bin layout (binary version 6, little-endian), as CTranslate2's `ModelSpec._serialize` writes it:
    u32 binary_version | str spec_name | u32 spec_revision | u32 n_variables
    n_variables x ( str name | u8 rank | u32 dims[rank] | u8 dtype_id | u32 n_bytes | n_bytes of data )
    u32 n_aliases | n_aliases x ( str alias | str target )
where `str` is u16 length (including a trailing NUL) followed by the bytes and the NUL.

The Whisper spec's names map onto our model (asr/whisper.py) one to one except the fused projections:
self-attention `linear_0` is q|k|v stacked on the output dim ([3D, D]) and cross-attention `linear_1` is k|v
([2D, D]); both are split here. CTranslate2 stores a k bias slot that is all zeros (Whisper's k has no bias).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import torch

from .whisper import WhisperDims

# CTranslate2's dtype ids (model_spec._dtype_to_type_id)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


class CT2FormatError(ValueError):
    pass


def read_model_bin(path: str | Path) -> tuple[str, int, dict[str, np.ndarray]]:
    """(spec name, spec revision, {variable name: array}); aliases resolve to the same array object."""
    data = memoryview(Path(path).read_bytes())
    off = 0

    def take(fmt: str):
        nonlocal off
        vals = struct.unpack_from("<" + fmt, data, off)
        off += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def string() -> str:
        nonlocal off
        n = take("H")
        s = bytes(data[off:off + n - 1]).decode("utf-8")
        off += n
        return s

    version = take("I")
    if version != 6:
        raise CT2FormatError(f"{path}: CTranslate2 binary version {version}, expected 6")
    spec, revision = string(), take("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        rank = take("B")
        shape = [take("I") for _ in range(rank)]
        dtype_id, nbytes = take("B"), take("I")
        raw = data[off:off + nbytes]
        off += nbytes
        dt = _DTYPES.get(dtype_id)
        if dt is None:
            raise CT2FormatError(f"{path}: variable {name} has unknown dtype id {dtype_id}")
        if dt == "bfloat16":  # numpy has no bfloat16: widen via the upper 16 bits of float32
            arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dt)
        variables[name] = arr.reshape(shape)
    for _ in range(take("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    if off != len(data):
        raise CT2FormatError(f"{path}: {len(data) - off} trailing bytes")
    return spec, revision, variables


def _t(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True)).to(dtype)


def whisper_state_dict(variables: dict[str, np.ndarray], dtype: torch.dtype = torch.float32
                       ) -> tuple[WhisperDims, dict[str, torch.Tensor]]:
    """Map WhisperSpec variables onto asr.whisper.Whisper's parameter names (fused projections split)."""
    v = variables
    emb = v["decoder/embeddings/weight"]
    n_text_state = emb.shape[1]
    n_enc, n_dec = (1 + max(int(m[1]) for k in v if (m := re.match(rf"{part}/layer_(\d+)/", k)))
                    for part in ("encoder", "decoder"))
    dims = WhisperDims(
        n_mels=v["encoder/conv1/weight"].shape[1], n_audio_ctx=v["encoder/position_encodings/encodings"].shape[0],
        n_audio_state=v["encoder/conv1/weight"].shape[0], n_audio_head=int(v["encoder/num_heads"]),
        n_audio_layer=n_enc, n_vocab=emb.shape[0], n_text_ctx=v["decoder/position_encodings/encodings"].shape[0],
        n_text_state=n_text_state, n_text_head=int(v["decoder/num_heads"]), n_text_layer=n_dec)
    sd: dict[str, torch.Tensor] = {}

    def put(ours: str, theirs: str | np.ndarray):
        sd[ours] = _t(v[theirs] if isinstance(theirs, str) else theirs, dtype)

    def norm(ours: str, theirs: str):
        put(f"{ours}.weight", f"{theirs}/gamma")
        put(f"{ours}.bias", f"{theirs}/beta")

    def linear(ours: str, theirs: str, w=None, b=None):
        put(f"{ours}.weight", v[f"{theirs}/weight"] if w is None else w)
        bias = v.get(f"{theirs}/bias") if b is None else b
        if bias is not None:
            put(f"{ours}.bias", bias)

    def split_self(ours: str, theirs: str, d: int):
        w, b = v[f"{theirs}/linear_0/weight"], v[f"{theirs}/linear_0/bias"]  # [3D, D], [3D]
        if w.shape[0] != 3 * d:
            raise CT2FormatError(f"{theirs}/linear_0 is {w.shape}, expected fused qkv [{3 * d}, {d}]")
        if np.any(b[d:2 * d] != 0):
            raise CT2FormatError(f"{theirs}: k bias is not zero; Whisper's key projection has no bias")
        linear(f"{ours}.query", "", w[:d], b[:d])
        sd[f"{ours}.key.weight"] = _t(w[d:2 * d], dtype)
        linear(f"{ours}.value", "", w[2 * d:], b[2 * d:])
        linear(f"{ours}.out", f"{theirs}/linear_1")

    def block(ours: str, theirs: str, d: int, cross: bool):
        split_self(f"{ours}.attn", f"{theirs}/self_attention", d)
        norm(f"{ours}.attn_ln", f"{theirs}/self_attention/layer_norm")
        if cross:
            a = f"{theirs}/attention"
            linear(f"{ours}.cross_attn.query", f"{a}/linear_0")
            w, b = v[f"{a}/linear_1/weight"], v[f"{a}/linear_1/bias"]  # [2D, D]: k | v
            if np.any(b[:d] != 0):
                raise CT2FormatError(f"{a}: cross-attention k bias is not zero")
            sd[f"{ours}.cross_attn.key.weight"] = _t(w[:d], dtype)
            linear(f"{ours}.cross_attn.value", "", w[d:], b[d:])
            linear(f"{ours}.cross_attn.out", f"{a}/linear_2")
            norm(f"{ours}.cross_attn_ln", f"{a}/layer_norm")
        linear(f"{ours}.mlp.0", f"{theirs}/ffn/linear_0")
        linear(f"{ours}.mlp.2", f"{theirs}/ffn/linear_1")
        norm(f"{ours}.mlp_ln", f"{theirs}/ffn/layer_norm")

    for i in (1, 2):
        put(f"encoder.conv{i}.weight", f"encoder/conv{i}/weight")
        put(f"encoder.conv{i}.bias", f"encoder/conv{i}/bias")
    put("encoder.positional_embedding", "encoder/position_encodings/encodings")
    for i in range(n_enc):
        block(f"encoder.blocks.{i}", f"encoder/layer_{i}", dims.n_audio_state, cross=False)
    norm("encoder.ln_post", "encoder/layer_norm")
    put("decoder.token_embedding.weight", "decoder/embeddings/weight")
    put("decoder.positional_embedding", "decoder/position_encodings/encodings")
    for i in range(n_dec):
        block(f"decoder.blocks.{i}", f"decoder/layer_{i}", n_text_state, cross=True)
    norm("decoder.ln", "decoder/layer_norm")
    if "decoder/projection/weight" in v and v["decoder/projection/weight"] is not emb:
        raise CT2FormatError("decoder projection is not tied to the token embedding")
    return dims, sd


def load_whisper_dir(model_dir: str | Path, dtype: torch.dtype = torch.float32):
    """(dims, state_dict, config) of a CTranslate2 Whisper directory."""
    model_dir = Path(model_dir)
    spec, revision, variables = read_model_bin(model_dir / "model.bin")
    if spec != "WhisperSpec":
        raise CT2FormatError(f"{model_dir}/model.bin holds a {spec}, not a WhisperSpec")
    if revision != 3:
        raise CT2FormatError(f"{model_dir}/model.bin: WhisperSpec revision {revision}, expected 3")
    dims, sd = whisper_state_dict(variables, dtype)
    config = json.loads((model_dir / "config.json").read_text())
    return dims, sd, config


# ---- writing (synthetic weights for baselines and round-trip tests) ----

_TYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
             np.dtype(np.float16): 4}


def write_model_bin(path: str | Path, variables: dict[str, np.ndarray], aliases: dict[str, str],
                    spec: str = "WhisperSpec", revision: int = 3) -> None:
    """Write the layout read_model_bin() reads (variables sorted by name, as CTranslate2 does)."""

    def string(s: str) -> bytes:
        b = s.encode("utf-8")
        return struct.pack("<H", len(b) + 1) + b + b"\0"

    with open(path, "wb") as f:
        f.write(struct.pack("<I", 6) + string(spec) + struct.pack("<I", revision))
        f.write(struct.pack("<I", len(variables)))
        for name in sorted(variables):
            a = np.array(variables[name], order="C")  # (ascontiguousarray would make scalars 1-d)
            f.write(string(name) + struct.pack("<B", a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape))
            f.write(struct.pack("<BI", _TYPE_IDS[a.dtype], a.nbytes) + a.tobytes())
        f.write(struct.pack("<I", len(aliases)))
        for alias, target in aliases.items():
            f.write(string(alias) + string(target))


def whisper_variables(model, dtype=np.float16) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The inverse of whisper_state_dict(): our parameters -> WhisperSpec variables (q|k|v fused again)."""
    sd = {k: p.detach().float().cpu().numpy().astype(dtype) for k, p in model.state_dict().items()}
    dims = model.dims
    v: dict[str, np.ndarray] = {}

    def norm(theirs, ours):
        v[f"{theirs}/gamma"], v[f"{theirs}/beta"] = sd[f"{ours}.weight"], sd[f"{ours}.bias"]

    def linear(theirs, ours):
        v[f"{theirs}/weight"], v[f"{theirs}/bias"] = sd[f"{ours}.weight"], sd[f"{ours}.bias"]

    def block(theirs, ours, d, cross):
        a = f"{ours}.attn"
        v[f"{theirs}/self_attention/linear_0/weight"] = np.concatenate(
            [sd[f"{a}.query.weight"], sd[f"{a}.key.weight"], sd[f"{a}.value.weight"]])
        v[f"{theirs}/self_attention/linear_0/bias"] = np.concatenate(
            [sd[f"{a}.query.bias"], np.zeros(d, dtype), sd[f"{a}.value.bias"]])
        linear(f"{theirs}/self_attention/linear_1", f"{a}.out")
        norm(f"{theirs}/self_attention/layer_norm", f"{ours}.attn_ln")
        if cross:
            c = f"{ours}.cross_attn"
            linear(f"{theirs}/attention/linear_0", f"{c}.query")
            v[f"{theirs}/attention/linear_1/weight"] = np.concatenate([sd[f"{c}.key.weight"], sd[f"{c}.value.weight"]])
            v[f"{theirs}/attention/linear_1/bias"] = np.concatenate([np.zeros(d, dtype), sd[f"{c}.value.bias"]])
            linear(f"{theirs}/attention/linear_2", f"{c}.out")
            norm(f"{theirs}/attention/layer_norm", f"{ours}.cross_attn_ln")
        linear(f"{theirs}/ffn/linear_0", f"{ours}.mlp.0")
        linear(f"{theirs}/ffn/linear_1", f"{ours}.mlp.2")
        norm(f"{theirs}/ffn/layer_norm", f"{ours}.mlp_ln")

    for i in (1, 2):
        linear(f"encoder/conv{i}", f"encoder.conv{i}")
    v["encoder/position_encodings/encodings"] = sd["encoder.positional_embedding"]
    for i in range(dims.n_audio_layer):
        block(f"encoder/layer_{i}", f"encoder.blocks.{i}", dims.n_audio_state, cross=False)
    norm("encoder/layer_norm", "encoder.ln_post")
    v["decoder/embeddings/weight"] = sd["decoder.token_embedding.weight"]
    v["decoder/position_encodings/encodings"] = sd["decoder.positional_embedding"]
    for i in range(dims.n_text_layer):
        block(f"decoder/layer_{i}", f"decoder.blocks.{i}", dims.n_text_state, cross=True)
    norm("decoder/layer_norm", "decoder.ln")
    # the spec's constants, as the converter writes them for Whisper (GELU = activation 3, pre-norm)
    scalars = {"decoder/activation": np.int8(3), "decoder/alibi": np.int8(0), "decoder/alignment_heads": np.int16(1),
               "decoder/alignment_layer": np.int16(-1), "decoder/num_heads": np.int16(dims.n_text_head),
               "decoder/pre_norm": np.int8(1), "decoder/scale_embeddings": np.int8(0),
               "decoder/start_from_zero_embedding": np.int8(0), "encoder/num_heads": np.int16(dims.n_audio_head)}
    v.update({k: np.asarray(x) for k, x in scalars.items()})
    return v, {"decoder/projection/weight": "decoder/embeddings/weight"}


def save_whisper_dir(model, out_dir: str | Path, tokenizer_dir: str | Path, dtype=np.float16) -> Path:
    """A CTranslate2 Whisper directory (model.bin + the tokenizer files of tokenizer_dir) for `model`."""
    import shutil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    variables, aliases = whisper_variables(model, dtype)
    write_model_bin(out / "model.bin", variables, aliases)
    for f in ("config.json", "vocabulary.txt", "tokenizer.json"):
        if (Path(tokenizer_dir) / f).exists():
            shutil.copy(Path(tokenizer_dir) / f, out / f)
    return out
