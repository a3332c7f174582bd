"""The full stack on the GPU machine, where no model file can travel (64 MiB per call): what is carried, and how
it is put back together there.

    python bench/gpu_stack.py --make-carry       # here: writes .gpu_carry/ (+ .tts_carry/ via bench/tts.py)
    python bench/gpu_stack.py --setup            # there: rebuilds $QUICKTURN_HOME from the carry

What runs there (configs/gpu-bench.toml), and what each part is:
- VAD: Silero, real weights (ONNX Runtime, CPU), carried.
- End of turn: smart-turn v3.2, real weights (ONNX, CPU), carried: the turn signal, since the LLM is synthetic.
- ASR: our torch Whisper on the GPU, SYNTHETIC weights of the `base` shape. The compute is real (mel + encoder
  over the utterance + ~1.3 greedy decoder steps per word); the text is scripted: the first N words of a fixed
  passage, N from the speech duration (asr/torch_backend.py `_scripted`), so a pause and the endpoint after it
  give the same transcript, as real ASR would.
- LLM: our engine on the GPU, SYNTHETIC weights of the Llama-3.1-8B shape, bf16, SmolLM2's tokenizer and chat
  template (carried). Replies are scripted ([llm] script_reply): every token is a full decode step, so reply
  length and phrase boundaries are fixed by the script's text.
- TTS: our torch Piper VITS on the GPU with the REAL piper-joe-medium weights (carried as fp16 initializers,
  restored to fp32 there), espeak-ng phonemization on the CPU (piper-tts's bridge, carried).
- Test audio: ../shared/speech copied into the carry (it does not travel otherwise); $QUICKTURN_SPEECH points at it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY = REPO / ".gpu_carry"
sys.path.insert(0, str(REPO))

CARRIED_MODELS = ("silero-vad", "smart-turn-v3.2")


def make_carry() -> None:
    from agent import models
    from llm.tokenizer import load_tokenizer

    if CARRY.exists():
        shutil.rmtree(CARRY)
    for name in CARRIED_MODELS:
        shutil.copytree(models.require(name), CARRY / "home" / "models" / name)
    tok = load_tokenizer(models.require("smollm2-135m-instruct"))
    tok.save_pretrained(str(CARRY / "tokenizer"))
    copy_speech(REPO.parent / "shared" / "speech", CARRY / "speech")
    if not (REPO / ".tts_carry" / "piper" / "espeakbridge.so").exists():
        subprocess.run([sys.executable, str(REPO / "bench" / "tts.py"), "--make-carry"], check=True)
    total = sum(f.stat().st_size for d in (CARRY, REPO / ".tts_carry", REPO / ".whl") if d.exists()
                for f in d.rglob("*") if f.is_file())
    print(f"carry: {total / 2**20:.1f} MiB in .gpu_carry + .tts_carry + .whl")


def copy_speech(src: Path, dst: Path, max_s: float = 10.0) -> None:
    """The utterances the benchmarks use (<= max_s), with the manifest rows for them. 16-bit PCM clips are stored
    FLAC-compressed under their own names (libsndfile, which load_audio reads with, goes by the file's header, not
    its extension): the same samples in 4.5 MB instead of 8.2, which keeps a call's carry under 64 MiB. Names stay
    as they are because the tests and benchmarks name clips by them."""
    import csv
    import hashlib

    import soundfile as sf

    with open(src / "manifest.tsv", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows = [r for r in reader if r["kind"] == "utterance" and float(r["duration_s"]) <= max_s]
        fields = reader.fieldnames
    dst.mkdir(parents=True)
    for r in rows:
        out = dst / r["file"]
        out.parent.mkdir(parents=True, exist_ok=True)
        with sf.SoundFile(str(src / r["file"])) as f:
            data = f.read(dtype="int16", always_2d=True) if f.subtype == "PCM_16" else None
            sr = f.samplerate
        if data is not None:
            sf.write(str(out), data, sr, format="FLAC", subtype="PCM_16")
            # the row describes the file as carried
            r.update(bytes=str(out.stat().st_size), format="FLAC/PCM_16",
                     sha256=hashlib.sha256(out.read_bytes()).hexdigest()[:len(r["sha256"])])
        else:
            shutil.copy(src / r["file"], out)
    with open(dst / "manifest.tsv", "w", newline="") as f:
        w = csv.DictWriter(f, fields, delimiter="\t")
        w.writeheader()
        w.writerows(rows)


def setup() -> None:
    """There: $QUICKTURN_HOME = .gpu_carry/home, with piper-joe-medium rebuilt from .tts_carry."""
    os.environ["QUICKTURN_HOME"] = str(CARRY / "home")
    import tempfile

    from agent import models
    from bench.tts import prepare_voice

    d = models.model_dir("piper-joe-medium")
    if not models.is_fetched("piper-joe-medium"):
        with tempfile.TemporaryDirectory() as tmp:
            voice = prepare_voice(Path(tmp))
            d.mkdir(parents=True, exist_ok=True)
            shutil.move(str(voice / "voice.onnx"), d / "en_US-joe-medium.onnx")
            shutil.move(str(voice / "voice.onnx.json"), d / "en_US-joe-medium.onnx.json")
        (d / ".complete").write_text("rebuilt from .tts_carry (fp16 initializers -> fp32)\n")
    for name in (*CARRIED_MODELS, "piper-joe-medium"):
        print(f"{name}: {'ok' if models.is_fetched(name) else 'MISSING'} ({models.model_dir(name)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--make-carry", action="store_true")
    ap.add_argument("--setup", action="store_true")
    args = ap.parse_args()
    if args.make_carry:
        make_carry()
    if args.setup:
        setup()


if __name__ == "__main__":
    main()
