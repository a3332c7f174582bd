"""Give freed heap memory back to the operating system now and then (glibc's `malloc_trim`).

A server that handles calls one after another on many threads frees most of what each call allocated, but glibc
keeps freed chunks in its heaps (one per thread arena) for reuse, and only returns the top of a heap. Chunks of
varied sizes freed in varied order leave free holes below live ones: the process's RSS creeps up call after call
although the memory in use does not (issue 9: the 32-caller soak on the H200 rose 1.36 % in 5.5 minutes while
glibc's in-use bytes stayed flat and its free bytes grew). `malloc_trim(0)` walks every arena and hands the free
whole pages back (`madvise(MADV_DONTNEED)`), so RSS follows what is in use.

    trimmer = HeapTrimmer.start(every_s=30)   # None where there is no glibc (macOS, musl): nothing to do
    trimmer.stats()                           # {"trims": n, "ms_mean": ..., "ms_max": ..., "released_mb": ...}
    trimmer.close()

It runs on a daemon thread of its own. A trim holds each arena's lock while it walks that arena (a few ms for a
few hundred MB of heap), so a thread that allocates meanwhile waits that long; every 30 s that is noise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time

log = logging.getLogger("quickturn.heap")


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):  # no glibc (or no malloc_trim in it)
        return None


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class HeapTrimmer:
    def __init__(self, libc, every_s: float):
        self._libc, self.every_s = libc, every_s
        self._stop = threading.Event()
        self.trims = 0
        self._total_s = self._max_s = 0.0
        self._released = 0
        self._thread = threading.Thread(target=self._loop, name="qt-heap-trim", daemon=True)

    @classmethod
    def start(cls, every_s: float) -> "HeapTrimmer | None":
        libc = _libc() if every_s > 0 else None
        if libc is None:
            return None
        t = cls(libc, every_s)
        t._thread.start()
        return t

    def trim(self) -> int:
        """One trim now. Returns the bytes of RSS it released (as /proc/self/statm sees it)."""
        before = _rss_bytes()
        t0 = time.perf_counter()
        self._libc.malloc_trim(0)
        dt = time.perf_counter() - t0
        released = max(0, before - _rss_bytes())
        self.trims += 1
        self._total_s += dt
        self._max_s = max(self._max_s, dt)
        self._released += released
        return released

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.trim()
            except Exception:  # never take the server down over housekeeping
                log.exception("malloc_trim failed")
                return

    def stats(self) -> dict:
        n = max(self.trims, 1)
        return {"trims": self.trims, "every_s": self.every_s, "ms_mean": round(1000 * self._total_s / n, 2),
                "ms_max": round(1000 * self._max_s, 2), "released_mb": round(self._released / 2**20, 1)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
