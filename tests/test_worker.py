"""The priority rule of the worker that owns the LLM (the GPU, on a GPU machine)."""

import asyncio
import threading
import time

from agent.worker import Item, Priority, PriorityWorker, order_key


def test_policy_urgent_first_then_deadline_then_fifo():
    items = [Item(Priority.BACKGROUND, 0.0, 0, None), Item(Priority.PACED, 5.0, 1, None),
             Item(Priority.URGENT, 9.0, 2, None), Item(Priority.PACED, 2.0, 3, None),
             Item(Priority.URGENT, 9.0, 4, None)]
    assert [i.seq for i in sorted(items, key=order_key)] == [2, 4, 3, 1, 0]


def test_urgent_work_waits_at_most_one_background_chunk():
    """A background prefill in chunks; an urgent item (an ASR final, a first phrase) arrives during a chunk."""
    w = PriorityWorker("test")
    log: list[str] = []
    started = threading.Event()

    def chunk(i):
        started.set()
        log.append(f"bg{i}")
        time.sleep(0.05)

    def urgent():
        log.append("urgent")

    async def scenario():
        futs = [w.run(Priority.BACKGROUND, chunk, i) for i in range(6)]
        tasks = [asyncio.ensure_future(f) for f in futs]
        while not started.is_set():
            await asyncio.sleep(0.001)
        t0 = time.monotonic()
        await w.run(Priority.URGENT, urgent)
        waited = time.monotonic() - t0
        await asyncio.gather(*tasks)
        return waited

    waited = asyncio.run(scenario())
    w.shutdown()
    assert log.index("urgent") == 1  # right after the chunk that was running
    assert waited < 0.05 * 2  # at most one chunk (+ scheduling slack), not the six queued


def test_cancelled_queued_item_never_runs():
    w = PriorityWorker("test2")
    gate = threading.Event()
    ran = []
    w.submit(gate.wait)
    f = w.submit_with(Priority.BACKGROUND, ran.append, 1)
    assert f.cancel()
    gate.set()
    w.submit(ran.append, 2).result(5)
    w.shutdown()
    assert ran == [2]
