"""Soak: N real-time simulated callers for T minutes against a real in-process server; does anything grow?

    python bench/soak.py --sessions 4 --minutes 10            # CPU, real models, real speech
    python bench/soak.py --sessions 32 --minutes 30 --config gpu

The server (and its asyncio loop) runs in the main thread; the callers run in a second thread with their own
loop, so the server loop's task count and the watchdog measure the server alone. Each caller places calls one
after another: connect, stream a real clip from shared/speech in real time (agent/client.py's `stream_file`),
wait for the reply, hang up, next clip. Every `--interval` seconds the sampler records process RSS, CUDA memory
(allocated and reserved, when CUDA is there), live asyncio tasks of the server loop, KV pages in use and engine
sessions, live server sessions and the load average. A watchdog task sleeps 10 ms at a time and logs every
wake-up later than 50 ms (the loop was blocked).

Growth is measured after a warm-up (`--warmup`, default 120 s: allocator pools, ONNX arenas and lazy inits settle
during the first calls): mean of the samples in the first minute after warm-up -> mean over the last minute.
At the end the callers stop, the server idles for a few seconds, and what is still there is compared with the
idle baseline taken before the first call: asyncio tasks, engine sessions, free KV pages.

Writes bench/results/soak_<device>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import csv
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import gpu_tag, result_header, write_result  # noqa: E402
from bench.mem_components import mallinfo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPEECH = Path(os.environ.get("QUICKTURN_SPEECH", REPO.parent / "shared" / "speech"))
BLOCK_S = 0.05  # loop blocks longer than this are logged
TICK_S = 0.01  # watchdog period


def clips(max_s: float = 6.0) -> list[tuple[str, np.ndarray]]:
    """Mono utterances up to max_s from the shared speech set, as 16 kHz float32."""
    from agent.audio import load_audio

    with open(SPEECH / "manifest.tsv", newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t")
                if r["kind"] == "utterance" and r["channels"] == "1" and float(r["duration_s"]) <= max_s]
    return [(r["file"], load_audio(SPEECH / r["file"])) for r in rows]


def cuda_mem() -> tuple[float | None, float | None]:
    try:
        import torch

        if torch.cuda.is_available():
            return float(torch.cuda.memory_allocated()), float(torch.cuda.memory_reserved())
    except Exception:
        pass
    return None, None


class Watchdog:
    """Measures its own wake-up lateness on the server loop; every lateness > BLOCK_S is one block."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.blocks: list[dict] = []
        self.max_late_ms = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            t, cpu = time.monotonic(), time.thread_time()
            await asyncio.sleep(TICK_S)
            late = time.monotonic() - t - TICK_S
            self.max_late_ms = max(self.max_late_ms, late * 1000)
            if late > BLOCK_S:
                # loop_cpu_ms: CPU time the loop thread itself used meanwhile. Close to late_ms: code on the loop
                # blocked it; much lower: the thread was waiting (descheduled on a busy machine, or for the GIL)
                self.blocks.append({"t_s": round(t - self.t0, 2), "late_ms": round(late * 1000, 1),
                                    "loop_cpu_ms": round((time.thread_time() - cpu) * 1000, 1)})


class Callers:
    """The simulated callers, on their own event loop: in a separate process by default (as real callers are; on a
    thread of the server's process they would share its GIL, and the watchdog would count their work as server
    loop blocks), or on a thread (`in_process`)."""

    def __init__(self, url: str, n: int, audio: list[tuple[str, np.ndarray]], until: float,
                 in_process: bool = False):
        self.url, self.n, self.audio, self.until = url, n, audio, until
        self.calls = self.replies = self.failed = 0
        self.errors: dict[str, int] = {}
        self.latency_ms: list[float] = []
        self._queue = None
        if in_process:
            self.thread = threading.Thread(target=lambda: asyncio.run(self._all()), name="soak-callers",
                                           daemon=True)
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")  # never fork a process that holds CUDA
            self._queue = ctx.Queue()
            self._progress = ctx.Array("i", 2)  # calls, replies: for the progress lines
            self.thread = ctx.Process(target=_callers_process, args=(url, n, audio, until, self._queue,
                                                                     self._progress), name="soak-callers",
                                      daemon=True)

    def is_alive(self) -> bool:
        if self._queue is not None:
            self.calls, self.replies = self._progress[0], self._progress[1]
            if not self._queue.empty():
                return False
        return self.thread.is_alive()

    def join(self) -> None:
        if self._queue is not None:
            (self.calls, self.replies, self.failed, self.errors, self.latency_ms) = self._queue.get(timeout=120)
        self.thread.join(timeout=60)

    async def _caller(self, k: int) -> None:
        from agent.client import stream_file

        i = k * 7  # callers start at different clips
        await asyncio.sleep(k * 1.3)  # and at different times
        while time.monotonic() < self.until:
            name, clip = self.audio[i % len(self.audio)]
            i += 1
            self.calls += 1
            try:
                res = await stream_file(self.url, clip, tail_s=8.0)
            except Exception as e:  # a refused / dropped connection is a finding, not a crash of the soak
                self.failed += 1
                key = f"exception:{type(e).__name__}"
                self.errors[key] = self.errors.get(key, 0) + 1
                await asyncio.sleep(1.0)
                continue
            if res.of("reply_done"):
                self.replies += 1
            if getattr(self, "progress", None) is not None:
                self.progress[0], self.progress[1] = self.calls, self.replies
            if res.latency_ms is not None:
                self.latency_ms.append(res.latency_ms)
            for e in res.errors:
                self.errors[e["code"]] = self.errors.get(e["code"], 0) + 1
            await asyncio.sleep(0.5)

    async def _all(self) -> None:
        await asyncio.gather(*(self._caller(k) for k in range(self.n)))


def _callers_process(url, n, audio, until, queue, progress) -> None:
    c = Callers(url, n, audio, until, in_process=True)
    c.progress = progress
    try:
        asyncio.run(c._all())
    finally:
        queue.put((c.calls, c.replies, c.failed, c.errors, c.latency_ms))


def object_counts() -> collections.Counter:
    """Live objects tracked by the GC, by type name (a Python-level leak shows as a type that only grows). Collected
    first: otherwise unreachable cycles not yet freed (closed connections' protocol objects) count as live."""
    import gc

    gc.collect()
    return collections.Counter(type(o).__name__ for o in gc.get_objects())


def object_growth(at: dict) -> list | None:
    if "warm" not in at or "end" not in at:
        return None
    d = at["end"].copy()
    d.subtract(at["warm"])
    return [(k, at["warm"][k], at["end"][k]) for k, v in d.most_common(25) if v > 0]


def growth_pct(t: np.ndarray, v: np.ndarray, warmup_s: float, window_s: float = 60.0) -> float | None:
    """Mean over [warmup, warmup + window) -> mean over the last window, in percent of the first."""
    a = v[(t >= warmup_s) & (t < warmup_s + window_s)]
    b = v[t >= t[-1] - window_s]
    if not len(a) or not len(b) or a.mean() == 0:
        return None
    return float((b.mean() - a.mean()) / a.mean() * 100)


def slope_per_min(t: np.ndarray, v: np.ndarray, warmup_s: float) -> float | None:
    m = t >= warmup_s
    if m.sum() < 3:
        return None
    return float(np.polyfit(t[m] / 60.0, v[m], 1)[0])


async def soak(args) -> dict:
    from agent.config import Config
    from agent.runtime import Runtime
    from agent.server import start_server

    cfg = Config.load(args.config)
    cfg.llm.max_new_tokens = args.max_new_tokens
    cfg.server.max_sessions = max(cfg.server.max_sessions, args.sessions)
    if args.trim_s is not None:
        cfg.memory.trim_s = args.trim_s
    t_load = time.perf_counter()
    rt = Runtime.load(cfg)
    rt.warmup()
    load_s = time.perf_counter() - t_load
    engine = rt.llm.engine
    proc = psutil.Process()
    audio = clips()
    server, srv = await start_server(rt, "127.0.0.1", 0)
    port = list(server.sockets)[0].getsockname()[1]
    url = f"ws://127.0.0.1:{port}"

    t0 = time.monotonic()
    stop = asyncio.Event()
    dog = Watchdog(t0)
    dog_task = asyncio.create_task(dog.run(stop), name="soak-watchdog")
    await asyncio.sleep(1.0)
    loop_tasks = lambda: [t for t in asyncio.all_tasks() if not t.done()]  # noqa: E731
    base = {"tasks": len(loop_tasks()), "free_pages": engine.free_pages, "engine_sessions": len(engine.sessions),
            "task_names": sorted(t.get_name() for t in loop_tasks())}
    samples: list[dict] = []

    def sample() -> dict:
        alloc, reserved = cuda_mem()
        s = {"t_s": round(time.monotonic() - t0, 2), "rss_mb": round(proc.memory_info().rss / 2**20, 2),
             "gpu_alloc_mb": None if alloc is None else round(alloc / 2**20, 2),
             "gpu_reserved_mb": None if reserved is None else round(reserved / 2**20, 2),
             "tasks": len(loop_tasks()), "kv_pages_used": engine.pool.num_pages - engine.free_pages,
             "engine_sessions": len(engine.sessions), "live_sessions": len(srv.hub.sessions),
             "threads": threading.active_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
        if args.diag:  # glibc's view: heaps (in use + free) and mmapped chunks, MB
            s.update({k: round(v, 1) for k, v in mallinfo().items()})
        samples.append(s)
        return s

    duration = args.minutes * 60
    callers = Callers(url, args.sessions, audio, until=time.monotonic() + duration,
                      in_process=args.callers_in_process)
    callers.thread.start()  # (a thread or a process)
    print(f"soak: {args.sessions} callers x {args.minutes} min on {url}; {len(audio)} clips; "
          f"baseline {base['tasks']} tasks, {base['free_pages']} free pages", flush=True)
    next_print = 0.0
    objects_at: dict[str, collections.Counter] = {}
    while callers.is_alive():
        s = sample()
        if args.diag and "warm" not in objects_at and s["t_s"] >= args.warmup:
            objects_at["warm"] = object_counts()
        if args.diag and s["t_s"] >= duration - 2 * args.interval and "end" not in objects_at:
            objects_at["end"] = object_counts()  # still under load, as the warm-up one
        if s["t_s"] >= next_print:
            print(f"  t={s['t_s']:7.1f}s rss={s['rss_mb']:.0f}MB tasks={s['tasks']} kv_used={s['kv_pages_used']} "
                  f"live={s['live_sessions']} calls={callers.calls} replies={callers.replies} "
                  f"blocks={len(dog.blocks)} load={s['load_avg_1m']}", flush=True)
            next_print = s["t_s"] + 60
        await asyncio.sleep(args.interval)
    # callers have hung up: let the server finish closing what they left (under overload a hung-up session still
    # finishes its in-flight model calls), then idle, then compare with the idle baseline
    callers.join()
    t_stop = time.monotonic()
    while srv.hub.sessions and time.monotonic() - t_stop < args.drain:
        await asyncio.sleep(0.1)
    drain_s = time.monotonic() - t_stop
    await asyncio.sleep(args.settle)
    final = sample()
    end = {"tasks": len(loop_tasks()), "free_pages": engine.free_pages, "engine_sessions": len(engine.sessions),
           "task_names": sorted(t.get_name() for t in loop_tasks())}
    stop.set()
    await dog_task
    server.close()
    await server.wait_closed()
    rt.close()

    t = np.array([s["t_s"] for s in samples])
    rss = np.array([s["rss_mb"] for s in samples])
    warm = min(args.warmup, duration / 2)
    gpu = [s["gpu_alloc_mb"] for s in samples]
    gpu_growth = growth_pct(t, np.array(gpu), warm) if gpu[0] is not None else None
    loads = [s["load_avg_1m"] for s in samples]
    lat = callers.latency_ms
    return {
        **result_header(),
        "config": {"sessions": args.sessions, "minutes": args.minutes, "interval_s": args.interval,
                   "callers": "a thread of the server's process" if args.callers_in_process else "a separate process",
                   "warmup_s": warm, "settle_s": args.settle, "drain_limit_s": args.drain,
                   "llm_max_new_tokens": args.max_new_tokens, "trim_s": cfg.memory.trim_s,
                   "config": cfg.source, "clips": len(audio), "startup_s": round(load_s, 1)},
        "method": ("growth = mean of the samples in the first 60 s after warm-up -> mean over the last 60 s; "
                   "leaked_* = after the callers stopped, every server session closed (at most drain_limit_s) and "
                   "the server idled settle_s, compared with the idle baseline before the first call; "
                   "watchdog: 10 ms sleeps on the server loop, wake-up later than 50 ms = one block (loop_cpu_ms: "
                   "the loop thread's own CPU time meanwhile)"),
        "metrics": {
            "rss_growth_pct": None if growth_pct(t, rss, warm) is None else round(growth_pct(t, rss, warm), 3),
            "rss_slope_mb_per_min": None if slope_per_min(t, rss, warm) is None else
            round(slope_per_min(t, rss, warm), 3),
            "gpu_mem_growth_pct": None if gpu_growth is None else round(gpu_growth, 3),
            "leaked_tasks": end["tasks"] - base["tasks"],
            "drain_s": round(drain_s, 2), "sessions_left_after_drain": final["live_sessions"],
            "leaked_engine_sessions": end["engine_sessions"] - base["engine_sessions"],
            "leaked_kv_pages": base["free_pages"] - end["free_pages"],
            "loop_blocks_over_50ms": len(dog.blocks),
            "loop_max_late_ms": round(dog.max_late_ms, 1),
            # blocks where the loop thread itself ran >= half the time (code on the loop, not a busy machine)
            "loop_blocks_over_50ms_on_cpu": sum(b["loop_cpu_ms"] >= b["late_ms"] / 2 for b in dog.blocks),
            "calls": callers.calls, "replies": callers.replies, "failed_calls": callers.failed,
            "errors": callers.errors,
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if lat else None,
            "latency_ms_p90": round(float(np.percentile(lat, 90)), 1) if lat else None,
            "heap_trims": None if rt.trimmer is None else rt.trimmer.stats(),  # [memory] trim_s (agent/heap.py)
            "refused_by_server": srv.refused,  # admission control (server_busy) or the session cap (server_full)
            "live_sessions_mean": round(float(np.mean([s["live_sessions"] for s in samples])), 1),
            "live_sessions_max": max(s["live_sessions"] for s in samples),
            "max_kv_pages_used": max(s["kv_pages_used"] for s in samples),
            "rss_mb_first": float(rss[0]), "rss_mb_last": float(final["rss_mb"]),
            "load_avg_1m_mean": round(float(np.mean(loads)), 2), "load_avg_1m_max": round(float(np.max(loads)), 2),
            "cpu_count": os.cpu_count(),
        },
        "baseline": base, "end": end,
        **({"diag": {"objects_grew": object_growth(objects_at)}} if args.diag else {}),
        "loop_blocks": dog.blocks[:500],
        "samples": samples,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--warmup", type=float, default=120.0, help="seconds excluded from the growth measurement")
    p.add_argument("--drain", type=float, default=120.0, help="seconds to wait for the last sessions to close")
    p.add_argument("--settle", type=float, default=5.0, help="idle seconds after that, before the leak check")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--config", default="cpu")
    p.add_argument("--callers-in-process", action="store_true",
                   help="callers on a thread of the server's process (default: their own process)")
    p.add_argument("--trim-s", type=float, default=None,
                   help="override [memory] trim_s (0: never give freed heap memory back; agent/heap.py)")
    p.add_argument("--diag", action="store_true",
                   help="also sample glibc's malloc statistics and count live objects by type after the warm-up and "
                        "at the end (finding what grows; the two counts block the server loop briefly)")
    p.add_argument("--out", default=None, help="result file name (default soak_<device>.json)")
    args = p.parse_args(argv)
    res = asyncio.run(soak(args))
    path = write_result(args.out or f"soak_{gpu_tag()}.json", res)
    m = res["metrics"]
    print(f"wrote {path}: rss growth {m['rss_growth_pct']} %, leaked tasks {m['leaked_tasks']}, "
          f"kv pages {m['leaked_kv_pages']}, loop blocks {m['loop_blocks_over_50ms']}, "
          f"calls {m['calls']} replies {m['replies']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
