"""The host side of many callers' decode, without a GPU: what a first phrase waits for while other replies play.

N callers share one LLM worker (agent/worker.py PriorityWorker) and one engine (llm/engine.py, a tiny model with
synthetic weights on the CPU), driven exactly as agent/session.py drives them: one worker item per token,
`next(generator)` with the engine's `token_ready` probe, the first phrase urgent, the rest paced by a simulated
playback clock (`paced_deadline`, 4 tokens of speech a second). Each decode step also sleeps `--step-ms` with the GIL
released, standing for the GPU's step time (an 8B step on the H100 is ~6 ms for 1 to 64 rows) — so what this
measures is the host's share: the worker items, the futures, the event loop's wake-ups and its per-token work.

Compared in the same process, alternating: `edf` with the engine's run-ahead 1 (the default: ready tokens first,
a step only includes generations whose consumer took its last token) and `deadline` with run-ahead 32 (deadlines
first; generations keep stepping while their consumers lag). Per policy: ms per first-phrase token (p50/p95), the
first phrase (9 tokens), the paced tokens handed over after their audio ran out (underruns), decode steps and rows.

    python bench/handover.py [--callers 64] [--seconds 20] [--step-ms 6] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from agent.worker import Priority, PriorityWorker, paced_deadline  # noqa: E402
from bench.common import percentile, result_header, write_result  # noqa: E402
from llm.config import tiny  # noqa: E402
from llm.engine import RUN_AHEAD, Engine  # noqa: E402
from llm.llama import Llama  # noqa: E402
from llm.weights import init_synthetic  # noqa: E402

FIRST_PHRASE = 9  # tokens of "Sure, let me check that for you."
REPLY = 42  # tokens of the benchmark's scripted reply
TOKEN_S = 0.25  # speech per token (4 tokens a second)


def make_engine(step_s: float) -> Engine:
    torch.manual_seed(0)
    model = init_synthetic(Llama(tiny(vocab_size=97)), seed=1).eval()
    eng = Engine(model, num_pages=4096, page_size=16, max_batch=128)
    decode = eng._decode

    def gpu_step(reqs):  # the GPU's time for the step: the host thread waits with the GIL released
        eng.rows += len(reqs)
        time.sleep(step_s)
        return decode(reqs)

    eng.rows = 0
    eng._decode = gpu_step
    return eng


async def caller(k: int, pool: PriorityWorker, eng: Engine, stop: float, rng: random.Random, out: dict) -> None:
    s = await pool.run(Priority.URGENT, eng.new_session)
    await pool.run(Priority.URGENT, s.append, [rng.randrange(97) for _ in range(20)])
    await asyncio.sleep(rng.uniform(0, 3.0))  # callers start their turns at different moments
    while time.monotonic() < stop:
        n_prompt = s.n_tokens
        gen = await pool.run(Priority.URGENT, s.generate, REPLY)
        t0 = time.monotonic()
        playback_end = t0
        sent = 0  # tokens whose audio was "sent" (the first phrase at once, then each paced token)
        for i in range(REPLY):
            urgent = i < FIRST_PHRASE
            now = time.monotonic()
            if urgent:
                due, prio = now + 0.1, Priority.URGENT
            else:
                due, prio = paced_deadline(now, playback_end, i - sent), Priority.PACED
            t_ask = time.monotonic()
            tok = await pool.run(prio, next, gen, None, deadline=due, ready=lambda: bool(s._request and s._request.out))
            t_got = time.monotonic()
            if tok is None:
                break
            sum(ord(c) for c in f"{tok}:{i}:{k}" * 8)  # the session's per-token work (text, phrase, events)
            if urgent:
                out["token_ms"].append((t_got - t_ask) * 1000)
            elif t_got > playback_end:  # this token's audio was due before it existed
                out["underruns"] += 1
            if i == FIRST_PHRASE - 1:
                out["first_phrase_ms"].append((t_got - t0) * 1000)
                playback_end, sent = t_got + FIRST_PHRASE * TOKEN_S, FIRST_PHRASE
            elif not urgent:
                playback_end, sent = max(playback_end, t_got) + TOKEN_S, i + 1
        await pool.run(Priority.URGENT, gen.close)
        await pool.run(Priority.URGENT, s.truncate, n_prompt)
        out["replies"] += 1
        await asyncio.sleep(max(0.0, playback_end - time.monotonic()) + rng.uniform(1.0, 3.0))  # listens, speaks
    await pool.run(Priority.URGENT, s.free)


async def run(policy: str, callers: int, seconds: float, step_s: float, seed: int) -> dict:
    eng = make_engine(step_s)
    eng.run_ahead = RUN_AHEAD if policy == "deadline" else 1  # as Runtime.set_scheduler does
    pool = PriorityWorker(f"handover-{policy}", policy=policy)
    out = {"token_ms": [], "first_phrase_ms": [], "underruns": 0, "replies": 0}
    rng = random.Random(seed)
    stop = time.monotonic() + seconds
    t0 = time.monotonic()
    await asyncio.gather(*(caller(k, pool, eng, stop, random.Random(rng.random()), out) for k in range(callers)))
    wall = time.monotonic() - t0
    stats = pool.label_stats()
    pool.shutdown()
    steps = eng.n_eager_steps + eng.n_graph_steps
    tok, fp = out["token_ms"], out["first_phrase_ms"]
    return {"policy": policy, "run_ahead": eng.run_ahead, "wall_s": round(wall, 1), "replies": out["replies"],
            "first_phrase_token_ms_p50": round(statistics.median(tok), 2),
            "first_phrase_token_ms_p95": round(percentile(tok, 95), 2),
            "first_phrase_ms_p50": round(statistics.median(fp), 1), "first_phrase_ms_p95": round(percentile(fp, 95), 1),
            "underruns": out["underruns"], "decode_steps": steps, "rows_per_step": round(eng.rows / max(1, steps), 1),
            "worker_items": stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--callers", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--step-ms", type=float, default=6.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--gil-switch-ms", type=float, default=0.5, help="as configs/gpu-bench.toml")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    sys.setswitchinterval(args.gil_switch_ms / 1000)
    runs = []
    for r in range(args.repeats):
        for policy in (("edf", "deadline") if r % 2 == 0 else ("deadline", "edf")):
            res = asyncio.run(run(policy, args.callers, args.seconds, args.step_ms / 1000, seed=r))
            runs.append(res)
            print(f"  {policy:8s} first-phrase token p50/p95 {res['first_phrase_token_ms_p50']}/"
                  f"{res['first_phrase_token_ms_p95']} ms, first phrase p50/p95 {res['first_phrase_ms_p50']}/"
                  f"{res['first_phrase_ms_p95']} ms, underruns {res['underruns']}, replies {res['replies']}, "
                  f"{res['rows_per_step']} rows/step over {res['decode_steps']} steps", flush=True)

    def ratio(key: str) -> float:
        a = [x[key] for x in runs if x["policy"] == "edf"]
        b = [x[key] for x in runs if x["policy"] == "deadline"]
        return round(statistics.mean(a) / statistics.mean(b), 2)

    payload = {**result_header(), "callers": args.callers, "seconds": args.seconds, "step_ms": args.step_ms,
               "gil_switch_ms": args.gil_switch_ms, "first_phrase_tokens": FIRST_PHRASE, "reply_tokens": REPLY,
               "metrics": {"first_phrase_p50_edf_over_deadline": ratio("first_phrase_ms_p50"),
                           "first_phrase_p95_edf_over_deadline": ratio("first_phrase_ms_p95"),
                           "underruns_edf": sum(x["underruns"] for x in runs if x["policy"] == "edf"),
                           "underruns_deadline": sum(x["underruns"] for x in runs if x["policy"] == "deadline")},
               "runs": runs}
    path = write_result(args.out or "handover_cpu.json", payload)
    print(f"wrote {path}: {payload['metrics']}")


if __name__ == "__main__":
    main()
