"""/metrics, /healthz, /readyz on the same port as every transport: after a real turn over Quickturn's own protocol
the latency histograms have counts; a client over the session limit is refused, counted, and readiness drops."""

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from agent.audio import load_audio
from agent.client import stream_file
from agent.server import start_server
from transports_helpers import runtime_with


@pytest.fixture(scope="module")
def rt():
    yield from runtime_with(max_new_tokens=16, max_sessions=1)


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def samples(text: str) -> dict:
    """{(name, frozenset(labels)): value} from a Prometheus exposition."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_metrics_health_readiness_after_a_turn(rt, speech):
    clip = load_audio(speech / "speechbrain_harvard/spk1_snt3.wav")

    async def scenario():
        server, srv = await start_server(rt, "127.0.0.1", 0)
        base = f"http://127.0.0.1:{list(server.sockets)[0].getsockname()[1]}"
        g = lambda path: asyncio.to_thread(get, base + path)  # noqa: E731
        try:
            before = await g("/metrics")
            ready0 = await g("/readyz")
            turn = asyncio.create_task(stream_file(base.replace("http", "ws") + "/", clip, tail_s=4.0))
            await asyncio.sleep(1.0)
            during = await g("/readyz")  # the one session slot is taken
            # a second client is refused (server full) while the first is served
            async with connect(base.replace("http", "ws") + "/") as ws:  # refused on connect
                refusal = json.loads(await asyncio.wait_for(ws.recv(), 10))
            res = await turn
            await asyncio.sleep(0.2)
            return before, ready0, during, refusal, res, await g("/metrics"), await g("/healthz"), \
                await g("/readyz"), await g("/nope"), await g("/webrtc"), await g("/")
        finally:
            server.close()
            await server.wait_closed()

    before, ready0, during, refusal, res, after, health, ready1, missing, page, index = asyncio.run(scenario())
    assert before[0] == 200 and before[1].startswith("text/plain")
    assert ready0[0] == 200 and json.loads(ready0[2])["capacity_left"] == 1
    assert during[0] == 503 and json.loads(during[2]) == {"ready": False, "sessions": 1, "max_sessions": 1,
                                                         "capacity_left": 0, "draining": False, "stuck": []}
    assert refusal["type"] == "error" and refusal["code"] == "server_full"
    assert res.of("reply_done") and not res.errors

    m0, m = samples(before[2]), samples(after[2])
    assert m0[("quickturn_voice_to_voice_seconds_count", frozenset())] == 0
    assert m[("quickturn_voice_to_voice_seconds_count", frozenset())] == 1
    v2v = m[("quickturn_voice_to_voice_seconds_sum", frozenset())]
    assert 0 < v2v < 30 and abs(v2v * 1000 - res.of("latency")[0]["v2v_ms"]) < 1  # the turn the client saw
    for stage in ("endpoint", "transcript", "llm_first_token", "first_phrase", "tts_first_audio", "audio_sent"):
        assert m[("quickturn_stage_latency_seconds_count", frozenset({("stage", stage)}))] == 1, stage
    assert m[("quickturn_turns_total", frozenset({("transport", "quickturn"), ("interrupted", "false")}))] == 1
    assert m[("quickturn_sessions_total", frozenset({("transport", "quickturn")}))] == 1
    assert m[("quickturn_sessions_refused_total", frozenset({("transport", "quickturn")}))] == 1
    assert m[("quickturn_sessions_live", frozenset({("transport", "quickturn")}))] == 0
    assert m[("quickturn_sessions_capacity_left", frozenset())] == 1
    assert ("quickturn_gpu_memory_bytes", frozenset({("kind", "allocated")})) in m
    worker = lambda name, w: m[(name, frozenset({("worker", w)}))]  # noqa: E731
    assert 0 < worker("quickturn_worker_busy_ratio", "llm") <= 1  # the turn just ran on it
    assert worker("quickturn_worker_busy_ratio", "asr") > 0
    assert worker("quickturn_worker_urgent_wait_p95_seconds", "llm") >= 0  # its first phrase was urgent
    assert worker("quickturn_worker_queued", "tts") == 0  # the reply is done
    assert worker("quickturn_worker_paced_holds_total", "llm") == 0  # [pipeline] paced_yield_s is off on the CPU

    assert health[0] == 200 and json.loads(health[2])["status"] == "ok"
    assert ready1[0] == 200 and json.loads(ready1[2])["ready"] is True
    assert missing[0] == 404
    assert page[0] == 200 and "RTCPeerConnection" in page[2] and page[1].startswith("text/html")
    assert index[0] == 200 and "/v1/realtime" in index[2]


def test_healthz_reports_a_stuck_worker_and_recovers(rt):
    """A GPU call that never returns leaves every session waiting on that worker: /healthz says which worker, what
    it runs and for how long (503, for a liveness probe), and is "ok" again once the item ends."""
    import threading
    import time

    from agent.worker import Priority

    gate = threading.Event()

    def hangs():
        gate.wait(30)

    async def scenario():
        server, srv = await start_server(rt, "127.0.0.1", 0)
        base = f"http://127.0.0.1:{list(server.sockets)[0].getsockname()[1]}"
        old = rt.config.server.stuck_after_s
        rt.config.server.stuck_after_s = 0.3
        try:
            fut = rt.llm_pool.submit_with(Priority.URGENT, hangs)
            queued = rt.llm_pool.submit_with(Priority.BACKGROUND, time.sleep, 0)
            await asyncio.sleep(0.1)
            early = await asyncio.to_thread(get, base + "/healthz")  # running, not for long yet
            await asyncio.sleep(0.4)
            stuck = await asyncio.to_thread(get, base + "/healthz")
            not_ready = await asyncio.to_thread(get, base + "/readyz")
            refused = srv.hub.reserve("test"), srv.hub.last_refusal  # a new caller would wait for nothing
            gate.set()
            await asyncio.wrap_future(fut)
            await asyncio.wrap_future(queued)
            after = await asyncio.to_thread(get, base + "/healthz")
            ready = await asyncio.to_thread(get, base + "/readyz")
            return early, stuck, after, not_ready, refused, ready
        finally:
            gate.set()
            rt.config.server.stuck_after_s = old
            server.close()
            await server.wait_closed()

    early, stuck, after, not_ready, refused, ready = asyncio.run(scenario())
    assert early[0] == 200 and json.loads(early[2])["status"] == "ok"
    body = json.loads(stuck[2])
    assert stuck[0] == 503 and body["status"] == "stuck" and body["stuck"] == ["llm"]
    llm = body["workers"]["llm"]
    assert llm["running"].endswith("hangs") and llm["running_s"] >= 0.3 and llm["queued"] == 1
    assert body["workers"]["asr"]["running"] is None
    assert after[0] == 200 and json.loads(after[2])["status"] == "ok"
    assert not_ready[0] == 503 and json.loads(not_ready[2])["stuck"] == ["llm"]
    sid, (code, why) = refused
    assert sid is None and code == "server_busy" and "llm worker" in why
    assert ready[0] == 200 and json.loads(ready[2])["ready"]
