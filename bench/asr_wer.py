"""WER of the torch Whisper vs faster-whisper on the same CTranslate2 weights (tiny.en, base), CPU, one run.

Both decode the same way: greedy (beam 1), temperature 0 with no fallback, no timestamps, no previous-text
conditioning, no VAD (the model alone is compared). faster-whisper runs twice: compute_type float32 (the
like-for-like reference: `wer_faster_whisper`) and int8 (what asr/fw.py ships). The torch model runs fp32 with
the encoder fed (a) 30 s of zero-padded features, like faster-whisper (`wer_torch`) and (b) only the
utterance's frames + 1 s of zero frames, rounded up to 1 s (`wer_torch_trunc`), plus (c) the streaming path
(partials every `--interval` s, final = 30 s window + forced committed prefix + last increment).
Clips: tests/conftest.py dev_set() (references from the source, not from an ASR). Normaliser: asr/wer.py.

    python bench/asr_wer.py [--models tiny.en base] [--interval 0.5] [--stream-windows pad30 trunc]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.audio import load_audio  # noqa: E402
from agent.models import require  # noqa: E402
from asr.torch_backend import TorchWhisperASR  # noqa: E402
from asr.wer import wer  # noqa: E402
from bench.common import RESULTS, result_header, write_result  # noqa: E402


def dev_rows():
    spec = importlib.util.spec_from_file_location("qt_conftest", REPO / "tests" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.SPEECH, mod.dev_set()


def fw_transcribe(model, audio, language):
    segs, _ = model.transcribe(audio, beam_size=1, temperature=0.0, without_timestamps=True,
                               condition_on_previous_text=False, vad_filter=False, language=language)
    return " ".join(s.text.strip() for s in segs).strip()


def stream_final(asr: TorchWhisperASR, audio: np.ndarray, interval: float) -> tuple[str, int]:
    """Feed `interval`-s chunks (a partial after each), then finish: (final text, tokens decoded at the end)."""
    s = asr.stream()
    step = int(interval * asr.sample_rate)
    for i in range(0, len(audio), step):
        s.feed(audio[i:i + step])
    return s.finish().text, s.final_increment


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    ap.add_argument("--interval", type=float, default=0.5, help="partial interval for the streaming WER")
    ap.add_argument("--stream-windows", nargs="*", default=["pad30"],
                    help="encoder windows for the partials of the streaming WER (none: skip streaming)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=["fw_float32", "fw_int8", "torch_pad30", "torch_trunc"],
                    help="a model's WER entry needs fw_float32 and torch_pad30; without them only streaming runs")
    ap.add_argument("--merge", action="store_true", help="keep entries of models not run from the existing file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from faster_whisper import WhisperModel

    speech, rows = dev_rows()
    audios = [load_audio(speech / r["file"]) for r in rows]
    refs = [r["reference"] for r in rows]
    seconds = sum(len(a) for a in audios) / 16000
    result = result_header(
        clips=len(rows), audio_s=round(seconds, 1), threads=args.threads,
        decoding="greedy, temperature 0 (no fallback), no timestamps, no VAD, condition_on_previous_text=False",
        faster_whisper="faster-whisper %s / ctranslate2 %s, CPU" % (
            __import__("faster_whisper").__version__, __import__("ctranslate2").__version__),
        torch_backend="asr.torch_backend.TorchWhisperASR, CPU fp32")
    for name in args.models:
        mdir = require(f"whisper-{name}")
        entry: dict = {}
        hyps: dict[str, list[str]] = {}
        times: dict[str, float] = {}
        for ct in [v[3:] for v in args.variants if v.startswith("fw_")]:
            m = WhisperModel(str(mdir), device="cpu", compute_type=ct, cpu_threads=args.threads)
            lang = "en" if m.model.is_multilingual else None
            fw_transcribe(m, audios[0], lang)  # warm-up
            t = time.perf_counter()
            hyps[f"fw_{ct}"] = [fw_transcribe(m, a, lang) for a in audios]
            times[f"fw_{ct}"] = time.perf_counter() - t
            del m
        for window in [v[6:] for v in args.variants if v.startswith("torch_")]:
            asr = TorchWhisperASR(mdir, device="cpu", window=window, energy_floor_dbfs=-200.0)  # no gate: model only
            asr.recognize([audios[0]])  # warm-up
            t = time.perf_counter()
            hyps[f"torch_{window}"] = [asr.text(asr.recognize([a])[0]) for a in audios]
            times[f"torch_{window}"] = time.perf_counter() - t
        streams = {}
        for window in args.stream_windows:
            asr = TorchWhisperASR(mdir, device="cpu", window=window, final_window="pad30",
                                  partial_interval_s=args.interval)
            t = time.perf_counter()
            runs = [stream_final(asr, a, args.interval) for a in audios]
            times[f"torch_stream_{window}"] = time.perf_counter() - t
            hyps[f"torch_stream_{window}"] = [r[0] for r in runs]
            streams[window] = [r[1] for r in runs]
        w = {k: wer(refs, v) for k, v in hyps.items()}
        sentry = {}
        for window, incs in streams.items():
            sentry[f"wer_torch_stream_{window}"] = round(w[f"torch_stream_{window}"], 4)
            sentry[f"final_increment_tokens_{window}"] = {"mean": round(float(np.mean(incs)), 2),
                                                          "p50": float(np.median(incs)), "max": int(max(incs))}
        if streams:
            sentry.update(commit=result["commit"], date=result["date"], interval_s=args.interval,
                          how=("partials every interval_s of audio with the encoder window named in the key; "
                               "final with the 30 s window: forced committed prefix + last increment"),
                          rtf={k: round(v / seconds, 4) for k, v in times.items() if "stream" in k})
            result.setdefault("streaming", {})[name] = sentry
            print(name, "streaming", sentry, flush=True)
        if "fw_float32" not in w or "torch_pad30" not in w:
            continue
        entry = {"commit": result["commit"], "date": result["date"],
                 "wer_torch": round(w["torch_pad30"], 4),
                 "wer_faster_whisper": round(w["fw_float32"], 4),
                 "faster_whisper_compute_type": "float32",
                 "diff_pp": round(100 * (w["torch_pad30"] - w["fw_float32"]), 2),
                 "clips_identical_to_faster_whisper": sum(a == b for a, b in zip(hyps["torch_pad30"],
                                                                                   hyps["fw_float32"]))}
        if "fw_int8" in w:
            entry["wer_faster_whisper_int8"] = round(w["fw_int8"], 4)
        if "torch_trunc" in w:
            entry["wer_torch_trunc"] = round(w["torch_trunc"], 4)
        entry["rtf"] = {k: round(v / seconds, 4) for k, v in times.items() if "stream" not in k}
        result[name] = entry
        print(name, entry, flush=True)
        diffs = [(r["file"], a, b) for r, a, b in zip(rows, hyps["fw_float32"], hyps["torch_pad30"]) if a != b]
        for f, a, b in diffs[:10]:
            print(f"  differs {f}\n    fw:    {a}\n    torch: {b}")
    if args.merge and (RESULTS / "asr_wer.json").exists():  # keep other models' entries (with their commits)
        old = json.loads((RESULTS / "asr_wer.json").read_text())
        for k, v in old.items():
            if isinstance(v, dict) and k not in result and "wer_torch" in v:
                v.setdefault("commit", old.get("commit"))
                v.setdefault("date", old.get("date"))
                result[k] = v
        for k, v in old.get("streaming", {}).items():
            result.setdefault("streaming", {}).setdefault(k, v)
    path = write_result("asr_wer.json", result)
    print("wrote", path)


if __name__ == "__main__":
    main()
