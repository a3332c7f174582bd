"""Load a Piper voice (.onnx + .onnx.json) into tts/vits.py, declaratively from the ONNX initializers.

Facts about the export (shared/MODELS.md): most initializers keep their VITS names; `sid` [256, 192] is the
text embedding; the flow WaveNet convolutions' weights are anonymous `onnx::Conv_*` with weight norm folded in,
named by the Conv node that consumes them (`/flow/flows.6/enc/in_layers.0/Conv`); the duration predictor's first
affine flow stores exp(-logs) as the constant `/dp/flows.0/Exp_output_0`. Everything else is a small graph
constant (shapes, scalars). `load_state` raises on anything unexpected in either direction.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tts.vits import Vits, VitsConfig

_CONSUMER = re.compile(r"^/(flow/flows\.\d+/enc/(?:in_layers|res_skip_layers)\.\d+)/Conv$")


@dataclass
class VoiceFiles:
    onnx: Path
    config: Path

    @classmethod
    def find(cls, voice: str | Path) -> "VoiceFiles":
        """A voice directory (one *.onnx inside) or the .onnx file itself."""
        voice = Path(voice)
        if voice.is_dir():
            onnx_files = sorted(voice.glob("*.onnx"))
            if len(onnx_files) != 1:
                raise FileNotFoundError(f"expected one .onnx voice in {voice}, found {onnx_files}")
            voice = onnx_files[0]
        return cls(voice, voice.with_name(voice.name + ".json"))

    def json(self) -> dict:
        return json.loads(self.config.read_text())


def config_from_json(cfg: dict) -> VitsConfig:
    """The medium-quality Piper architecture (the only one checked here) with the voice's vocabulary and rate."""
    if cfg.get("audio", {}).get("quality", "medium") != "medium":
        raise ValueError("only Piper 'medium' voices are mapped (ResBlock 2, upsampling 8,8,4)")
    return VitsConfig(n_vocab=int(cfg.get("num_symbols", 256)), sample_rate=int(cfg["audio"]["sample_rate"]))


def onnx_state(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """-> (VITS-named weights, names of the initializers that are graph constants, not weights)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    consumer = {}
    for node in model.graph.node:
        for name in node.input:
            consumer.setdefault(name, node.name)
    state, constants = {}, []
    for init in model.graph.initializer:
        name, arr = init.name, numpy_helper.to_array(init)
        if name == "sid":
            state["enc_p.emb.weight"] = arr
        elif name.startswith("onnx::Conv_") and (m := _CONSUMER.match(consumer.get(name, ""))):
            state[m.group(1).replace("/", ".") + ".weight"] = arr
        elif name == "/dp/flows.0/Exp_output_0":
            state["dp.flows.0.logs"] = -np.log(arr)  # stored as exp(-logs)
        elif re.match(r"^(enc_p|dp|flow|dec)\.", name):
            state[name] = arr
        elif arr.size <= 8:
            constants.append(name)
        else:
            raise ValueError(f"unexpected initializer {name} {arr.shape} (consumed by {consumer.get(name)})")
    return state, constants


def load_state(model: Vits, state: dict[str, np.ndarray]) -> None:
    """Copy every tensor; raise if a model tensor is missing, a name is unknown, or a shape differs."""
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unknown or missing:
        raise KeyError(f"unknown weights {unknown[:8]}; missing weights {missing[:8]}")
    for name, arr in state.items():
        if tuple(own[name].shape) != arr.shape:
            raise ValueError(f"{name}: model {tuple(own[name].shape)} vs file {arr.shape}")
        own[name].copy_(torch.from_numpy(np.array(arr, dtype=np.float32)))


def load_piper_vits(voice: str | Path) -> tuple[Vits, dict]:
    """-> (fp32 CPU model in eval mode, voice JSON)."""
    files = VoiceFiles.find(voice)
    cfg = files.json()
    model = Vits(config_from_json(cfg)).eval()
    state, _ = onnx_state(files.onnx)
    with torch.no_grad():
        load_state(model, state)
    return model, cfg


def synthetic_vits(config: VitsConfig | None = None, seed: int = 0) -> Vits:
    """Random weights with the real shapes, scaled so synthesis behaves like a trained voice in the ways that
    matter for latency (finite values; durations of a few frames per phoneme; bounded audio)."""
    model = Vits(config or VitsConfig()).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".gamma",)):
                p.fill_(1.0)
            elif name.endswith((".beta", ".bias")):
                p.zero_()
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) / max(fan_in, 1) ** 0.5)
        model.enc_p.emb.weight.mul_(model.config.hidden ** -0.5 * 3)
        model.dp.proj.weight.mul_(0.1)
        # log-duration ~ 1.6 (=> about 5 frames per id) from the final affine flow
        model.dp.flows["0"].m.copy_(torch.tensor([[-1.6], [0.0]]))
        model.dp.flows["0"].logs.zero_()
        for k in model.config.dp_flows:
            model.dp.flows[k].proj.weight.mul_(0.01)
    return model
