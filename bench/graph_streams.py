"""Do CUDA graphs captured on one stream share state? A GPU check of why the server hung under load (issue 7).

torch keys the cuBLAS workspace by (handle, stream) and a CUDA graph keeps the workspace pointer of the stream it
was captured on; `torch.cuda.graph` without `stream=` captures on one default stream per process. So two
components whose graphs were both captured there (the LLM's decode graphs and the ASR's, before the eleventh
session) share one workspace. Each scenario runs in a child process with a time limit, because the failure it
looks for can be a GPU that never finishes:

- `shared` / `separate`: graph A (GEMMs of the Llama-3.1-8B decode at batch 64) and graph B (Whisper-sized GEMMs),
  captured on the default stream or each on its own, replayed at once from two threads on their own streams for
  --seconds; every replay's outputs are compared with the graph's output replayed alone (bitwise).
- `destroyed`: graph A captured on the default stream, then a short-lived graph captured there and destroyed (what
  `llm/tune.py` did at start-up), then memory allocated and filled (it may reuse a released workspace) and A
  replayed: are A's outputs and the filler intact?

Writes bench/results/graph_streams_<gpu>.json (device, commit, date; per scenario: replays, mismatching replays,
hung or not). Usage: python3 bench/graph_streams.py [--seconds 20]

Measured on an H100 (torch 2.11, `graph_streams_h100.json`): shared, 26 % and 44 % of the two graphs' concurrent
replays wrong; separate, none; destroyed, no effect in this torch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

SHAPES_A = [(64, 4096, 6144), (64, 4096, 4096), (64, 4096, 28672), (64, 14336, 4096), (64, 4096, 128256)]
SHAPES_B = [(32, 1280, 3840), (32, 1280, 1280), (32, 1280, 5120), (32, 5120, 1280), (8, 1280, 51872)]


def child(scenario: str, seconds: float) -> dict:
    import torch

    dev = torch.device("cuda")
    cur = torch.cuda.current_stream()

    keep = []

    def build(shapes, seed):
        g = torch.Generator(device=dev).manual_seed(seed)
        xs = [torch.randn(m, k, device=dev, dtype=torch.bfloat16, generator=g) for m, k, n in shapes]
        ws = [torch.randn(k, n, device=dev, dtype=torch.bfloat16, generator=g) * k ** -0.5 for m, k, n in shapes]
        fn = lambda: [x @ w for x, w in zip(xs, ws)]  # noqa: E731
        keep.append((xs, ws))  # a graph reads its inputs where they were at capture: they must outlive it
        return fn

    def capture(fn, stream):
        warm = stream if stream is not None else torch.cuda.Stream()
        warm.wait_stream(cur)
        with torch.cuda.stream(warm):
            fn()
            fn()
        cur.wait_stream(warm)
        g = torch.cuda.CUDAGraph()
        with (torch.cuda.graph(g, stream=stream) if stream is not None else torch.cuda.graph(g)):
            outs = fn()
        torch.cuda.synchronize()
        return g, outs

    def alone(g, outs, n=20):
        """Replay alone n times -> (reference outputs, replays that differed from the first)."""
        g.replay()
        torch.cuda.synchronize()
        ref = [o.clone() for o in outs]
        bad = 0
        for _ in range(n):
            g.replay()
            torch.cuda.synchronize()
            bad += any(not torch.equal(o, r) for o, r in zip(outs, ref))
        return ref, bad

    out: dict = {"scenario": scenario}
    if scenario in ("shared", "separate"):
        streams = (None, None) if scenario == "shared" else (torch.cuda.Stream(), torch.cuda.Stream())
        graphs = [capture(build(SHAPES_A, 1), streams[0]), capture(build(SHAPES_B, 2), streams[1])]
        refs = []
        for i, (g, outs) in enumerate(graphs):
            ref, bad = alone(g, outs)
            refs.append(ref)
            out[f"alone_{'AB'[i]}_mismatches_of_20"] = bad
        res = {}

        def run(i):
            g, outs = graphs[i]
            s = torch.cuda.Stream()
            bad = torch.zeros((), dtype=torch.int64, device=dev)
            n = 0
            with torch.cuda.stream(s):
                t_end = time.monotonic() + seconds
                while time.monotonic() < t_end:
                    g.replay()
                    for o, r in zip(outs, refs[i]):
                        bad += (o != r).any()
                    n += 1
                    if n % 16 == 0:
                        s.synchronize()
                s.synchronize()
            res[i] = (n, int(bad))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(2):
            out[f"concurrent_{'AB'[i]}_replays"], out[f"concurrent_{'AB'[i]}_mismatching_replays"] = res[i]
    elif scenario == "destroyed":
        ga, outs = capture(build(SHAPES_A, 1), None)
        ref, bad = alone(ga, outs)
        out["alone_A_mismatches_of_20"] = bad
        gt, _ = capture(build(SHAPES_B, 3), None)  # the short-lived graph (llm/tune.py's timing graphs)
        gt.replay()
        torch.cuda.synchronize()
        del gt
        import gc

        gc.collect()
        torch.cuda.synchronize()
        fillers = [torch.full((1 << 20,), 7, dtype=torch.int32, device=dev) for _ in range(64)]  # 4 MiB each
        n, bad, t_end = 0, 0, time.monotonic() + seconds
        while time.monotonic() < t_end:
            ga.replay()
            torch.cuda.synchronize()
            bad += any(not torch.equal(o, r) for o, r in zip(outs, ref))
            n += 1
        out["replays"], out["mismatching_replays"] = n, bad
        out["filler_blocks_overwritten"] = int(sum(bool((f != 7).any()) for f in fillers))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--scenarios", default="separate,destroyed,shared")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.seconds)), flush=True)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import gpu_tag, result_header, write_result  # noqa: E402

    import torch

    rows = []
    for sc in args.scenarios.split(","):
        t0 = time.monotonic()
        limit = args.seconds + 90
        try:
            p = subprocess.run([sys.executable, __file__, "--child", sc, "--seconds", str(args.seconds)],
                               capture_output=True, text=True, timeout=limit)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
            row = json.loads(line[7:]) if line else {"scenario": sc, "error": (p.stderr or p.stdout)[-2000:]}
            row["hung"] = False
        except subprocess.TimeoutExpired:
            row = {"scenario": sc, "hung": True, "note": f"no result within {limit:.0f} s; the child was killed"}
        row["wall_s"] = round(time.monotonic() - t0, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    res = {**result_header(), "seconds": args.seconds, "shapes_A": SHAPES_A, "shapes_B": SHAPES_B,
           "torch": torch.__version__, "scenarios": rows}
    path = write_result(args.out or f"graph_streams_{gpu_tag()}.json", res)
    print("wrote", path)


if __name__ == "__main__":
    main()
