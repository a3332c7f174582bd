"""Which CPU component's native memory grows? Each named component runs in a loop on a thread of its own (as in
the runtime: qt-asr, qt-tts, qt-judge, qt-llm), fed inputs of varied length cut from the real clips, and the
process RSS plus glibc's malloc statistics (mallinfo2) are printed every --every seconds.

    python bench/mem_components.py asr tts --seconds 120
    python bench/mem_components.py all --seconds 300 --json /tmp/mem.json

Cheaper than bench/soak.py (no server, no real-time callers), and it tells the components apart. Each model is
warmed up as Runtime.warmup does. mmap_mb is glibc's mmapped chunks in use (large blocks, e.g. onnxruntime's arena
regions, CTranslate2's 51 MiB encoder attention scores while it runs); arena_mb its heaps (in_use + free).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEXTS = [
    "Hello.", "Sure, I can help with that.", "The weather today is sunny with a light breeze from the west.",
    "Let me think about it for a second, and then I will tell you what I found out.",
    "Okay!", "Five of clubs, eight of spades, and the queen of hearts.", "Yes, that is right.",
    "I am not sure I understood the question; could you say it again, a little more slowly this time?",
]


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


_LIBC = []


def mallinfo() -> dict:
    try:
        if not _LIBC:  # one handle: a CDLL per call is itself a (small) leak in a long soak
            _LIBC.append(ctypes.CDLL("libc.so.6"))
            _LIBC[0].mallinfo2.restype = _Mallinfo2
        m = _LIBC[0].mallinfo2()
        return {"arena_mb": m.arena / 2**20, "mmap_mb": m.hblkhd / 2**20, "in_use_mb": m.uordblks / 2**20,
                "free_mb": m.fordblks / 2**20}
    except Exception:
        return {}


def make_runner(name: str, cfg, audio: list[np.ndarray], rng: np.random.Generator):
    from agent import runtime

    if name == "asr":
        asr = runtime.load_asr(cfg)
        runtime._warm_asr(asr)

        def step():
            a = audio[rng.integers(len(audio))]
            n = int(rng.integers(1600, len(a) + 1))
            asr.transcribe(a[:n])
        return step
    if name == "tts":
        tts = runtime.load_tts(cfg)
        runtime._warm_tts(tts)  # as Runtime.warmup does (Piper: its longest phrase sizes the onnxruntime arena)

        words = " ".join(TEXTS).replace(",", "").replace(".", "").replace("!", "").replace("?", "").split()

        def step():  # a phrase of 1-24 words, as the runtime's phrase splitter cuts them ([phrases] max_words)
            t = " ".join(words[i] for i in rng.integers(len(words), size=int(rng.integers(1, 25)))) + "."
            for _ in tts.synthesize(t):
                pass
        return step
    if name == "judge":
        judge = runtime.load_judge(cfg)

        def step():
            a = audio[rng.integers(len(audio))]
            judge.p_end(a[: int(rng.integers(1600, len(a) + 1))])
        return step
    if name == "vad":
        vad = runtime.load_vad(cfg)

        def step():
            s = vad.stream()
            a = audio[rng.integers(len(audio))]
            for i in range(0, len(a), 320):  # 20 ms frames, as from a caller
                s.feed(a[i:i + 320])
        return step
    if name == "llm":
        llm = runtime.load_llm(cfg)

        def step():
            s = llm.new_session()
            for turn in range(int(rng.integers(1, 4))):
                s.add_user(TEXTS[rng.integers(len(TEXTS))])
                for _ in s.generate_reply():
                    pass
            s.free()
        return step
    raise SystemExit(f"unknown component {name}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("components", nargs="+", help="asr tts judge vad llm, or all")
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--every", type=float, default=5)
    p.add_argument("--config", default="cpu")
    p.add_argument("--json", default=None)
    p.add_argument("--trim-every", type=float, default=0, help="call glibc's malloc_trim(0) every this many s")
    p.add_argument("--mmap-threshold", type=int, default=0,
                   help="mallopt(M_MMAP_THRESHOLD, N) at start (fixed: glibc stops raising it to the largest freed "
                        "block, so large buffers are mmapped and returned)")
    args = p.parse_args(argv)
    libc = ctypes.CDLL("libc.so.6")
    if args.mmap_threshold:
        assert libc.mallopt(-3, args.mmap_threshold) == 1  # M_MMAP_THRESHOLD
    from agent.config import Config
    from bench.soak import clips

    cfg = Config.load(args.config)
    cfg.llm.max_new_tokens = 40
    names = ["asr", "tts", "judge", "vad", "llm"] if args.components == ["all"] else args.components
    audio = [a for _, a in clips()]
    proc = psutil.Process()
    rss = lambda: proc.memory_info().rss / 2**20  # noqa: E731
    print(f"before load: rss {rss():.0f} MB", flush=True)
    runners = {n: make_runner(n, cfg, audio, np.random.default_rng(i)) for i, n in enumerate(names)}
    counts = {n: 0 for n in names}
    stop = threading.Event()

    busy = {n: 0.0 for n in names}

    def loop(n):
        f = runners[n]
        while not stop.is_set():
            t = time.perf_counter()
            f()
            busy[n] += time.perf_counter() - t
            counts[n] += 1

    threads = [threading.Thread(target=loop, args=(n,), name=f"qt-{n}", daemon=True) for n in names]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    samples = []
    next_trim = t0 + args.trim_every
    while time.monotonic() - t0 < args.seconds:
        if args.trim_every and time.monotonic() >= next_trim:
            libc.malloc_trim(0)
            next_trim += args.trim_every
        s = {"t_s": round(time.monotonic() - t0, 1), "rss_mb": round(rss(), 1), **{k: round(v, 1) for k, v in
             mallinfo().items()}, "calls": dict(counts),
             "ms_per_call": {n: round(1000 * busy[n] / max(counts[n], 1), 1) for n in names}}
        samples.append(s)
        print(json.dumps(s), flush=True)
        time.sleep(args.every)
    stop.set()
    for t in threads:
        t.join()
    if args.json:
        Path(args.json).write_text(json.dumps({"components": names, "samples": samples}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
