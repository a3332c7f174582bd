"""What a launched op costs the thread that launches it while other Python threads want the GIL.

Every PyTorch op called from Python lets go of the GIL while it dispatches and takes it back afterwards. Alone, that
costs nothing. With a busy Python thread beside it (the server's event loop, another GPU worker handing over
tokens), taking it back means waiting until that thread drops the GIL: in CPython at the latest after the switch
interval (`sys.setswitchinterval`; the server sets 0.5 ms, `[pipeline] gil_switch_ms`). A loop of many small ops, as
the torch Whisper's per-token greedy decode is (~20 ops a token, ~30 tokens a call), then pays up to one switch
interval per op. The same work captured as one CUDA graph per chunk of tokens pays it a few times a call.

This measures that on the machine it runs on, every case in the same run:
- the launching thread runs `--ops` tiny in-place ops (a one-element tensor on the GPU if there is one, else on the
  CPU), alone, and with 1 and 3 threads spinning in pure Python beside it;
- at Python's default switch interval (5 ms) and at the server's (0.5 ms);
- the baseline in each case: the same number of pure-Python calls (no GIL release) on the launching thread.

    python bench/gil_ops.py [--ops 600] [--repeats 5] [--out gil_ops_<device>.json]

Result: bench/results/gil_ops_<cpu|h100|...>.json, per case the launching thread's time per op (median of the
repeats) and per batch of `--ops` (what one ASR call's per-token loop would pay)."""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import gpu_tag, machine_probe, result_header, write_result  # noqa: E402


def spinners(n: int):
    """n threads running pure Python (holding the GIL whenever they can) until the returned stop() is called."""
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            sum(i for i in range(200))

    threads = [threading.Thread(target=spin, name=f"gil-spin-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()

    def done():
        stop.set()
        for t in threads:
            t.join()
    return done


def time_ops(x: torch.Tensor, ops: int) -> float:
    """Seconds for `ops` in-place adds on x, launched from this thread (synchronized at the end on CUDA)."""
    t = time.perf_counter()
    for _ in range(ops):
        x.add_(1)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def time_python(ops: int) -> float:
    """Seconds for `ops` calls of a small pure-Python function: the work without any GIL release."""
    def f(a):
        return a + 1

    t = time.perf_counter()
    a = 0
    for _ in range(ops):
        a = f(a)
    return time.perf_counter() - t


def measure(ops: int, repeats: int, switch_ms: list[float], background: list[int]) -> list[dict]:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.zeros(1, device=dev)
    time_ops(x, 200)  # warm the dispatcher (and the CUDA context)
    old = sys.getswitchinterval()
    rows = []
    try:
        for sw in switch_ms:
            sys.setswitchinterval(sw / 1000)
            for n in background:
                stop = spinners(n)
                try:
                    time.sleep(0.05)
                    op_s = [time_ops(x, ops) for _ in range(repeats)]
                    py_s = [time_python(ops) for _ in range(repeats)]
                finally:
                    stop()
                rows.append({"switch_ms": sw, "busy_threads": n, "device": str(dev),
                             "op_us": round(statistics.median(op_s) / ops * 1e6, 2),
                             "per_batch_ms": round(statistics.median(op_s) * 1000, 2),
                             "python_call_us": round(statistics.median(py_s) / ops * 1e6, 3),
                             "op_us_all": [round(s / ops * 1e6, 2) for s in op_s]})
                print(f"  switch {sw:g} ms, {n} busy thread(s): {rows[-1]['op_us']:8.2f} us an op,"
                      f" {rows[-1]['per_batch_ms']:8.2f} ms per {ops} ops; pure-Python call"
                      f" {rows[-1]['python_call_us']:.3f} us", flush=True)
    finally:
        sys.setswitchinterval(old)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=600, help="ops per batch (~20 a token x ~30 tokens: one ASR call)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--switch-ms", default="5,0.5,0.1")
    ap.add_argument("--busy-threads", default="0,1,3")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = measure(args.ops, args.repeats, [float(s) for s in args.switch_ms.split(",")],
                   [int(n) for n in args.busy_threads.split(",")])
    alone = {r["switch_ms"]: r["op_us"] for r in rows if r["busy_threads"] == 0}
    for r in rows:  # the baseline, measured in the same run: the same ops with no busy thread beside them
        r["vs_alone"] = round(r["op_us"] / alone[r["switch_ms"]], 1) if alone.get(r["switch_ms"]) else None
    res = result_header(machine=machine_probe(), ops=args.ops, repeats=args.repeats, rows=rows)
    path = write_result(args.out or f"gil_ops_{gpu_tag()}.json", res)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
