"""One worker thread that owns a device (the LLM engine on CPU; on GPU, everything), running work items in the
order a policy gives. The policy is a tiny explicit rule, kept pure so it is tested without threads
(`order_key`, `pick`):

    edf (default): an item whose result is already computed (a decode token that a batched step produced for
    its session: handing it over costs nothing) first; then every item with a deadline, earliest deadline
    first — urgent work (ASR finals, first phrase, first audio: now + a small budget) and paced work (the rest of
    a reply: when the audio already sent runs out, minus a margin) compete by deadline; background work (pause-time
    prefill and drafts, no deadline) only when nothing else waits; FIFO on ties.
    deadline (experimental): every item by its deadline, background last; a ready item only wins a tie. Made for the
    engine's run-ahead (llm/engine.py `Engine.run_ahead`): a batched step no longer needs every consumer to have
    taken its last token, so the ready tokens of paced replies (due in seconds) need not go before an urgent first
    phrase's next step (due in 0.1 s). At 64 callers (H100, a754145) a first phrase's tokens took 13.5 ms each
    against 5 ms alone; the hypothesis was the hand-over of ~60 paced tokens after every step. A CPU model of the
    host side (bench/handover.py) does not support it (8 ms a token under edf and deadline); not measured on a GPU.
    fifo (baseline): arrival order.
    edf-urgent (experimental): as edf, but by class first: urgent items (and paced ones already overdue) before
    paced ones, before background; ready items first within a class. Made for a measured problem (8da962a, 64
    callers: ready paced tokens ran before an urgent prefill, its mean wait 112 ms vs 16 under fifo); at 9217084
    that wait was 24 ms under edf and edf-urgent lost at 64 callers (p50 795 vs 692 ms, 6 underruns vs 0;
    docs/perf-notes.md "Tenth session"), so edf stays the default. Again with the paced yield (7b07efd, H100): better
    than edf at 64 callers in three pairs of three, and 142 underruns against 1 at 96 (perf-notes "Nineteenth").

Work is never interrupted mid-item, so background work comes in small items (prefill chunks, single decode
steps): an urgent item waits at most for the one item already running. Decode stays batched: the engine's step
advances every generating session at once (llm/engine.py), and the `ready` items it leaves behind run first.

Across workers (`paced_hold`, `CriticalPath`; `[pipeline] paced_yield_s`, on in the GPU configs): the ASR, LLM, TTS
and judge workers are threads sharing one GPU and one GIL, each ordering only its own queue. While one runs an urgent
item, a paced item at the head of another's queue waits until `paced_yield_s` before its deadline or until the urgent
work ends (H100, 64 callers: after-endpoint p95 -20 %, each ASR call -33 %; docs/perf-notes.md "Eighteenth session").

The worker also measures itself (`load()`): the recent p95 queue wait of urgent items and the busy fraction,
which admission control reads (agent/memory.py `admission`)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import itertools
import math
import threading
import time
from dataclasses import dataclass, field
from enum import IntEnum

POLICIES = ("edf", "fifo", "edf-urgent", "deadline")
URGENT_BUDGET_S = 0.1  # an urgent item submitted without a deadline is due this long after it arrives
PACED_MARGIN_S = 1.0  # paced decode is due this long before the audio already produced runs out
SPEECH_TOKENS_PER_S = 4.0  # speech is ~2.5 words/s ~ 3-4 tokens/s; the higher figure gives earlier deadlines


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
    enqueued: float = field(compare=False, default=0.0)
    ready: object = field(compare=False, default=None)  # () -> bool: the result is already computed (cheap)
    batch: object = field(compare=False, default=None)  # (key, fn(list of args[0]) -> list of results)
    promoted: float = field(compare=False, default=0.0)  # time.monotonic() of its promotion (0: never promoted)


def order_key(item: Item, policy: str = "edf", ready: bool = False, now: float | None = None) -> tuple:
    """The policy: lower runs first. `ready`: the item's result is already computed (see module doc). `now`: for
    edf-urgent, a paced item due at or before it counts as urgent."""
    if policy == "fifo":
        return (item.seq,)
    if policy == "deadline":
        return (item.priority == Priority.BACKGROUND, item.deadline, not ready, item.seq)
    if policy == "edf-urgent":
        overdue = item.priority == Priority.PACED and now is not None and item.deadline <= now
        cls = 0 if item.priority == Priority.URGENT or overdue else int(item.priority)
        return (cls, not ready, item.deadline if cls < Priority.BACKGROUND else 0.0, item.seq)
    if ready:  # costs nothing: ready items go first, in arrival order
        return (0, 0, 0.0, 0, item.seq)
    return (1, item.priority == Priority.BACKGROUND, item.deadline, item.priority, item.seq)


def pick(items: list[Item], policy: str = "edf", ready=lambda item: False, now: float | None = None) -> int:
    """Index of the item to run next (pure given `ready` and `now`). `items` is in arrival order (as the worker
    keeps it), so under edf the first ready item is the answer when there is one: after a batched decode step most
    queued items are ready, and this finds one without computing every key (64 sessions: one check, not 64)."""
    if policy == "edf-urgent":
        return min(range(len(items)), key=lambda i: order_key(items[i], policy, ready(items[i]), now))
    if policy == "deadline":  # `ready` only breaks ties: probe just the items at the earliest deadline
        first = min(range(len(items)), key=lambda i: order_key(items[i], policy, False))
        bg, due = items[first].priority == Priority.BACKGROUND, items[first].deadline
        ties = [i for i, it in enumerate(items) if it.deadline == due and (it.priority == Priority.BACKGROUND) == bg]
        if len(ties) == 1:
            return first
        return min(ties, key=lambda i: order_key(items[i], policy, ready(items[i])))
    if policy == "edf":
        for i, item in enumerate(items):
            if ready(item):
                return i
        return min(range(len(items)), key=lambda i: order_key(items[i], policy))
    return min(range(len(items)), key=lambda i: order_key(items[i], policy))


def _label(item: Item) -> str:
    fn = item.fn
    if fn is next and item.args:  # a generator step: name the generator
        fn = item.args[0]
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"{Priority(item.priority).name.lower()}:{name}"


def paced_hold(item: Item, now: float, urgent_elsewhere: bool, ready: bool, slack_s: float) -> float:
    """How long a worker's next item waits for the urgent work another worker runs now (pure; 0: run it). The
    workers are threads sharing one GPU and one GIL: while an ASR final, an end-of-turn verdict or a first
    phrase runs on one of them, a paced item on another (a reply's later decode step or TTS window, due seconds
    from now) still competes with it for both. It waits instead, up to `slack_s` before its deadline. Urgent,
    background (pause-time work: the other workers' idle time, already last in its own queue) and ready items
    (their result is computed: handing it over costs nothing) never wait; slack_s <= 0 turns this off."""
    if slack_s <= 0 or not urgent_elsewhere or ready or item.priority != Priority.PACED:
        return 0.0
    return max(0.0, item.deadline - slack_s - now)


class CriticalPath:
    """Which of a set of PriorityWorkers run urgent items now (`paced_hold` reads it). A worker enters when an
    urgent item (or a batch with one) starts and leaves when it ends; on the last leave the others re-check the
    items they hold."""

    def __init__(self, slack_s: float = 0.0):
        self.slack_s = slack_s
        self._lock = threading.Lock()
        self._urgent: dict[int, int] = {}  # id(worker) -> urgent items it runs now (0 or 1)
        self._workers: list = []

    def attach(self, *workers) -> "CriticalPath":
        for w in workers:
            if w not in self._workers:
                self._workers.append(w)
            w.critical = self
        return self

    def elsewhere(self, worker) -> bool:
        with self._lock:
            return any(n for k, n in self._urgent.items() if k != id(worker))

    def enter(self, worker) -> None:
        with self._lock:
            self._urgent[id(worker)] = self._urgent.get(id(worker), 0) + 1

    def leave(self, worker) -> None:
        with self._lock:
            self._urgent[id(worker)] -= 1
            others = [w for w in self._workers if w is not worker]
        for w in others:  # never under self._lock: a worker holds its own lock while it asks elsewhere()
            w.wake()


def urgent_deadline(now: float, budget_s: float = URGENT_BUDGET_S) -> float:
    return now + budget_s


def paced_deadline(now: float, playback_end: float, unsent_tokens: int, margin_s: float = PACED_MARGIN_S,
                   tokens_per_s: float = SPEECH_TOKENS_PER_S) -> float:
    """When the next token of a reply is due: the listener has audio until `playback_end` (what was sent), plus
    the speech of the `unsent_tokens` generated but not yet sent as audio; be `margin_s` ahead of that."""
    return max(now, playback_end) + unsent_tokens / tokens_per_s - margin_s


class PriorityWorker(cf.Executor):
    """A single-thread executor whose queue is ordered by the policy. `submit` (used by run_in_executor) is
    urgent; `submit_with` takes a priority, a deadline and a `ready` probe. `policy` may be changed at any time
    (the benchmark compares both in one process)."""

    def __init__(self, name: str = "qt-worker", policy: str = "edf", window_s: float = 10.0):
        self.policy = policy
        self._items: list[Item] = []
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._stop = False
        self.ran: list[tuple[int, str]] = []  # (priority, label) of recent items, for tests and tracing
        self.window_s = window_s
        self._waits: collections.deque = collections.deque()  # (start time, wait s) of urgent items
        self._busy: collections.deque = collections.deque()  # (start, end) of items that ran
        self.missed = [0, 0]  # items that started after their deadline, of those with a finite deadline
        self.max_batch = 32
        self.batches = self.batched_items = 0  # coalesced batches (edf), and the items they ran
        # per item label: [items, queue wait s, run s, max queue wait s] since reset_stats (where the time goes)
        self.by_label: dict[str, list] = {}
        self._running: tuple[str, float] | None = None  # (label, start) of the item running now (snapshot())
        self.critical: CriticalPath | None = None  # set by CriticalPath.attach: paced items yield to urgent elsewhere
        self.held = [0, 0.0]  # paced items that waited for another worker's urgent work, and their wait (s)
        self.held_total = 0  # the same count since start (not reset: /metrics)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def policy(self) -> str:
        return self._policy

    @policy.setter
    def policy(self, value: str) -> None:
        if value not in POLICIES:
            raise ValueError(f"unknown scheduler {value!r} (one of: {', '.join(POLICIES)})")
        self._policy = value

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        return self.submit_with(Priority.URGENT, fn, *args)

    def submit_with(self, priority: Priority, fn, *args, deadline: float = math.inf, ready=None,
                    batch=None) -> cf.Future:
        """batch=(key, batch_fn): under edf, items queued with the same key run together as one
        batch_fn([args[0] of each]) call (e.g. ASR transcriptions of several sessions: one encoder batch)."""
        fut: cf.Future = cf.Future()
        now = time.monotonic()
        if priority == Priority.URGENT and deadline == math.inf:
            deadline = urgent_deadline(now)
        with self._cv:
            if self._stop:
                raise RuntimeError("worker is shut down")
            self._items.append(Item(int(priority), deadline, next(self._seq), fn, args, fut, now, ready, batch))
            self._cv.notify()
        return fut

    async def run(self, priority: Priority, fn, *args, deadline: float = math.inf, ready=None, batch=None):
        return await asyncio.wrap_future(self.submit_with(priority, fn, *args, deadline=deadline, ready=ready,
                                                          batch=batch))

    def promote(self, fut: cf.Future, priority: Priority, ready=None) -> bool:
        """Raise a queued item's priority (urgent: due URGENT_BUDGET_S from now, as if just submitted), e.g. a
        pause-time draft that the endpoint now waits for; `ready` gives it a ready probe too (see submit_with).
        False when the item is no longer queued (running or done) or already at that priority or higher."""
        with self._cv:
            for it in self._items:
                if it.future is fut:
                    if it.priority <= priority:
                        return False
                    it.priority = int(priority)
                    it.promoted = time.monotonic()
                    if priority == Priority.URGENT:
                        it.deadline = urgent_deadline(time.monotonic())
                    if ready is not None:
                        it.ready = ready
                    return True
        return False

    @staticmethod
    def _is_ready(item: Item) -> bool:
        try:
            return bool(item.ready is not None and item.ready())
        except Exception:
            return False

    def wake(self) -> None:
        """Re-check the queue now (CriticalPath: the urgent work this worker's next item waited for ended)."""
        with self._cv:
            self._cv.notify()

    def _next(self) -> Item | None:
        """Under self._cv: wait for an item, and pop the one the policy picks once it need not hold (None: stop)."""
        held_since = None
        while True:
            while not self._items and not self._stop:
                self._cv.wait()
            if self._stop and not self._items:
                return None
            now = time.monotonic()
            i = pick(self._items, self._policy, self._is_ready, now)
            cp, item = self.critical, self._items[i]
            wait = 0.0 if cp is None or self._stop else paced_hold(
                item, now, cp.slack_s > 0 and cp.elsewhere(self), self._is_ready(item), cp.slack_s)
            if wait <= 0:
                if held_since is not None:
                    self.held[0] += 1
                    self.held_total += 1
                    self.held[1] += now - held_since
                return self._items.pop(i)
            held_since = held_since or now
            self._cv.wait(min(wait, 0.05))  # woken by a new item or by the end of the urgent work (wake)

    def _loop(self) -> None:
        while True:
            with self._cv:
                item = self._next()
                if item is None:
                    return
                group = []
                if item.batch is not None and self._policy != "fifo":
                    group = [it for it in self._items if it.batch is not None and it.batch[0] == item.batch[0]]
                    group = group[: self.max_batch - 1]
                    for it in group:
                        self._items.remove(it)
            if group:
                self._run_batch([item] + group)
                continue
            if not item.future.set_running_or_notify_cancel():
                continue
            self.ran.append((item.priority, getattr(item.fn, "__name__", "?")))
            if len(self.ran) > 1000:
                del self.ran[:500]
            t0 = time.monotonic()
            if item.deadline != math.inf and item.priority != Priority.BACKGROUND:
                self.missed[1] += 1
                self.missed[0] += t0 > item.deadline
            self._running = (_label(item), t0)
            c0 = time.thread_time()
            cp = self._enter(item.priority == Priority.URGENT)
            try:
                item.future.set_result(item.fn(*item.args))
            except BaseException as e:  # delivered to the awaiting coroutine
                item.future.set_exception(e)
            finally:
                if cp is not None:
                    cp.leave(self)
            t1 = time.monotonic()
            cpu = time.thread_time() - c0
            self._running = None
            with self._cv:
                self._done(item, t0, t1 - t0, cpu=cpu)
                self._busy.append((t0, t1))
                self._trim(t1)

    def _enter(self, urgent: bool) -> CriticalPath | None:
        """An urgent item starts: tell the CriticalPath (when paced holding is on). Returns it, to leave after."""
        cp = self.critical
        if not urgent or cp is None or cp.slack_s <= 0:
            return None
        cp.enter(self)
        return cp

    def _run_batch(self, items: list[Item]) -> None:
        items = [it for it in items if it.future.set_running_or_notify_cancel()]
        if not items:
            return
        self.batches += 1
        self.batched_items += len(items)
        t0 = time.monotonic()
        for it in items:
            if it.deadline != math.inf and it.priority != Priority.BACKGROUND:
                self.missed[1] += 1
                self.missed[0] += t0 > it.deadline
        self._running = (f"{items[0].batch[0]}[batch of {len(items)}]", t0)
        c0 = time.thread_time()
        cp = self._enter(any(it.priority == Priority.URGENT for it in items))
        try:
            results = items[0].batch[1]([it.args[0] for it in items])
            for it, r in zip(items, results):
                it.future.set_result(r)
        except BaseException as e:
            for it in items:
                if not it.future.done():
                    it.future.set_exception(e)
        finally:
            if cp is not None:
                cp.leave(self)
        for it in items:  # a batch function that returned too few results must not leave a caller waiting
            if not it.future.done():
                it.future.set_exception(RuntimeError(f"{it.batch[0]}: the batch returned no result for this item"))
        t1 = time.monotonic()
        cpu = time.thread_time() - c0
        self._running = None
        with self._cv:
            for it in items:
                self._done(it, t0, (t1 - t0) / len(items), f"{it.batch[0]}[batch]", cpu / len(items))
            self._busy.append((t0, t1))
            self._trim(t1)

    def _done(self, item: Item, t0: float, run: float, label: str | None = None, cpu: float = 0.0) -> None:
        """Account for an item that started at t0 (under the lock). An urgent item's wait, which admission control
        reads (`load`), counts from when it became urgent: a promoted draft's time queued as background work, during
        the pause, is not an urgent item waiting. A promoted item is also counted under "promoted:<label>" with its
        wait from the promotion, beside its label's wait from when it was queued."""
        label = label or _label(item)
        if item.priority == Priority.URGENT:
            self._waits.append((t0, t0 - (item.promoted or item.enqueued)))
        self._count(label, t0 - item.enqueued, run, cpu)
        if item.promoted:
            self._count("promoted:" + label, t0 - item.promoted, run, cpu)

    def _count(self, label: str, wait: float, run: float, cpu: float = 0.0) -> None:
        c = self.by_label.get(label)
        if c is None:
            c = self.by_label[label] = [0, 0.0, 0.0, 0.0, 0.0]
        c[0] += 1
        c[1] += wait
        c[2] += run
        c[3] = max(c[3], wait)
        c[4] += cpu

    def label_stats(self) -> dict[str, dict]:
        """Per item label since reset_stats: count, mean queue wait, mean run time, max queue wait, and the mean
        CPU time the worker thread used while running it (ms). Run time well above CPU time is time the thread
        was off the CPU: waiting for the GIL, or for a GPU sync that sleeps (a spinning sync counts as CPU)."""
        with self._cv:
            return {k: {"n": n, "wait_ms": round(w / n * 1000, 2), "run_ms": round(r / n * 1000, 2),
                        "max_wait_ms": round(m * 1000, 1), "cpu_ms": round(c / n * 1000, 2)}
                    for k, (n, w, r, m, c) in sorted(self.by_label.items())}

    def _trim(self, now: float) -> None:
        edge = now - self.window_s
        while self._waits and self._waits[0][0] < edge:
            self._waits.popleft()
        while self._busy and self._busy[0][1] < edge:
            self._busy.popleft()

    def urgent_waiting(self) -> bool:
        """An urgent item is queued (not running): for an item that could go on, a reason to end now."""
        with self._cv:
            return any(it.priority == Priority.URGENT for it in self._items)

    def load(self, now: float | None = None) -> dict:
        """The last window: p95 queue wait of urgent items (ms; None without any), busy fraction, queue length."""
        now = time.monotonic() if now is None else now
        with self._cv:
            self._trim(now)
            waits = sorted(w for _, w in self._waits)
            busy = sum(min(b, now) - max(a, now - self.window_s) for a, b in self._busy)
            queued = len(self._items)
        p95 = waits[min(len(waits) - 1, math.ceil(0.95 * len(waits)) - 1)] * 1000 if waits else None
        return {"urgent_wait_p95_ms": p95, "busy": max(0.0, busy) / self.window_s, "queued": queued,
                "urgent_items": len(waits)}

    def snapshot(self, now: float | None = None) -> dict:
        """What the worker is doing now: the item running (label, seconds so far), the queue (length, the oldest
        item's wait, items per label). A GPU call that never returns shows here as a running time that only grows
        (Hub.health() reports such a worker as stuck)."""
        now = time.monotonic() if now is None else now
        running = self._running
        with self._cv:
            labels = collections.Counter(_label(it) for it in self._items)
            oldest = min((it.enqueued for it in self._items), default=None)
        return {"running": running[0] if running else None,
                "running_s": round(now - running[1], 3) if running else 0.0,
                "queued": sum(labels.values()), "oldest_wait_s": round(now - oldest, 3) if oldest is not None else 0.0,
                "queued_by_label": dict(labels.most_common(8)), "alive": self._thread.is_alive()}

    def reset_stats(self) -> None:
        with self._cv:
            self._waits.clear()
            self._busy.clear()
            self.missed = [0, 0]
            self.by_label = {}
            self.held = [0, 0.0]

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker thread to end (after shutdown)."""
        self._thread.join(timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cv:
            self._stop = True
            if cancel_futures:
                for item in self._items:
                    item.future.cancel()
                self._items.clear()
            self._cv.notify_all()
        if wait:
            self._thread.join()

