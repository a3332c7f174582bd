"""The scheduling policy of the worker that owns the LLM (the GPU, on a GPU machine): pure tests on synthetic
workloads with deadlines (no threads), then the threaded worker itself."""

import asyncio
import math
import random
import threading
import time

import pytest

from agent.worker import CriticalPath, Item, Priority, PriorityWorker, order_key, paced_deadline, paced_hold, pick


def test_edf_orders_by_deadline_background_last_fifo_on_ties():
    items = [Item(Priority.BACKGROUND, math.inf, 0, None), Item(Priority.PACED, 5.0, 1, None),
             Item(Priority.URGENT, 9.0, 2, None), Item(Priority.PACED, 2.0, 3, None),
             Item(Priority.URGENT, 9.0, 4, None)]
    assert [i.seq for i in sorted(items, key=order_key)] == [3, 1, 2, 4, 0]
    assert [i.seq for i in sorted(items, key=lambda i: order_key(i, "fifo"))] == [0, 1, 2, 3, 4]


def test_ready_items_first_under_edf_only():
    """A token a batched decode step already produced is handed over before anything else (costs nothing)."""
    items = [Item(Priority.URGENT, 1.0, 0, None), Item(Priority.PACED, 50.0, 1, None),
             Item(Priority.BACKGROUND, math.inf, 2, None)]
    ready = lambda it: it.seq == 1  # noqa: E731
    assert pick(items, "edf", ready) == 1
    assert pick(items, "fifo", ready) == 0
    assert pick(items, "edf") == 0


def test_pick_is_the_minimum_of_order_key():
    """The worker's fast path (first ready item in arrival order) gives what sorting by the policy gives."""
    rng = random.Random(3)
    for _ in range(300):
        items = [Item(rng.choice(list(Priority)), rng.choice([math.inf, rng.uniform(0, 5)]), k, None)
                 for k in range(rng.randint(1, 12))]
        for it in items:  # some deadlines equal (ready breaks those ties under "deadline")
            if it.deadline != math.inf and rng.random() < 0.3:
                it.deadline = round(it.deadline)
        ready_set = {k for k in range(len(items)) if rng.random() < 0.3}
        ready = lambda it: it.seq in ready_set  # noqa: E731
        for policy in ("edf", "fifo", "edf-urgent", "deadline"):
            now = rng.uniform(0, 5)
            best = min(items, key=lambda it: order_key(it, policy, policy != "fifo" and ready(it), now))
            assert items[pick(items, policy, ready, now)] is best


def test_edf_urgent_runs_urgent_work_before_ready_paced_tokens():
    """What edf does at 64 callers: a batched step leaves a ready token for each of 40 sessions that are playing a
    reply (paced, due in ~2 s), and one new turn's prefill (urgent, due in 0.1 s) waits for all 40 hand-overs.
    edf-urgent runs the prefill first; a paced token already overdue counts as urgent; background stays last."""
    now = 10.0
    items = [Item(Priority.PACED, now + 2.0 + k / 100, k, None) for k in range(40)]
    items.append(Item(Priority.URGENT, now + 0.1, 40, None))  # not ready: the prefill
    items.append(Item(Priority.BACKGROUND, math.inf, 41, None))
    ready = lambda it: it.seq < 40  # noqa: E731
    assert pick(items, "edf", ready, now) == 0  # a ready paced token first
    assert pick(items, "edf-urgent", ready, now) == 40
    items[5].deadline = now - 0.01  # overdue: its audio runs out within the margin
    assert pick(items, "edf-urgent", ready, now) == 5
    order = sorted(items, key=lambda it: order_key(it, "edf-urgent", ready(it), now))
    assert [it.seq for it in order[:3]] == [5, 40, 0] and order[-1].seq == 41


def test_deadline_runs_the_first_phrase_step_before_ready_paced_tokens_unless_they_are_due_first():
    """The same 40 ready paced tokens and one urgent first-phrase step under "deadline": the step first (due in 0.1 s,
    the tokens in ~2 s); a paced token due before it goes before it; background last; among items due at the same
    moment a ready one first."""
    now = 10.0
    items = [Item(Priority.PACED, now + 2.0 + k / 100, k, None) for k in range(40)]
    items.append(Item(Priority.URGENT, now + 0.1, 40, None))  # not ready: the next step of a first phrase
    items.append(Item(Priority.BACKGROUND, math.inf, 41, None))
    ready = lambda it: it.seq < 40  # noqa: E731
    assert pick(items, "deadline", ready, now) == 40
    items[7].deadline = now + 0.05  # its audio runs out sooner
    assert pick(items, "deadline", ready, now) == 7
    items[9].deadline = items[7].deadline
    items[7].seq, items[9].seq = 9, 7
    assert pick(items, "deadline", lambda it: it is items[7], now) == 7  # a tie: the ready one, though queued later
    order = sorted(items, key=lambda it: order_key(it, "deadline", ready(it), now))
    assert order[-1].seq == 41 and order[2].seq == 40


# ---- a discrete-event simulation of one worker: jobs arrive, each costs some seconds, none is preempted ----

def simulate(jobs: list[dict], policy: str) -> dict[str, float]:
    """jobs: {name, arrive, cost, priority, deadline}. Returns name -> finish time."""
    pending = sorted(jobs, key=lambda j: j["arrive"])
    queue: list[Item] = []
    by_seq: dict[int, dict] = {}
    t, done, seq = 0.0, {}, 0
    while pending or queue:
        while pending and pending[0]["arrive"] <= t:
            j = pending.pop(0)
            queue.append(Item(j["priority"], j["deadline"], seq, None))
            by_seq[seq] = j
            seq += 1
        if not queue:
            t = pending[0]["arrive"]
            continue
        item = queue.pop(pick(queue, policy))
        j = by_seq[item.seq]
        t += j["cost"]
        done[j["name"]] = t
    return done


def misses(jobs, done) -> list[str]:
    return [j["name"] for j in jobs if j["deadline"] != math.inf and done[j["name"]] > j["deadline"]]


def test_edf_meets_deadlines_that_fifo_misses():
    """Eight sessions' paced decode items are queued (due in 2 s: their audio plays on); a new turn's urgent first
    token arrives behind them, due in 50 ms. FIFO runs it last and misses; EDF runs it first and nobody misses."""
    jobs = [{"name": f"paced{i}", "arrive": 0.0, "cost": 0.02, "priority": Priority.PACED, "deadline": 2.0}
            for i in range(8)]
    jobs.append({"name": "urgent", "arrive": 0.001, "cost": 0.02, "priority": Priority.URGENT, "deadline": 0.07})
    fifo, edf = simulate(jobs, "fifo"), simulate(jobs, "edf")
    assert misses(jobs, fifo) == ["urgent"]
    assert misses(jobs, edf) == []


def test_random_workloads_edf_never_misses_more_than_fifo():
    """Random mixes of urgent/paced/background items with feasible-ish deadlines: EDF (optimal for one
    non-preemptive machine when all jobs are queued) misses no more deadlines than FIFO, and strictly fewer in
    aggregate."""
    rng = random.Random(7)
    total_edf = total_fifo = 0
    for _ in range(200):
        jobs = []
        for k in range(rng.randint(5, 30)):
            pr = rng.choice([Priority.URGENT, Priority.PACED, Priority.BACKGROUND])
            arrive = rng.uniform(0, 0.3)
            deadline = (math.inf if pr == Priority.BACKGROUND else
                        arrive + (rng.uniform(0.05, 0.2) if pr == Priority.URGENT else rng.uniform(0.3, 2.0)))
            jobs.append({"name": str(k), "arrive": arrive, "cost": rng.uniform(0.005, 0.03), "priority": pr,
                         "deadline": deadline})
        total_edf += len(misses(jobs, simulate(jobs, "edf")))
        total_fifo += len(misses(jobs, simulate(jobs, "fifo")))
    assert total_edf < total_fifo / 2, (total_edf, total_fifo)


def test_urgent_waits_at_most_one_background_item():
    """A long background prefill in chunks is queued; an urgent item arriving mid-chunk runs right after it."""
    jobs = [{"name": f"bg{i}", "arrive": 0.0, "cost": 0.05, "priority": Priority.BACKGROUND, "deadline": math.inf}
            for i in range(10)]
    jobs.append({"name": "urgent", "arrive": 0.01, "cost": 0.01, "priority": Priority.URGENT, "deadline": 0.2})
    done = simulate(jobs, "edf")
    assert done["urgent"] - 0.01 <= 0.05 + 0.01 + 1e-9  # one chunk + its own cost
    assert sum(done[f"bg{i}"] < done["urgent"] for i in range(10)) == 1


def test_paced_deadline_follows_playback():
    now = 100.0
    # 3 s of audio still to play and 8 unsent tokens (~2 s of speech): due ~4 s from now with a 1 s margin
    assert paced_deadline(now, now + 3.0, 8, margin_s=1.0, tokens_per_s=4.0) == pytest.approx(now + 4.0)
    # nothing playing, nothing unsent: due at once (before the margin even)
    assert paced_deadline(now, 0.0, 0, margin_s=1.0) < now
    # more audio queued -> later deadline
    assert paced_deadline(now, now + 5, 0) > paced_deadline(now, now + 1, 0)


# ---- the threaded worker -------------------------------------------------------------------------------

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
    load = w.load()
    w.shutdown()
    assert log.index("urgent") == 1  # right after the chunk that was running
    assert waited < 0.05 * 2  # at most one chunk (+ scheduling slack), not the six queued
    assert load["urgent_items"] == 1 and 0 < load["urgent_wait_p95_ms"] < 100
    assert 0 < load["busy"] <= 1


def test_fifo_policy_switchable_at_run_time():
    w = PriorityWorker("test3")
    gate = threading.Event()
    order = []
    w.submit(gate.wait)
    w.policy = "fifo"
    futs = [w.submit_with(Priority.BACKGROUND, order.append, "bg"), w.submit_with(Priority.URGENT, order.append, "u")]
    gate.set()
    for f in futs:
        f.result(5)
    for policy in ("edf", "edf-urgent"):
        w.policy = policy
        gate.clear()
        w.submit(gate.wait)
        futs = [w.submit_with(Priority.BACKGROUND, order.append, "bg"),
                w.submit_with(Priority.PACED, order.append, "p", deadline=time.monotonic() + 5),
                w.submit_with(Priority.URGENT, order.append, "u")]
        gate.set()
        for f in futs:
            f.result(5)
    w.shutdown()
    assert order == ["bg", "u", "u", "p", "bg", "u", "p", "bg"]
    with pytest.raises(ValueError, match="unknown scheduler"):
        w.policy = "lifo"


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


def test_urgent_waiting_sees_queued_urgent_items_only():
    """PriorityWorker.urgent_waiting: what a first-phrase burst (agent/session.py `phrase_burst`) asks between tokens.
    Queued urgent work counts; the running item, and paced or background work, do not."""
    w = PriorityWorker("test-urgent-waiting")
    gate, started = threading.Event(), threading.Event()
    seen = []
    w.submit(lambda: (started.set(), gate.wait(5), seen.append(w.urgent_waiting())))
    assert started.wait(5)
    assert not w.urgent_waiting()  # the running urgent item is not waiting
    w.submit_with(Priority.PACED, seen.append, "paced", deadline=time.monotonic() + 5)
    w.submit_with(Priority.BACKGROUND, seen.append, "bg")
    assert not w.urgent_waiting()
    f = w.submit(seen.append, "urgent")
    assert w.urgent_waiting()
    gate.set()
    f.result(5)
    w.shutdown()
    assert seen[0] is True and not w.urgent_waiting()


def test_same_kind_items_run_as_one_batch_under_edf_only():
    """Five sessions' transcriptions queue behind a running item: edf runs them as one batch call, fifo one by one."""
    calls = []

    def one(x):
        calls.append([x])
        return x * 10

    def many(xs):
        calls.append(list(xs))
        return [x * 10 for x in xs]

    for policy, expect in (("edf", [[0, 1, 2, 3, 4]]), ("fifo", [[0], [1], [2], [3], [4]])):
        calls.clear()
        w = PriorityWorker("test-batch", policy=policy)
        gate = threading.Event()
        w.submit(gate.wait)
        time.sleep(0.02)  # the gate item is running
        futs = [w.submit_with(Priority.URGENT, one, i, batch=("asr", many)) for i in range(5)]
        gate.set()
        assert [f.result(5) for f in futs] == [0, 10, 20, 30, 40]
        w.shutdown()
        assert calls == expect, policy


def test_label_stats_say_where_the_time_goes():
    """Per item label (priority:function, a generator step by its generator): count, queue wait and run time."""
    w = PriorityWorker("t-stats")
    try:
        gate = threading.Event()

        def slow(x):
            gate.wait(1.0)
            time.sleep(0.02)
            return x

        def gen():
            yield 1
            yield 2

        def spin():
            t = time.thread_time()
            while time.thread_time() - t < 0.02:
                pass

        g = gen()
        first = w.submit_with(Priority.URGENT, slow, 1)  # holds the thread while the next two queue behind it
        steps = [w.submit_with(Priority.PACED, next, g, None) for _ in range(2)]
        gate.set()
        assert first.result() == 1 and [f.result() for f in steps] == [1, 2]
        st = w.label_stats()
        assert st["urgent:test_label_stats_say_where_the_time_goes.<locals>.slow"]["n"] == 1
        assert st["urgent:test_label_stats_say_where_the_time_goes.<locals>.slow"]["run_ms"] >= 15
        # it slept: its thread was off the CPU for most of its run
        assert st["urgent:test_label_stats_say_where_the_time_goes.<locals>.slow"]["cpu_ms"] < 10
        paced = st["paced:test_label_stats_say_where_the_time_goes.<locals>.gen"]
        assert paced["n"] == 2 and paced["max_wait_ms"] >= 15  # queued behind `slow`
        w.submit_with(Priority.URGENT, spin).result()
        assert w.label_stats()["urgent:test_label_stats_say_where_the_time_goes.<locals>.spin"]["cpu_ms"] >= 19
        w.reset_stats()
        assert w.label_stats() == {}
    finally:
        w.shutdown()


def test_runtime_close_waits_for_the_running_items():
    """Runtime.close cancels queued work and waits for what each worker thread is running, so no worker is inside
    native code when the interpreter exits (that aborted `quickturn demo` with "terminate called ...")."""
    from agent.config import Config
    from agent.runtime import Runtime

    rt = Runtime(config=Config.load("cpu"), vad=None, asr=None, llm=None, tts=None)
    started, done = {"tts": threading.Event(), "judge": threading.Event(), "never": threading.Event()}, []

    def busy(tag, s=0.3):
        started[tag].set()
        time.sleep(s)
        done.append(tag)

    rt.tts_pool.submit_with(Priority.URGENT, busy, "tts")
    queued = rt.tts_pool.submit_with(Priority.PACED, busy, "never")
    judge = rt.judge_pool.submit(busy, "judge", 0.2)
    assert started["tts"].wait(2.0) and started["judge"].wait(2.0)  # both running, "never" still queued
    rt.close()
    assert sorted(done) == ["judge", "tts"] and queued.cancelled() and judge.done()
    assert not rt.tts_pool._thread.is_alive() and not rt.llm_pool._thread.is_alive()


def test_the_deadline_policy_lets_generations_run_ahead_and_the_others_do_not():
    """Under "deadline" ready tokens wait for their deadlines, so the engine must keep stepping generations whose
    consumers lag (Engine.run_ahead); edf, fifo and edf-urgent keep the batch full by handing tokens over first and
    run with 1. Switched while serving (the benchmark compares policies on one Runtime)."""
    import types

    from agent.config import Config
    from agent.runtime import Runtime
    from llm.engine import RUN_AHEAD

    eng = types.SimpleNamespace(run_ahead=1)
    cfg = Config.load("cpu")
    cfg.pipeline.scheduler = "deadline"
    rt = Runtime(config=cfg, vad=None, asr=None, llm=types.SimpleNamespace(engine=eng), tts=None)
    try:
        assert eng.run_ahead == RUN_AHEAD > 1 and rt.llm_pool.policy == "deadline"
        for policy in ("edf", "fifo", "edf-urgent"):
            rt.set_scheduler(policy)
            assert eng.run_ahead == 1 and rt.llm_pool.policy == policy
        rt.set_scheduler("deadline")
        assert eng.run_ahead == RUN_AHEAD
    finally:
        rt.close()


def test_cuda_sync_mode_is_checked_when_the_config_loads():
    """[pipeline] cuda_sync (how GPU threads wait, agent/cuda_sync.py) accepts auto / spin / yield only ("blocking"
    stalled the pipeline on an H100 and is refused with the list of choices), and on a machine without CUDA setting
    it is a no-op that says so."""
    import pytest

    from agent.config import Config, ConfigError
    from agent.cuda_sync import set_cuda_sync

    assert Config.from_dict({"pipeline": {"cuda_sync": "yield"}}).pipeline.cuda_sync == "yield"
    for bad in ("sleep", "blocking"):
        with pytest.raises(ConfigError, match="cuda_sync must be one of auto, spin, yield"):
            Config.from_dict({"pipeline": {"cuda_sync": bad}})
        with pytest.raises(ValueError):
            set_cuda_sync(bad)
    import torch

    if not torch.cuda.is_available():
        assert set_cuda_sync("yield") == "no CUDA device"


def test_snapshot_names_the_running_item_and_the_queue():
    w = PriorityWorker("snap")
    gate = threading.Event()
    started = threading.Event()

    def blocked():
        started.set()
        gate.wait(5)

    w.submit(blocked)
    started.wait(5)
    w.submit_with(Priority.BACKGROUND, time.sleep, 0)
    w.submit_with(Priority.BACKGROUND, time.sleep, 0)
    time.sleep(0.05)
    s = w.snapshot()
    assert s["running"] == "urgent:test_snapshot_names_the_running_item_and_the_queue.<locals>.blocked"
    assert s["running_s"] >= 0.04 and s["alive"]
    assert s["queued"] == 2 and s["queued_by_label"] == {"background:sleep": 2} and s["oldest_wait_s"] >= 0.04
    gate.set()
    w.submit_with(Priority.BACKGROUND, time.sleep, 0).result(5)  # behind the two queued ones
    for _ in range(100):  # the result is delivered just before the worker clears its running item
        if (s := w.snapshot())["running"] is None:
            break
        time.sleep(0.01)
    assert s["running"] is None and s["running_s"] == 0.0 and s["queued"] == 0
    w.shutdown()
    assert not w.snapshot()["alive"]


def test_a_batch_that_returns_too_few_results_fails_the_rest_instead_of_hanging():
    w = PriorityWorker("short-batch")
    gate = threading.Event()
    w.submit(gate.wait, 5)
    futs = [w.submit_with(Priority.URGENT, str, i, batch=("k", lambda xs: [str(x) for x in xs[:1]])) for i in range(3)]
    gate.set()
    assert futs[0].result(5) == "0"
    for f in futs[1:]:
        with pytest.raises(RuntimeError, match="no result for this item"):
            f.result(5)
    w.shutdown()


def test_a_promoted_background_item_runs_before_waiting_urgent_work():
    """A pause-time draft the endpoint now waits for: its queued background item becomes urgent (due now), so it
    runs before urgent items due later, instead of after everything else."""
    w = PriorityWorker("test-promote")
    gate = threading.Event()
    ran = []
    w.submit(gate.wait)
    now = time.monotonic()
    bg = w.submit_with(Priority.BACKGROUND, ran.append, "draft")
    w.submit_with(Priority.URGENT, ran.append, "other session", deadline=now + 5.0)
    w.submit_with(Priority.PACED, ran.append, "paced", deadline=now + 2.0)
    assert w.promote(bg, Priority.URGENT)
    assert not w.promote(bg, Priority.BACKGROUND)  # never lowered
    gate.set()
    w.submit_with(Priority.BACKGROUND, ran.append, "end").result(5)
    assert ran == ["draft", "paced", "other session", "end"]
    assert not w.promote(bg, Priority.URGENT)  # done: nothing to promote
    w.shutdown()


def test_a_promoted_item_counts_its_urgent_wait_from_the_promotion():
    """A draft's item queued as background during the pause and promoted at the endpoint: its time in the queue
    before the promotion is pause-time work, not an urgent item waiting. Admission control (`load`) reads the urgent
    wait from the promotion; the statistics keep both: the label's wait from the queueing, "promoted:<label>" from
    the promotion."""
    w = PriorityWorker("test-promoted-wait")
    gate = threading.Event()
    w.submit(gate.wait)
    bg = w.submit_with(Priority.BACKGROUND, time.sleep, 0.0)
    time.sleep(0.3)  # the pause: background work waits
    assert w.promote(bg, Priority.URGENT)
    time.sleep(0.05)  # the endpoint took it: 50 ms as an urgent item
    gate.set()
    bg.result(5)
    w.submit_with(Priority.BACKGROUND, time.sleep, 0.0).result(5)
    stats = w.label_stats()
    assert stats["urgent:sleep"]["n"] == 1 and stats["urgent:sleep"]["wait_ms"] >= 340  # queued 0.35 s in all
    assert 40 <= stats["promoted:urgent:sleep"]["wait_ms"] < 300  # urgent for 0.05 s
    urgent = w.load()["urgent_wait_p95_ms"]
    assert urgent is not None and urgent < 300  # the gate.wait item (~0) and the promoted one (~50 ms)
    w.shutdown()


def test_a_draft_runs_in_the_background_until_the_endpoint_takes_it():
    """A pause-time draft's model calls (LLM steps, its phrase's synthesis) are background work: another session's
    first audio goes first. When the endpoint takes the draft, what it has queued becomes urgent at once."""
    from agent.session import Draft

    async def main():
        w = PriorityWorker("test-draft")
        gate = threading.Event()
        ran = []
        w.submit(gate.wait)
        d = Draft("what time is it")
        first = d.run(w, ran.append, "draft tts")
        assert d.queued and d.queued[0][1].done() is False
        other = w.submit_with(Priority.URGENT, ran.append, "other first audio", deadline=time.monotonic() + 5)
        d2 = Draft("and tomorrow")
        late = d2.run(w, ran.append, "untaken draft")
        d.make_urgent()
        gate.set()
        await first
        await asyncio.wrap_future(other)
        await late
        assert ran == ["draft tts", "other first audio", "untaken draft"]
        assert d.priority == Priority.URGENT and not d.queued  # done items leave the list
        w.shutdown()

    asyncio.run(main())


def test_a_taken_draft_gets_its_ready_tokens_first_and_a_background_one_does_not():
    """A token a batched decode step already produced is handed over first (a reply's tokens are): once the endpoint
    takes a draft, its tokens are too — queued before the promotion or after. A draft still in the background keeps
    its ready tokens behind every other class of work."""
    from agent.session import Draft

    async def main():
        w = PriorityWorker("test-draft-ready")
        ran = []
        taken = Draft("what time is it")
        for queued in ("before the endpoint", "after it"):
            gate = threading.Event()
            w.submit(gate.wait)
            w.submit_with(Priority.PACED, ran.append, "overdue paced", deadline=time.monotonic() - 1.0)
            bg = Draft("still talking").run(w, ran.append, "background draft token", ready=lambda: True)
            tok = taken.run(w, ran.append, "taken draft token", ready=lambda: True)
            if queued == "before the endpoint":
                taken.make_urgent()  # promotes the queued token, probe and all
            gate.set()
            await tok
            await bg
        assert ran == ["taken draft token", "overdue paced", "background draft token"] * 2
        w.shutdown()

    asyncio.run(main())


def test_paced_hold_waits_only_paced_work_with_slack_while_urgent_work_runs_elsewhere():
    now = 100.0
    paced = Item(Priority.PACED, now + 2.0, 0, None)
    assert paced_hold(paced, now, True, False, 0.3) == pytest.approx(1.7)  # until 0.3 s before its deadline
    assert paced_hold(Item(Priority.PACED, now + 0.2, 1, None), now, True, False, 0.3) == 0.0  # due: runs
    assert paced_hold(Item(Priority.PACED, now - 1.0, 2, None), now, True, False, 0.3) == 0.0  # overdue
    assert paced_hold(paced, now, False, False, 0.3) == 0.0  # nothing urgent elsewhere
    assert paced_hold(paced, now, True, True, 0.3) == 0.0  # ready: its result is computed
    assert paced_hold(paced, now, True, False, 0.0) == 0.0  # off
    for p, d in ((Priority.URGENT, now + 0.1), (Priority.BACKGROUND, math.inf)):
        assert paced_hold(Item(p, d, 3, None), now, True, False, 0.3) == 0.0


def _gate(worker: PriorityWorker) -> threading.Event:
    """Occupy the worker with an urgent item until the returned event is set."""
    go, started = threading.Event(), threading.Event()
    worker.submit_with(Priority.URGENT, lambda: (started.set(), go.wait(10)))
    assert started.wait(5)
    return go


def test_a_paced_item_waits_for_urgent_work_on_another_worker_and_runs_when_it_ends():
    a, b = PriorityWorker("cp-a"), PriorityWorker("cp-b")
    CriticalPath(0.3).attach(a, b)
    try:
        go = _gate(a)  # an ASR final, say, on worker a
        now = time.monotonic()
        held = b.submit_with(Priority.PACED, lambda: time.monotonic(), deadline=now + 30)
        due = b.submit_with(Priority.PACED, lambda: time.monotonic(), deadline=now + 0.1)  # within the slack
        urgent = b.submit_with(Priority.URGENT, lambda: time.monotonic())
        assert due.result(5) and urgent.result(5)  # neither waits for a's urgent item
        time.sleep(0.2)
        assert not held.done()  # the paced item with 30 s to spare does
        t_release = time.monotonic()
        go.set()
        ran = held.result(5)
        assert t_release <= ran < t_release + 1.0  # woken when a's urgent item ended, not at its deadline
        assert b.held[0] == 1 and b.held[1] >= 0.2
        assert a.held == [0, 0.0]
    finally:
        a.shutdown(), b.shutdown()


def test_a_worker_does_not_hold_for_its_own_urgent_work_nor_when_off():
    """Off (slack 0): nothing waits. On: a's running urgent item counts as urgent work for b, not for a itself (a
    worker's own queue already orders its items)."""
    a, b = PriorityWorker("cp-c"), PriorityWorker("cp-d")
    cp = CriticalPath(0.0).attach(a, b)
    try:
        go = _gate(a)
        assert b.submit_with(Priority.PACED, lambda: 1, deadline=time.monotonic() + 30).result(5) == 1  # off
        go.set()
        cp.slack_s = 0.3
        go = _gate(a)
        assert cp.elsewhere(b) and not cp.elsewhere(a)
        own = a.submit_with(Priority.PACED, lambda: 2, deadline=time.monotonic() + 30)
        go.set()  # a's paced item runs after a's own urgent item, without holding for it
        assert own.result(5) == 2
        assert a.held == [0, 0.0] and b.held == [0, 0.0]
    finally:
        a.shutdown(), b.shutdown()


def test_the_runtime_joins_its_priority_workers_to_one_critical_path_from_the_config():
    """[pipeline] paced_yield_s reaches every PriorityWorker the sessions share (the GPU configs turn it on), through
    one CriticalPath, and can change while serving; a thread-pool judge (onnxruntime) is not part of it."""
    from agent.config import Config
    from agent.runtime import Runtime

    cfg = Config.load("gpu")
    assert cfg.pipeline.paced_yield_s > 0 and Config.load("cpu").pipeline.paced_yield_s == 0
    rt = Runtime(config=cfg, vad=None, asr=None, llm=None, tts=None)
    try:
        cps = {id(p.critical) for p in (rt.asr_pool, rt.llm_pool, rt.tts_pool)}
        assert len(cps) == 1 and rt.llm_pool.critical.slack_s == cfg.pipeline.paced_yield_s
        assert not hasattr(rt.judge_pool, "critical")
        rt.set_paced_yield(0.0)
        assert rt.asr_pool.critical.slack_s == 0.0 and cfg.pipeline.paced_yield_s == 0.0
    finally:
        rt.close()
