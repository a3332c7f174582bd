"""agent/heap.py: freed heap memory goes back to the OS (glibc malloc_trim), measured on this process's RSS."""

import ctypes
import sys
import threading

import pytest

from agent.heap import HeapTrimmer, _libc, _rss_bytes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or _libc() is None, reason="needs glibc")


def test_disabled_when_every_s_is_zero():
    assert HeapTrimmer.start(0) is None


def test_trim_gives_freed_heap_pages_back():
    """~256 MB in 64 KiB chunks (below glibc's mmap threshold: they live in a heap), touched, then all but the last
    freed — the live last chunk keeps the heap's top, so glibc cannot shrink it on its own. RSS stays up until the
    trim, which must give most of it back."""
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, n = 64 << 10, 4096
    out = {}

    def work():  # on a thread of its own, as the runtime's workers (a per-thread arena)
        ptrs = [libc.malloc(size) for _ in range(n)]
        for p in ptrs:
            ctypes.memset(p, 1, size)
        out["full"] = _rss_bytes()
        for p in ptrs[:-1]:
            libc.free(p)
        out["freed"] = _rss_bytes()
        out["last"] = ptrs[-1]

    t = threading.Thread(target=work)
    t.start()
    t.join()
    trimmer = HeapTrimmer(_libc(), every_s=3600)  # not started: one trim by hand
    released = trimmer.trim()
    after = _rss_bytes()
    libc.free(out["last"])
    total = size * n
    assert out["freed"] > out["full"] - total // 4, "glibc gave the pages back without a trim: the test shows nothing"
    assert released > total // 2 and out["freed"] - after > total // 2
    st = trimmer.stats()
    assert st["trims"] == 1 and st["released_mb"] > 128 and st["ms_max"] >= 0


def test_thread_trims_periodically_and_closes():
    trimmer = HeapTrimmer.start(0.05)
    try:
        deadline = 100
        while trimmer.trims < 3 and deadline:
            threading.Event().wait(0.05)
            deadline -= 1
        assert trimmer.trims >= 3
    finally:
        trimmer.close()
    n = trimmer.trims
    threading.Event().wait(0.2)
    assert trimmer.trims == n and not trimmer._thread.is_alive()
