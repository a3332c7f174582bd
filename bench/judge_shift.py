"""Offline: does averaging the audio judge over a few ms of trailing-silence offsets separate turn ends from
mid-sentence pauses better than one verdict? Reads a records file of bench/pause_judge.py run with fine
--silences (the judge's P with the window ending s after the VAD's speech end), writes the AUC and the sure / unsure
shares of each way of reading it.

  python bench/pause_judge.py --config cpu --gaps 3 --out judge_shift_cpu.json \\
      --silences 0.016,0.02,0.024,0.028,0.032,0.036,0.04,0.044,0.048,0.056,0.064
  python bench/judge_shift.py bench/results/judge_shift_cpu.json"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import result_header, write_result  # noqa: E402


def auc(pos, neg) -> float:
    """P(a turn end scores above a spliced pause), ties half."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def logit(p):
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def main(path: str) -> None:
    d = json.loads(Path(path).read_text())
    offs = [str(s) for s in d["silences_s"]]  # the records' p_audio keys
    recs = [r for r in d["records"] if all(o in r["p_audio"] for o in offs)]  # every pause is longer than 64 ms
    m = {k: np.array([[r["p_audio"][o] for o in offs] for r in recs if r["kind"] == k])
         for k in ("end", "end_spliced", "splice")}
    ends, splices = np.concatenate([m["end"], m["end_spliced"]]), m["splice"]
    at = {float(o): i for i, o in enumerate(offs)}
    ways = {"one verdict at 32 ms": [at[0.032]], "one verdict at 64 ms": [at[0.064]],
            "mean of 16, 20, 24, 28, 32 ms": [at[x] for x in (0.016, 0.02, 0.024, 0.028, 0.032)],
            "mean of 20, 24, 28, 32 ms": [at[x] for x in (0.02, 0.024, 0.028, 0.032)],
            "mean of every offset 16-64 ms": list(range(len(offs)))}
    hi, lo = logit(0.95), logit(0.3)
    rows = {}
    for name, idx in ways.items():
        e, s, plain = (logit(x[:, idx]).mean(1) for x in (ends, splices, m["end"]))
        rows[name] = {"auc_all_ends": round(auc(e, s), 3), "auc_plain_ends": round(auc(plain, s), 3),
                      "ends_sure": round(float(np.mean(e >= hi)), 3), "splices_sure": round(float(np.mean(s >= hi)), 3),
                      "ends_low": round(float(np.mean(e <= lo)), 3)}
        print(f"{name:32} {rows[name]}")
    first = np.concatenate([ends, splices])[:, ways["mean of 16, 20, 24, 28, 32 ms"]]
    spread = first.max(1) - first.min(1)
    out = result_header(records=path, counts={k: len(v) for k, v in m.items()}, offsets_s=d["silences_s"],
                        note="mean of logits; sure: P >= 0.95, low: P <= 0.3 (the configs' judge_p_high, judge_p_low)")
    out["ways"] = rows
    out["p_range_over_16_32ms"] = {"mean": round(float(spread.mean()), 3),
                                   "median": round(float(np.median(spread)), 3), "max": round(float(spread.max()), 3)}
    print(out["p_range_over_16_32ms"])
    print("->", write_result("judge_shift_report_cpu.json", out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/judge_shift_cpu.json")
