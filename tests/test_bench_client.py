"""How the benchmark clients (bench/voice_to_voice.py, bench/sessions.py) tell the answer to a turn from a reply to
words the caller had not finished (a false cut-off): pure functions of what the client received."""

import contextlib
import sys
import threading
import time

import numpy as np
import pytest

from bench.common import answered, first_audible_ms, percentile, reply_chunks, result_header

RATE = 16_000


def pcm(loud_at: int, n: int = 1600) -> bytes:
    x = np.zeros(n, np.int16)
    if loud_at < n:
        x[loud_at:] = 10_000
    return x.tobytes()


def test_a_reply_interrupted_before_the_end_of_speech_is_not_the_answer():
    t_end = 10.0
    chunks = [(9.0, pcm(0)), (9.1, pcm(0)),  # the cut-off reply, arriving while the caller still spoke
              (10.6, pcm(800)), (10.7, pcm(0))]  # the answer
    events = [("flush", 3, None, 9.3), ("reply_done", 3, True, 9.35), ("reply_done", 4, False, 11.5)]
    assert answered(events, t_end) == 4
    got = reply_chunks(chunks, events, t_end)
    assert [at for at, _ in got] == [10.6, 10.7]
    assert abs(first_audible_ms(got, RATE, t_end, 0.02) - 650.0) < 1e-6  # 600 ms + 800 samples at 16 kHz


def test_an_interrupted_reply_done_after_the_end_of_speech_does_not_end_the_wait():
    events = [("flush", 3, None, 10.05), ("reply_done", 3, True, 10.1)]
    assert answered(events, 10.0) is None
    # and audio of the interrupted reply that arrived after the end of speech, before its flush, is not counted
    chunks = [(10.02, pcm(0)), (10.9, pcm(0))]
    assert [at for at, _ in reply_chunks(chunks, events, 10.0)] == [10.9]


def test_a_reply_completed_before_the_end_of_speech_is_not_the_answer():
    events = [("reply_done", 2, False, 8.0)]
    assert answered(events, 10.0) is None
    assert answered(events + [("reply_done", 3, False, 10.4)], 10.0) == 3


def test_silent_audio_is_no_reply():
    assert first_audible_ms([(10.2, pcm(10_000, 1600))], RATE, 10.0, 0.02) is None
    assert first_audible_ms([], RATE, 10.0, 0.02) is None


def test_a_turn_without_a_reply_makes_the_tail_infinite():
    inf = float("inf")
    assert percentile([100.0, 200.0, 300.0, inf], 50) == 250.0
    assert percentile([100.0, 200.0, inf, inf], 95) == inf  # numpy alone gives nan here
    assert percentile([100.0, inf], 100) == inf


def test_few_callers_call_long_enough_for_several_turns():
    """bench/sessions.py: one caller in a 12 s run made one turn (sessions_gpujudge_h100.json), so that turn alone
    was the run's p95; few callers now call for about --min-turns turns, never longer than 4 x --seconds."""
    from bench.sessions import TURN_S, run_seconds

    assert run_seconds(1, 12, 6) == 48  # 6 turns would take 54 s: capped at 4 x 12
    assert run_seconds(2, 20, 6) == 3 * TURN_S  # 27 s
    assert run_seconds(32, 12, 6) == 12  # many callers: --seconds
    assert run_seconds(1, 12, 0) == 12  # the unmeasured warm-up turn


@contextlib.contextmanager
def spinning_and_asleep():
    """Two threads for the tests of bench/sessions.py's thread reports: "qt-test-spin" busy in Python and
    "qt-test-asleep" blocked on a lock, for as long as the block runs (Linux only: the reports read /proc)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    lock, stop = threading.Lock(), threading.Event()
    lock.acquire()

    def spin():
        while not stop.is_set():
            sum(range(1000))

    threads = [threading.Thread(target=spin, name="qt-test-spin"),
               threading.Thread(target=lock.acquire, name="qt-test-asleep")]
    for t in threads:
        t.start()
    try:
        time.sleep(0.1)
        yield
    finally:
        stop.set()
        lock.release()
        for t in threads:
            t.join()


def test_the_stuck_report_tells_a_spinning_thread_from_one_asleep_on_a_lock():
    from bench.sessions import native_threads

    with spinning_and_asleep():
        rows = {r["python"]: r for r in native_threads(0.5)}
    assert rows["qt-test-asleep"]["state"] == "S" and rows["qt-test-asleep"]["cpu_pct"] < 10
    assert rows["qt-test-spin"]["cpu_pct"] > 30
    assert rows["MainThread"]["comm"]


def test_a_runs_thread_cpu_names_the_busy_thread_and_leaves_out_the_idle_one():
    from bench.sessions import thread_cpu, thread_ticks

    with spinning_and_asleep():
        t0, before = time.monotonic(), thread_ticks()
        time.sleep(0.6)
        cpu = thread_cpu(before, thread_ticks(), time.monotonic() - t0)
    assert cpu["qt-test-spin"] > 30
    assert "qt-test-asleep" not in cpu  # 0 % is left out
    assert cpu["total"] >= cpu["qt-test-spin"]


def test_nvidia_smi_clock_samples_are_summarized_and_unreadable_lines_skipped():
    from bench.common import summarize_clock_lines

    s = summarize_clock_lines(["1980, 2619, 350.5, 45, 80\n", "[N/A], 2619, 1, 1, 1", "1755, 2619, 420.1, 50, 95",
                               "clocks.sm [MHz], x", "1, 2"])
    assert s["samples"] == 2
    assert s["clocks.sm"] == {"min": 1755.0, "median": 1867.5, "max": 1980.0}
    assert s["power.draw"]["max"] == 420.1 and s["utilization.gpu"]["min"] == 80.0
    assert summarize_clock_lines([]) is None and summarize_clock_lines(["N/A"]) is None


def test_the_machine_probe_times_the_hosts_python_everywhere():
    import torch

    from bench.common import machine_probe

    m = machine_probe()
    assert m["python_loop_ms"] > 0
    # without CUDA (CI) the GPU's numbers are absent rather than made up
    assert ("matmul_tflops" in m) == torch.cuda.is_available()


def test_lazy_work_counts_each_triton_specialization_and_its_time_across_threads():
    """bench/sessions.py `LazyWork`: Triton calls jit_cache_hook before it loads or compiles a new specialization
    and jit_post_compile_hook after; the counter times each pair on its own thread, keeps whatever hooks were there
    (and never returns a true value from the first, which would make Triton skip the compile)."""
    import triton.knobs as knobs

    from bench.sessions import LazyWork

    calls = []
    prev = knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook
    knobs.runtime.jit_cache_hook = lambda **kw: calls.append("cache") or None
    knobs.runtime.jit_post_compile_hook = lambda **kw: calls.append("post")
    try:
        lw = LazyWork()
        assert lw.hooked
        lw.start()

        class Fn:
            def __init__(self, name):
                self.name = name

        def compile_one(name, seconds):
            assert not knobs.runtime.jit_cache_hook(fn=Fn(name))
            time.sleep(seconds)
            knobs.runtime.jit_post_compile_hook(fn=Fn(name), repr=f"{name}[num_warps=4](x_ptr: *fp32, n: i32)")

        threads = [threading.Thread(target=compile_one, args=("_rmsnorm_kernel", 0.05)),
                   threading.Thread(target=compile_one, args=("_rope_kv_kernel", 0.01))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        compile_one("_rmsnorm_kernel", 0.0)
        r = lw.report()
        assert r["triton_specializations"] == 3
        assert r["triton_by_kernel"]["_rmsnorm_kernel"]["n"] == 2
        assert r["triton_by_kernel"]["_rmsnorm_kernel"]["ms"] >= 45  # the 50 ms one, not mixed with the other thread's
        assert 5 <= r["triton_by_kernel"]["_rope_kv_kernel"]["ms"] < 45
        assert r["triton_by_kernel"]["_rope_kv_kernel"]["specializations"] == [
            "_rope_kv_kernel[num_warps=4](x_ptr: *fp32, n: i32)"]
        assert calls.count("cache") == 3 and calls.count("post") == 3  # the hooks already there still ran
        lw.start()
        assert lw.report()["triton_specializations"] == 0  # per run
    finally:
        knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook = prev


def test_after_endpoint_leaves_out_answered_turns_without_a_server_trace():
    """bench/sessions.py: the after-endpoint time needs the server's endpoint stage. A turn answered (audio came) but
    whose trace never did (the call ended first) is left out, not infinite; a turn never answered is infinite.
    At 96 callers 31-60 answered turns had no trace, and the after-endpoint p95 read "inf" with every turn answered."""
    import math
    from types import SimpleNamespace as NS

    from bench.sessions import after_endpoint_ms

    turns = [NS(latency_ms=None, stages={}), NS(latency_ms=500.0, stages={"endpoint": 120.0}),
             NS(latency_ms=900.0, stages={}), NS(latency_ms=None, stages={"endpoint": 80.0})]
    assert after_endpoint_ms(turns) == [math.inf, 380.0, None, math.inf]


def test_judge_sure_turns_are_those_the_judge_ended_at_the_minimum_delay():
    """bench/sessions.py `judge_sure`: the v2v over the turns whose endpoint came at [turn] min_delay_ms, apart from
    the judge's unsure ones (800 ms - 1 s of silence). An unanswered sure turn makes its tail infinite; a turn without
    the server's trace is counted, not guessed."""
    from types import SimpleNamespace as NS

    from bench.sessions import judge_sure

    def turn(lat, delay, endpoint=70.0):
        info = {} if delay is None else {"endpoint_delay_ms": delay}
        return NS(latency_ms=lat, stages={"endpoint": endpoint}, info=info)

    turns = [turn(200.0, 64), turn(300.0, 64), turn(900.0, 800, 840.0), turn(1100.0, 1000, 1040.0),
             turn(250.0, None)]
    r = judge_sure(turns, 64)
    assert (r["turns"], r["of"], r["without_trace"]) == (2, 5, 1)
    assert (r["v2v_p50_ms"], r["v2v_p95_ms"], r["after_endpoint_p95_ms"]) == (200.0, 300.0, 230.0)
    assert r["meets_500ms"]
    assert not judge_sure(turns, 64, refused=1)["meets_500ms"]  # refused callers fail it, as in meets_500ms
    late = judge_sure(turns + [turn(None, 64)], 64)
    assert late["v2v_p95_ms"] == "inf" and not late["meets_500ms"]
    assert judge_sure(turns, 800)["turns"] == 3  # the bound is the config's, not a constant


def test_a_result_header_names_the_host_cpu_beside_the_device():
    """Two machines with the same GPU can time host-bound work differently: every result says which host ran it."""
    h = result_header(x=1)
    assert h["host"] and "cores" in h["host"] and h["x"] == 1
    assert h["device"].startswith("cpu: ") == (h["device"] == f"cpu: {h['host']}")


def test_asr_decode_modes_are_checked_before_any_model_loads():
    from bench.sessions import parse_asr_decode

    assert parse_asr_decode("config") == []
    assert parse_asr_decode("token,chunked") == ["token", "chunked"]
    for bad in ("tok", "token,", "chunked,greedy"):
        with pytest.raises(SystemExit, match="--asr-decode"):
            parse_asr_decode(bad)


def test_first_phrase_burst_settings_are_checked_before_any_model_loads():
    from bench.sessions import parse_burst

    assert parse_burst("config") == []
    assert parse_burst("off,on") == [False, True]
    for bad in ("yes", "off,", "on,true"):
        with pytest.raises(SystemExit, match="--first-phrase-burst"):
            parse_burst(bad)
