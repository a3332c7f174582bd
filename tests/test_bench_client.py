"""How the benchmark clients (bench/voice_to_voice.py, bench/sessions.py) tell the answer to a turn from a reply to
words the caller had not finished (a false cut-off): pure functions of what the client received."""

import numpy as np

from bench.common import answered, first_audible_ms, percentile, reply_chunks

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


def test_the_stuck_report_tells_a_spinning_thread_from_one_asleep_on_a_lock():
    import sys
    import threading
    import time

    import pytest

    from bench.sessions import native_threads

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
        rows = {r["python"]: r for r in native_threads(0.5)}
    finally:
        stop.set()
        lock.release()
        for t in threads:
            t.join()
    assert rows["qt-test-asleep"]["state"] == "S" and rows["qt-test-asleep"]["cpu_pct"] < 10
    assert rows["qt-test-spin"]["cpu_pct"] > 30
    assert rows["MainThread"]["comm"]
