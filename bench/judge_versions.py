"""Offline: would smart-turn v3.0 or v3.1 beside v3.2 (an ensemble of their logits) tell turn ends from mid-sentence
pauses better than v3.2 alone? The pipecat-ai wheels on PyPI ship one int8 model each: v3.0 (pipecat-ai 0.0.92),
v3.1 (0.0.98), v3.2 (1.14.0, the configured judge). Get the two older files with

  pip download --no-deps pipecat-ai==0.0.92 pipecat-ai==0.0.98 -d /tmp/pc    # then unzip
      pipecat/audio/turn/smart_turn/data/smart-turn-v3.0.onnx and .../smart-turn-v3.1-cpu.onnx

and run

  python bench/judge_versions.py --model v3.0=/tmp/pc/smart-turn-v3.0.onnx --model v3.1=/tmp/pc/smart-turn-v3.1-cpu.onnx

The pauses are bench/pause_judge.py's (the same dev clips, VAD, turn taker, word gaps, 600 ms splices; turn ends,
ends of spliced clips and splices, not the clips' own pauses), each judged by every model at 16-64 ms of silence.
Reported per model and per ensemble (mean logit): the AUC of ends against splices, the share of ends that are sure
where <= 5 % of splices are, and the configured endpoint policy replayed (bench/pause_judge.py's simulation, with
the transcript records of bench/results/pause_judge_cpu.json) on half 0, half 1 and the v2v benchmark's clips."""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.common import result_header, write_result  # noqa: E402
from bench.judge_shift import auc, logit  # noqa: E402
from bench.pause_judge import Policy, clip_streams, evaluate, judge_window, pause_kind, pauses  # noqa: E402

SILENCES = ("0.016", "0.024", "0.032", "0.048", "0.064")


def record(models: dict, gaps: int) -> list[dict]:
    from faster_whisper import WhisperModel

    from agent import models as registry
    from agent.audio import load_audio
    from agent.config import Config
    from agent.turn_judge import SmartTurn
    from agent.vad import SileroVAD, speech_bounds
    from speechdata import SPEECH, dev_set, finished

    cfg = Config.load("cpu")
    vad = SileroVAD(registry.require("silero-vad"))
    judges = {name: SmartTurn(path, threads=2) for name, path in models.items()}
    wm = WhisperModel(str(registry.require(cfg.asr.model)), device="cpu", compute_type=cfg.asr.compute_type,
                      cpu_threads=2)
    recs, t0 = [], time.time()
    for ci, r in enumerate(sorted(dev_set(), key=lambda r: r["file"])):
        audio = load_audio(SPEECH / r["file"])
        if speech_bounds(vad, audio) is None:
            continue
        for name, splice, x in clip_streams(wm, audio, r, gaps):
            ps = pauses(cfg, vad, x)
            for k, p in enumerate(ps):
                kind = pause_kind(p, k == len(ps) - 1, name, splice, finished(r))
                if kind in (None, "natural"):
                    continue
                recs.append({"file": r["file"], "half": ci % 2, "stream": name, "kind": kind,
                             "p": {m: {s: round(j.p_end(judge_window(x, p, float(s))), 4) for s in SILENCES}
                                   for m, j in judges.items()}})
        print(f"{ci} clips, {len(recs)} pauses, {time.time() - t0:.0f} s", flush=True)
    return recs


def score(rec: dict, combo: tuple, silences: tuple) -> float:
    return float(np.mean([logit(rec["p"][m][s]) for m in combo for s in silences]))


def analyse(recs: list[dict], names: list[str], base: dict) -> dict:
    ends = [r for r in recs if r["kind"] in ("end", "end_spliced")]
    plain = [r for r in recs if r["kind"] == "end"]
    splices = [r for r in recs if r["kind"] == "splice"]
    by_key = {(r["file"], r["stream"], r["kind"]): r for r in recs}
    combos = [c for n in range(1, len(names) + 1) for c in itertools.combinations(names, n)]
    out = {}
    for combo in combos:
        key = "+".join(combo)
        e = np.array([score(r, combo, ("0.032",)) for r in ends])
        p = np.array([score(r, combo, ("0.032",)) for r in plain])
        s = np.array([score(r, combo, ("0.032",)) for r in splices])
        t5 = np.sort(s)[::-1][int(0.05 * len(s))]  # the score that at most 5 % of splices exceed
        row = {"auc_all_ends": round(auc(e, s), 3), "auc_plain_ends": round(auc(p, s), 3),
               "ends_sure_at_0.95": round(float(np.mean(e >= logit(0.95))), 3),
               "splices_sure_at_0.95": round(float(np.mean(s >= logit(0.95))), 3),
               "ends_above_the_5pct_splice_line": round(float(np.mean(e > t5)), 3), "policy": {}}
        # the configured policy (configs/cpu.toml [turn]) with this score as the judge's P at 32 ms, on the
        # transcript records of pause_judge_cpu.json (same pauses), at a few judge_p_high
        sim = []
        for r in base["records"]:
            mine = by_key.get((r["file"], r["stream"], r["kind"]))
            if mine is not None:
                r = copy.deepcopy(r)
                r["p_audio"] = {"0.032": float(1 / (1 + np.exp(-score(mine, combo, ("0.032",)))))}
                sim.append(r)
        for hi in (0.9, 0.93, 0.95, 0.97):
            pol = Policy((0.032,), 0.3, hi, 0.064, 0.8, 1.0, llm=False, confirm=True, asr_end_min_p=0.4)
            row["policy"][f"judge_p_high={hi}"] = {
                h: {k: m[k] for k in ("false_cutoffs", "n_splice", "mean_endpoint_ms", "n_end")}
                for h, m in (("half0", evaluate([r for r in sim if r["half"] == 0], pol)),
                             ("half1", evaluate([r for r in sim if r["half"] == 1], pol)),
                             ("bench_clips", evaluate([r for r in sim if r.get("bench")], pol)))}
        out[key] = row
        print(key, {k: v for k, v in row.items() if k != "policy"})
        for k, v in row["policy"].items():
            print("   ", k, {h: f"{m['false_cutoffs']}/{m['n_splice']} @ {m['mean_endpoint_ms']:.0f} ms"
                             for h, m in v.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="another smart-turn ONNX")
    ap.add_argument("--gaps", type=int, default=3)
    ap.add_argument("--records", help="reuse this run's records instead of judging again")
    ap.add_argument("--out", default="judge_versions_cpu.json")
    args = ap.parse_args()
    from agent import models as registry

    models = {"v3.2": str(registry.require("smart-turn-v3.2"))}
    models.update(dict(m.split("=", 1) for m in args.model))
    if args.records:
        recs = json.loads(Path(args.records).read_text())["records"]
    else:
        recs = record(models, args.gaps)
    base = json.loads((REPO / "bench" / "results" / "pause_judge_cpu.json").read_text())
    out = result_header(models={k: Path(v).name for k, v in models.items()},
                        counts={k: sum(r["kind"] == k for r in recs) for k in ("end", "end_spliced", "splice")},
                        note="scores are mean logits at 32 ms of silence; policy: configs/cpu.toml [turn] replayed "
                             "by bench/pause_judge.py's simulation with this score as the judge's P")
    out["ways"] = analyse(recs, list(models), base)
    out["records"] = recs
    print("->", write_result(args.out, out))


if __name__ == "__main__":
    main()
