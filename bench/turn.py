"""CPU turn benchmark: real dev clips spoken in real time into multi-turn sessions of the embedded default.

Measures voice-to-voice latency (end of speech -> first reply audio handed to the transport) and per-stage
times, for Quickturn as configured and for a baseline in the same run: the whole history re-prefilled every turn
and the reply synthesized only after the LLM has finished. Writes bench/results/cpu_turn.json.

    python bench/turn.py [--clips 16] [--turns-per-session 4]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.common import percentile, result_header, write_result  # noqa: E402
from agent.audio import load_audio  # noqa: E402
from agent.config import Config  # noqa: E402
from agent.offline import converse  # noqa: E402
from agent.runtime import Runtime  # noqa: E402
from agent.trace import STAGES  # noqa: E402

SPEECH = REPO.parent / "shared" / "speech"


def dev_clips(n: int) -> list[tuple[str, str]]:
    from speechdata import dev_set

    rows = [r for r in dev_set() if 1.0 <= float(r["duration_s"]) <= 8.0]
    return [(r["file"], r["reference"]) for r in rows[:n]]


def run_config(rt: Runtime, clips, per_session: int, label: str) -> dict:
    turns = []
    for i in range(0, len(clips), per_session):
        group = clips[i:i + per_session]
        conv = asyncio.run(converse(rt, [load_audio(SPEECH / f) for f, _ in group], gap_s=1.0))
        for t in conv.turns:
            if t.latency and t.latency.v2v_ms is not None:
                turns.append({"v2v_ms": t.latency.v2v_ms, "ms": t.latency.ms,
                              "prefill_tokens": t.latency.info.get("prefill_tokens"),
                              "transcript": t.transcript, "reply": t.reply})
        asyncio.run(conv.session.close())
        print(f"  [{label}] {len(turns)} turns, last v2v {turns[-1]['v2v_ms']:.0f} ms" if turns else "", flush=True)
    v2v = [t["v2v_ms"] for t in turns]
    stages = {s: percentile([t["ms"][s] for t in turns if s in t["ms"]], 50) for s in STAGES if s != "speech_end"}
    return {"turns": len(turns), "v2v_p50_ms": percentile(v2v, 50), "v2v_p95_ms": percentile(v2v, 95),
            "stage_p50_ms": stages,
            "prefill_tokens_p50": percentile([t["prefill_tokens"] or 0 for t in turns], 50),
            "per_turn": turns}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--turns-per-session", type=int, default=4)
    ap.add_argument("--config", default="cpu")
    args = ap.parse_args()
    cfg = Config.load(args.config)
    rt = Runtime.load(cfg)
    rt.warmup()
    clips = dev_clips(args.clips)
    print(f"{len(clips)} clips, sessions of {args.turns_per_session} turns, real time")

    quick = run_config(rt, clips, args.turns_per_session, "quickturn")
    cfg.pipeline.reuse_kv, cfg.pipeline.stream_tts = False, False
    base = run_config(rt, clips, args.turns_per_session, "baseline")
    cfg.pipeline.reuse_kv, cfg.pipeline.stream_tts = True, True

    out = result_header(config=cfg.source, models={"asr": cfg.asr.model, "llm": cfg.llm.model, "tts": cfg.tts.voice},
                        endpoint_silence_ms=cfg.turn.endpoint_silence_ms, startup_s=rt.startup_s)
    out["metrics"] = {k: v for k, v in quick.items() if k != "per_turn"}
    out["baseline"] = {"description": "whole history re-prefilled every turn; reply synthesized after the LLM "
                                      "finished", **{k: v for k, v in base.items() if k != "per_turn"}}
    out["per_turn"] = {"quickturn": quick["per_turn"], "baseline": base["per_turn"]}
    path = write_result("cpu_turn.json", out)
    print(f"v2v p50 {quick['v2v_p50_ms']:.0f} ms, p95 {quick['v2v_p95_ms']:.0f} ms | baseline p50 "
          f"{base['v2v_p50_ms']:.0f} ms -> {path}")
    rt.close()


if __name__ == "__main__":
    main()
