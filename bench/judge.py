"""The audio end-of-turn judge (smart-turn v3.2) on the GPU vs onnxruntime on the CPU: agreement and latency.

    python bench/judge.py            # GPU machine (QUICKTURN_HOME / QUICKTURN_SPEECH as bench/gpu_run.sh sets them)

Correctness, on real speech (dev clips whole, and cut at 60 %): P(complete) from onnxruntime (the CPU judge, the
reference the turn policy was tuned on), from the same ONNX graph in torch on the CPU, and in torch on the GPU with
CUDA graphs (agent/turn_judge.py TorchSmartTurn); the share of verdicts in the same band (>= 0.95 / between / <=
0.3) and the |P| differences. For scale: onnxruntime's own optimized vs unoptimized graphs.
Latency, measured in the same run: onnxruntime one call (judge_threads = 2, as gpu-bench.toml) vs the GPU judge for
batches of 1..16 pauses (features included: on the device since 2026-12-05; `judge_h100.json` was measured with
them on the calling thread, one after another), median of repeats.
Writes bench/results/judge_<device>.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.common import gpu_tag, result_header, write_result  # noqa: E402


def band(p: float) -> int:
    return 2 if p >= 0.95 else 0 if p <= 0.3 else 1


def compare(a, b) -> dict:
    a, b = np.asarray(a), np.asarray(b)
    d = np.abs(a - b)
    return {"band_agreement": round(float(np.mean([band(x) == band(y) for x, y in zip(a, b)])), 4),
            "abs_diff_mean": round(float(d.mean()), 5), "abs_diff_median": round(float(np.median(d)), 5),
            "abs_diff_max": round(float(d.max()), 5)}


def timed(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(ts)), 3)


def main() -> int:
    import onnxruntime as ort
    import torch
    from speechdata import SPEECH, dev_set

    from agent import models
    from agent.audio import load_audio
    from agent.turn_judge import SmartTurn, TorchSmartTurn, _onnx_file, features

    path = models.require("smart-turn-v3.2")
    cpu_ref = SmartTurn(path, threads=2)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    raw = ort.InferenceSession(str(_onnx_file(path)), so, providers=["CPUExecutionProvider"])
    torch_cpu = TorchSmartTurn(path, device="cpu", max_batch=16)
    cuda = torch.cuda.is_available()
    gpu = TorchSmartTurn(path, device="cuda", max_batch=16) if cuda else None

    clips = []
    for r in dev_set():
        if 1.0 <= float(r["duration_s"]) <= 10:
            a = load_audio(SPEECH / r["file"])
            clips += [a, a[:int(0.6 * len(a))]]
    clips = clips[:80]
    p = {"onnxruntime": [cpu_ref.p_end(c) for c in clips],
         "onnxruntime_unoptimized": [float(raw.run(None, {"input_features": features(c)[None]})[0].reshape(-1)[0])
                                     for c in clips],
         "torch_cpu": torch_cpu.p_end_batch(clips)}
    if gpu is not None:
        p["torch_gpu"] = gpu.p_end_batch(clips)
    agreement = {k: compare(v, p["onnxruntime"]) for k, v in p.items() if k != "onnxruntime"}
    if gpu is not None:
        agreement["torch_gpu_vs_torch_cpu"] = compare(p["torch_gpu"], p["torch_cpu"])
        single = [gpu.p_end(c) for c in clips[:16]]
        # one at a time vs in a batch of 16: other GEMM kernels, other summation orders (not bit-equal on the GPU)
        agreement["gpu_single_vs_batch16"] = compare(single, p["torch_gpu"][:16])

    lat = {"onnxruntime_cpu_2threads_ms": timed(lambda: cpu_ref.p_end(clips[0]), 20),
           "features_ms": timed(lambda: features(clips[0]), 20)}
    if gpu is not None:
        for b in (1, 2, 4, 8, 16):
            lat[f"gpu_batch{b}_ms"] = timed(lambda b=b: gpu.p_end_batch(clips[:b]), 30)
    res = result_header(model=str(path), clips=len(clips), agreement=agreement, latency=lat,
                        p={k: [round(x, 4) for x in v] for k, v in p.items()})
    out = write_result(f"judge_{gpu_tag()}.json", res)
    print({"agreement": agreement, "latency": lat})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
