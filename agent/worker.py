"""One worker thread that owns a device (the LLM engine on CPU; on GPU, everything), running work items by
priority. The policy is a tiny explicit rule, kept pure so it is tested without threads:

    urgent (ASR finals, first phrase, first audio) before paced (the rest of a reply) before background
    (pause-time prefill and drafts); earliest deadline first within a class; FIFO on ties.

Work is never interrupted mid-item, so background work comes in small items (prefill chunks, single decode
steps): an urgent item waits at most for the one item already running."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import heapq
import itertools
import math
import threading
from dataclasses import dataclass, field
from enum import IntEnum


class Priority(IntEnum):
    URGENT = 0
    PACED = 1
    BACKGROUND = 2


@dataclass(order=True)
class Item:
    priority: int
    deadline: float
    seq: int
    fn: object = field(compare=False)
    args: tuple = field(compare=False, default=())
    future: cf.Future = field(compare=False, default=None)


def order_key(item: Item) -> tuple:
    """The policy: lower runs first."""
    return (item.priority, item.deadline, item.seq)


class PriorityWorker(cf.Executor):
    """A single-thread executor whose queue is ordered by `order_key`. `submit` (used by run_in_executor) is
    urgent; `submit_with` takes a priority and a deadline."""

    def __init__(self, name: str = "qt-worker"):
        self._heap: list[Item] = []
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._stop = False
        self.ran: list[tuple[int, str]] = []  # (priority, label) of recent items, for tests and tracing
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        return self.submit_with(Priority.URGENT, fn, *args)

    def submit_with(self, priority: Priority, fn, *args, deadline: float = math.inf) -> cf.Future:
        fut: cf.Future = cf.Future()
        with self._cv:
            if self._stop:
                raise RuntimeError("worker is shut down")
            heapq.heappush(self._heap, Item(int(priority), deadline, next(self._seq), fn, args, fut))
            self._cv.notify()
        return fut

    async def run(self, priority: Priority, fn, *args, deadline: float = math.inf):
        return await asyncio.wrap_future(self.submit_with(priority, fn, *args, deadline=deadline))

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._heap and not self._stop:
                    self._cv.wait()
                if self._stop and not self._heap:
                    return
                item = heapq.heappop(self._heap)
            if not item.future.set_running_or_notify_cancel():
                continue
            self.ran.append((item.priority, getattr(item.fn, "__name__", "?")))
            if len(self.ran) > 1000:
                del self.ran[:500]
            try:
                item.future.set_result(item.fn(*item.args))
            except BaseException as e:  # delivered to the awaiting coroutine
                item.future.set_exception(e)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cv:
            self._stop = True
            if cancel_futures:
                for item in self._heap:
                    item.future.cancel()
                self._heap.clear()
            self._cv.notify_all()
        if wait:
            self._thread.join()
