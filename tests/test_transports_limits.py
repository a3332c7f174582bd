"""Limits wired into the real server (agent/transports/router.py, guard.py, agent/server.py) on 127.0.0.1 with the
websockets client: Origin allow-list, sessions per address (and X-Forwarded-For from trusted proxies only), idle
timeout and maximum session length, slow consumers (a client that stops reading), TLS, what reaches the logs, and
what a client may not choose (files, models)."""

import asyncio
import base64
import contextlib
import json
import logging
import socket
import ssl
import sys
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agent.audio import INTERNAL_RATE, float_to_pcm16, load_audio, resample
from agent.limits import LimitsError
from agent.server import start_server
from transports_helpers import shared_runtime

TOKEN = "test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def rt():
    rt = shared_runtime()
    old = rt.config.llm.max_new_tokens
    rt.config.llm.max_new_tokens = 40
    yield rt
    rt.config.llm.max_new_tokens = old


@contextlib.contextmanager
def settings(rt, **kw):
    """[server] settings for one test (the runtime is shared); restored after."""
    cfg = rt.config.server
    old = {k: getattr(cfg, k) for k in kw}
    for k, v in kw.items():
        assert hasattr(cfg, k), k
        setattr(cfg, k, v)
    try:
        yield cfg
    finally:
        for k, v in old.items():
            setattr(cfg, k, v)


def run(rt, fn, timeout=120):
    async def main():
        server, srv = await start_server(rt, "127.0.0.1", 0)
        port = list(server.sockets)[0].getsockname()[1]
        try:
            return await asyncio.wait_for(fn(port, srv), timeout)
        finally:
            server.close()
            await server.wait_closed()
    return asyncio.run(main())


async def refused_status(url, **kw) -> tuple[int, dict]:
    with pytest.raises(InvalidStatus) as e:
        async with connect(url, **kw):
            pass
    r = e.value.response
    return r.status_code, json.loads(r.body)


async def until(pred, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()


async def drain(ws, timeout: float = 15.0) -> tuple[list, int | None]:
    """Read until the server closes: (text messages as JSON, close code)."""
    got = []
    try:
        async with asyncio.timeout(timeout):
            async for m in ws:
                if isinstance(m, str):
                    got.append(json.loads(m))
    except (ConnectionClosed, TimeoutError):
        pass
    return got, ws.close_code


# ------------------------------------------------------------------------------------------------- origins
def test_origin_allow_list(rt):
    async def scenario(port, srv):
        out = {}
        for path in ("/", "/v1/realtime", "/twilio", "/webrtc/ws"):
            url = f"ws://127.0.0.1:{port}{path}"
            out[path, "evil"] = await refused_status(url, origin="https://evil.example")
            out[path, "lookalike"] = await refused_status(url, origin="https://app.example.com.evil.example")
            async with connect(url, origin="https://app.example.com") as ws:  # listed
                out[path, "listed"] = ws.close_code
            async with connect(url) as ws:  # no Origin: not a browser (SDK, Twilio): the API key guards these
                out[path, "none"] = ws.close_code
        return out, dict(srv.hub.refusals)

    with settings(rt, allowed_origins=["https://app.example.com"]):
        out, refusals = run(rt, scenario)
    for path in ("/", "/v1/realtime", "/twilio", "/webrtc/ws"):
        for who in ("evil", "lookalike"):
            status, body = out[path, who]
            assert status == 403 and body["error"]["code"] == "origin_not_allowed", (path, who)
        assert out[path, "listed"] is None and out[path, "none"] is None  # opened
    assert refusals["origin_not_allowed"] == 8

    async def same_origin(port, srv):  # default: an empty list means the page's own origin only
        async with connect(f"ws://127.0.0.1:{port}/", origin=f"http://127.0.0.1:{port}"):
            pass
        return await refused_status(f"ws://127.0.0.1:{port}/", origin=f"http://localhost:{port}")

    status, body = run(rt, same_origin)
    assert status == 403 and body["error"]["code"] == "origin_not_allowed"


# ------------------------------------------------------------------------------------ sessions per address
def test_sessions_per_address(rt):
    async def scenario(port, srv):
        url = f"ws://127.0.0.1:{port}/"
        a, b = await connect(url), await connect(url)
        third = await refused_status(url)
        live = dict(srv.router.addresses.live)
        await a.close()
        await until(lambda: srv.router.addresses.live.get("127.0.0.1") == 1, 5)
        c = await connect(url)  # a slot was released when `a` ended
        await b.close()
        await c.close()
        await until(lambda: not srv.router.addresses.live, 5)
        return third, live, dict(srv.router.addresses.live), dict(srv.hub.refusals)

    with settings(rt, max_sessions_per_address=2, per_address_exempt=[]):
        (status, body), live, after, refusals = run(rt, scenario)
    assert status == 429 and body["error"]["code"] == "too_many_sessions"
    assert live == {"127.0.0.1": 2} and after == {} and refusals["too_many_sessions"] == 1

    async def loopback_exempt(port, srv):  # the default exempts loopback (local benchmarks, a proxy on this host)
        conns = [await connect(f"ws://127.0.0.1:{port}/") for _ in range(3)]
        for c in conns:
            await c.close()
        return dict(srv.hub.refusals)

    with settings(rt, max_sessions_per_address=1):
        assert run(rt, loopback_exempt) == {}


def test_forwarded_for_counts_only_behind_a_trusted_proxy(rt):
    def xff(ip):
        return {"additional_headers": {"X-Forwarded-For": ip}}

    async def scenario(port, srv):
        url = f"ws://127.0.0.1:{port}/"
        a = await connect(url, **xff("203.0.113.5"))
        same = await refused_status(url, **xff("203.0.113.5"))
        spoof = await refused_status(url, **xff("9.9.9.9, 203.0.113.5"))  # left part is the client's own text
        other = await connect(url, **xff("198.51.100.7"))
        live = dict(srv.router.addresses.live)
        await a.close()
        await other.close()
        return same, spoof, live

    with settings(rt, max_sessions_per_address=1, per_address_exempt=[], trusted_proxies=["127.0.0.1/32"]):
        same, spoof, live = run(rt, scenario)
    assert same[0] == 429 and spoof[0] == 429
    assert live == {"203.0.113.5": 1, "198.51.100.7": 1}

    async def untrusted(port, srv):  # without trusted_proxies the header means nothing: all are 127.0.0.1
        a = await connect(f"ws://127.0.0.1:{port}/", **xff("203.0.113.5"))
        r = await refused_status(f"ws://127.0.0.1:{port}/", **xff("198.51.100.7"))
        await a.close()
        return r

    with settings(rt, max_sessions_per_address=1, per_address_exempt=[]):
        assert run(rt, untrusted)[0] == 429


def test_concurrent_handshakes_from_one_address_never_exceed_the_limit(rt):
    """Handshakes race (the count is checked before the upgrade and taken after it): however they interleave,
    exactly `limit` connections stay open and every other one is refused — 429 before the upgrade, or an error
    event and close 1013 after it."""
    async def one(url):
        try:
            ws = await connect(url)
        except InvalidStatus as e:
            return ("http", e.response.status_code, json.loads(e.response.body)["error"]["code"])
        try:
            m = await asyncio.wait_for(ws.recv(), 1.0)
            await ws.wait_closed()
            return ("ws", ws.close_code, json.loads(m)["code"])
        except asyncio.TimeoutError:
            return ("open", ws, None)
        except ConnectionClosed:
            return ("ws", ws.close_code, None)

    async def scenario(port, srv):
        res = await asyncio.gather(*[one(f"ws://127.0.0.1:{port}/") for _ in range(8)])
        live = dict(srv.router.addresses.live)
        for kind, ws, _ in res:
            if kind == "open":
                await ws.close()
        return res, live

    with settings(rt, max_sessions_per_address=2, per_address_exempt=[]):
        res, live = run(rt, scenario)
    assert sum(1 for r in res if r[0] == "open") == 2 and live == {"127.0.0.1": 2}
    refused = [r for r in res if r[0] != "open"]
    assert len(refused) == 6
    assert all(r in (("http", 429, "too_many_sessions"), ("ws", 1013, "too_many_sessions")) for r in refused), res


def test_a_handshake_that_lost_the_race_is_refused_after_the_upgrade(rt, monkeypatch):
    """Fault injection for the race above: another session from the same address is admitted between this
    handshake's check and its start. The loser gets the error event and close 1013; nothing leaks."""
    from agent.transports.router import Router

    orig = Router.process_request

    def racing(self, connection, request):
        r = orig(self, connection, request)
        if r is None and request.headers.get("X-Test-Race"):
            self.addresses.acquire(connection.remote_address)  # the winner of the race, admitted meanwhile
        return r
    monkeypatch.setattr(Router, "process_request", racing)

    async def scenario(port, srv):
        async with connect(f"ws://127.0.0.1:{port}/", additional_headers={"X-Test-Race": "1"}) as ws:
            msgs, code = await drain(ws, 5)
        during = dict(srv.router.addresses.live)
        srv.router.addresses.release(("127.0.0.1", 0))  # the injected winner leaves
        async with connect(f"ws://127.0.0.1:{port}/"):  # and the next one gets in
            pass
        await until(lambda: not srv.router.addresses.live, 5)
        return msgs, code, during, dict(srv.router.addresses.live), dict(srv.hub.refusals)

    with settings(rt, max_sessions_per_address=1, per_address_exempt=[]):
        msgs, code, during, after, refusals = run(rt, scenario)
    assert [m["code"] for m in msgs] == ["too_many_sessions"] and msgs[0]["fatal"] is True and code == 1013
    assert during == {"127.0.0.1": 1} and after == {} and refusals == {"too_many_sessions": 1}


# --------------------------------------------------------------------------------------------------- timers
def test_idle_timeout_and_max_session_length(rt):
    silence = float_to_pcm16(np.zeros(1600, np.float32))  # 100 ms at 16 kHz

    async def scenario(port, srv):
        url = f"ws://127.0.0.1:{port}"
        t0 = time.monotonic()
        async with connect(url + "/") as idle:  # says nothing
            idle_msgs, idle_code = await drain(idle)
        idle_s = time.monotonic() - t0
        async with connect(url + "/v1/realtime") as rt_idle:  # Realtime: the error in its own format
            rt_msgs, rt_code = await drain(rt_idle)

        async def active(limit_s):  # streams silence in real time: never idle
            async with connect(url + "/") as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
                t0 = time.monotonic()
                reader = asyncio.create_task(drain(ws, limit_s + 10))
                k = 0
                while not reader.done() and time.monotonic() - t0 < limit_s:
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(silence)
                    k += 1
                    await asyncio.sleep(max(0.0, t0 + k * 0.1 - time.monotonic()))
                if not reader.done():
                    await ws.send(json.dumps({"type": "stop"}))
                msgs, code = await reader
                return msgs, code, time.monotonic() - t0

        lived = await active(2.5)  # idle_timeout_s = 1 but it keeps talking; max_session_s = 4
        srv.rt.config.server.max_session_s = 1.5
        too_long = await active(6.0)
        return idle_msgs, idle_code, idle_s, rt_msgs, rt_code, lived, too_long, dict(srv.hub.refusals)

    with settings(rt, idle_timeout_s=1.0, max_session_s=4.0):
        idle_msgs, idle_code, idle_s, rt_msgs, rt_code, lived, too_long, refusals = run(rt, scenario)
    assert [m["code"] for m in idle_msgs] == ["idle_timeout"] and idle_msgs[0]["fatal"] is True
    assert idle_code == 1000 and 0.9 < idle_s < 4.0
    assert rt_msgs[0]["type"] == "session.created" and rt_msgs[-1]["type"] == "error"
    assert rt_msgs[-1]["error"]["code"] == "idle_timeout" and rt_code == 1000
    msgs, code, dur = lived
    assert not [m for m in msgs if m["type"] == "error"] and dur >= 2.5  # active for 2.5 s > idle 1 s
    msgs, code, dur = too_long
    assert [m["code"] for m in msgs if m["type"] == "error"] == ["session_too_long"] and code == 1000
    assert 1.4 < dur < 4.0
    assert refusals == {"idle_timeout": 2, "session_too_long": 1}


# ------------------------------------------------------------------------------------------ slow consumers
async def _slow_realtime_client(port: int):
    """A real client that will stop reading: a small kernel receive buffer and a websockets queue of one frame,
    so what the server sends piles up on the server's side, as with a client whose network or app stalled."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    ws = await connect(f"ws://127.0.0.1:{port}/v1/realtime", sock=sock, max_queue=1, max_size=None)
    created = json.loads(await ws.recv())
    assert created["type"] == "session.created"
    await ws.send(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "Tell me a long story about a dragon and a lighthouse."}]}}))
    await ws.send(json.dumps({"type": "response.create"}))
    return ws  # ... and it reads nothing more


@pytest.mark.parametrize("mode", ["send_timeout", "backlog"])
def test_a_client_that_stops_reading_is_dropped(rt, mode):
    """send_timeout: a send that makes no progress for send_timeout_s drops the client. backlog: with no send
    deadline, the session events waiting for the client are bounded by max_outbound_events. Either way the server
    holds at most write_limit (+ one message) for the connection, then tells the client why and closes 1008."""
    write_limit = 4096
    limits = {"send_timeout": dict(send_timeout_s=1.0, max_outbound_events=2000),
              "backlog": dict(send_timeout_s=0.0, max_outbound_events=5)}[mode]

    async def scenario(port, srv):
        ws = await _slow_realtime_client(port)
        buffered, backlog = [], []

        def sample():
            for g in list(srv.router.guards):
                buffered.append(g.ws.transport.get_write_buffer_size())
                backlog.append(g.backlog() if g.backlog else 0)
            return srv.hub.refusals.get("slow_consumer", 0) > 0

        dropped = await until(sample, 60, 0.02)
        reading = asyncio.create_task(drain(ws))  # the client reads again: what was sent, then why it was closed
        released = await until(lambda: not srv.hub.sessions, 10)
        msgs, code = await reading
        return dropped, released, buffered, backlog, msgs, code

    # a small kernel send buffer too: loopback's autotuning would otherwise absorb a whole reply (MBs)
    with settings(rt, write_limit=write_limit, send_buffer_bytes=8192, idle_timeout_s=0, **limits):
        dropped, released, buffered, backlog, msgs, code = run(rt, scenario)
    assert dropped and released  # the session was closed and its resources released
    largest = max(len(json.dumps(m)) for m in msgs)
    assert max(buffered) <= write_limit + 2 * largest + 64, (max(buffered), largest)
    if mode == "backlog":
        # polled every 100 ms: the limit plus what a session says in that time (a few events), never more
        assert max(backlog) <= limits["max_outbound_events"] + 8, backlog
    assert any(m["type"] == "response.output_audio.delta" for m in msgs)  # it was talking
    assert msgs[-1]["type"] == "error" and msgs[-1]["error"]["code"] == "slow_consumer"
    assert code == 1008


def test_twilio_audio_faster_than_real_time_is_cut(rt):
    """/twilio cannot carry the API key (Twilio sends no headers of ours), so its audio is held to real time like
    the Quickturn protocol: a stream at 4x is ended within about (slack + backlog) / 3 s; one in real time is not."""
    from agent.audio import ulaw_encode

    frame = base64.b64encode(ulaw_encode(np.zeros(160, np.float32))).decode()

    async def stream(port, speed: float, seconds: float):
        async with connect(f"ws://127.0.0.1:{port}/twilio") as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(json.dumps({"event": "start", "streamSid": "MZ1", "start": {
                "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"], "customParameters": {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
            t0 = time.monotonic()
            k = 0
            try:
                while time.monotonic() - t0 < seconds:
                    await ws.send(json.dumps({"event": "media", "streamSid": "MZ1",
                                              "media": {"track": "inbound", "payload": frame}}))
                    k += 1
                    await asyncio.sleep(max(0.0, t0 + k * 0.02 / speed - time.monotonic()))
            except ConnectionClosed:
                return time.monotonic() - t0, True
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps({"event": "stop", "streamSid": "MZ1"}))
            return time.monotonic() - t0, False

    async def scenario(port, srv):
        fast = await stream(port, 4.0, 20.0)
        steady = await stream(port, 1.0, 2.0)
        return fast, steady

    with settings(rt, realtime_slack_s=1.0, realtime_backlog_s=2.0):
        (t_fast, cut_fast), (t_steady, cut_steady) = run(rt, scenario)
    assert cut_fast and t_fast < (1.0 + 2.0) / 3 + 2.0  # caught after ~1 s (no backlog credit at the start)
    assert not cut_steady and t_steady >= 2.0


# ------------------------------------------------------------------------------------------------------ TLS
def test_tls_serves_wss_and_refuses_half_a_config(rt, tmp_path):
    from test_limits import _self_signed

    cert, key = _self_signed(tmp_path)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def scenario(port, srv):
        async with connect(f"wss://127.0.0.1:{port}/", ssl=client_ctx) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
            ready = json.loads(await ws.recv())
        with pytest.raises((ConnectionClosed, OSError, asyncio.TimeoutError, InvalidStatus, Exception)):
            async with connect(f"ws://127.0.0.1:{port}/", open_timeout=3):  # plain text to a TLS port
                pass
        return ready

    with settings(rt, tls_cert=str(cert), tls_key=str(key)):
        assert run(rt, scenario)["type"] == "ready"
    with settings(rt, tls_cert=str(cert), tls_key=""):
        with pytest.raises(LimitsError, match="tls_key"):
            run(rt, lambda port, srv: asyncio.sleep(0))
    with settings(rt, tls_cert=str(tmp_path / "nope.pem"), tls_key=str(key)):
        with pytest.raises(LimitsError, match="no such file"):
            run(rt, lambda port, srv: asyncio.sleep(0))


def test_serve_refuses_half_a_tls_config_before_loading_models(tmp_path):
    import subprocess
    from pathlib import Path

    r = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--port", "0", "--set",
                        f'server.tls_cert="{tmp_path / "cert.pem"}"'], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert r.returncode == 2
    assert "tls_cert is set but tls_key is not" in r.stderr and "loaded" not in r.stdout


# ----------------------------------------------------------------------------------------------------- logs
class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        if record.name.startswith("websockets.client"):  # this test's own client, not the server
            return
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.lines.append(f"{record.name}: {text}")


def _talk_and_capture(rt, clip24, content: bool):
    """One real Realtime session (API key in the Authorization header, a real clip as base64 appends, server VAD,
    its transcript), plus a connection with ?api_key= in the URL, with every logger at DEBUG."""
    chunks = [base64.b64encode(float_to_pcm16(clip24[i:i + 4800])).decode() for i in range(0, len(clip24), 4800)]

    async def scenario(port, srv):
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with connect(f"ws://127.0.0.1:{port}/v1/realtime", additional_headers=auth, max_size=None) as ws:
            for c in chunks:
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": c}))
            transcript = None
            async with asyncio.timeout(60):
                while transcript is None:
                    m = json.loads(await ws.recv())
                    if m["type"] == "conversation.item.input_audio_transcription.completed":
                        transcript = m["transcript"]
            async with asyncio.timeout(60):  # and its reply (reply text, base64 audio both ways)
                while json.loads(await ws.recv())["type"] != "response.output_audio_transcript.done":
                    pass
        async with connect(f"ws://127.0.0.1:{port}/?api_key={TOKEN}"):
            pass
        return transcript

    cap = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(cap)
    root.setLevel(logging.DEBUG)
    noisy = {n: logging.getLogger(n).level for n in ("websockets", "websockets.server", "quickturn")}
    for n in noisy:
        logging.getLogger(n).setLevel(logging.DEBUG)
    try:
        with settings(rt, api_key=TOKEN, log_content=content):
            transcript = run(rt, scenario)
    finally:
        root.removeHandler(cap)
        root.setLevel(old_level)
        for n, lvl in noisy.items():
            logging.getLogger(n).setLevel(lvl)
    return transcript, "\n".join(cap.lines), chunks


def test_no_audio_transcripts_or_keys_in_logs_unless_asked(rt, speech, monkeypatch):
    monkeypatch.delenv("QUICKTURN_LOG_CONTENT", raising=False)
    monkeypatch.delenv("QUICKTURN_API_KEY", raising=False)
    clip = load_audio(speech / "speechbrain_harvard/spk2_snt2.wav")  # "What joy there is in living."
    clip24 = resample(np.concatenate([np.zeros(3200, np.float32), clip, np.zeros(20_000, np.float32)]),
                      INTERNAL_RATE, 24_000)

    transcript, logs, chunks = _talk_and_capture(rt, clip24, content=False)
    assert "joy" in transcript.lower()
    assert "websockets" in logs and "TEXT [" in logs  # DEBUG logging did run, frames were there
    assert TOKEN not in logs
    assert transcript not in logs and transcript.strip(" .").lower() not in logs.lower()
    speechy = chunks[2:-3]  # 200 ms of speech each, as base64

    def leaked(logs):  # websockets shows a frame's beginning and end: look for either end of each chunk
        return [c for c in speechy if c[:16] in logs or c[-16:] in logs]
    assert not leaked(logs)  # no base64 audio (the client's)
    assert '"delta": "' not in logs  # nor the server's (audio deltas are base64)

    transcript2, logs2, _ = _talk_and_capture(rt, clip24, content=True)  # asked for: the test can fail
    assert transcript2 in logs2 and TOKEN not in logs2  # the key never, even then
    assert leaked(logs2)


# ------------------------------------------------------------------------------- what a client may not choose
def test_clients_cannot_name_files_or_models(rt, tmp_path):
    """session.update may not pick a voice, a model or a transcription model: a path from a client is refused or
    ignored, never opened (an audit hook watches every open() in this process); configured paths are shown to
    clients by file name only; oversized text is refused."""
    bait = tmp_path / "bait"
    bait.mkdir()
    (bait / "voice.onnx").write_bytes(b"not a model")
    opened: list[str] = []

    def hook(event, args):
        if event == "open" and args and str(bait) in str(args[0]):
            opened.append(str(args[0]))
    sys.addaudithook(hook)

    async def scenario(port, srv):
        async with connect(f"ws://127.0.0.1:{port}/v1/realtime") as ws:
            created = json.loads(await ws.recv())

            async def ask(session=None, **event):
                await ws.send(json.dumps({"type": "session.update", "session": session} if session is not None
                                         else event))
                return json.loads(await ws.recv())

            answers = [
                await ask({"audio": {"output": {"voice": str(bait / "voice.onnx")}}}),
                await ask({"audio": {"output": {"voice": "../../etc/passwd"}}}),
                await ask({"model": str(bait / "model.gguf"),
                           "audio": {"input": {"transcription": {"model": str(bait)}}}}),
                await ask({"audio": {"input": {"transcription": "/etc/passwd"}}}),
                await ask({"instructions": "x" * 100_000}),
                await ask(type="conversation.item.create", item={
                    "type": "message", "role": "user", "id": "i" * 500,
                    "content": [{"type": "input_text", "text": "hi"}]}),
                await ask(type="conversation.item.create", item={
                    "type": "message", "role": "user", "content": [{"type": "input_text", "text": "y" * 50_000}]}),
            ]
            return created, answers

    old_voice = rt.config.tts.voice
    rt.config.tts.voice = "/srv/secret/voices/en_US-joe-medium.onnx"  # as if configured by path (already loaded)
    try:
        created, answers = run(rt, scenario)
    finally:
        rt.config.tts.voice = old_voice
    assert created["session"]["audio"]["output"]["voice"] == "en_US-joe-medium.onnx"
    assert "/srv/secret" not in json.dumps(created)
    v1, v2, models_, tr, instr, item_id, text = answers
    for a in (v1, v2):
        assert a["type"] == "error" and a["error"]["param"] == "session.audio.output.voice"
    # accepted and ignored: the session keeps the server's models
    assert models_["type"] == "session.updated"
    assert models_["session"]["audio"]["input"]["transcription"]["model"] == created["session"]["audio"]["input"][
        "transcription"]["model"]
    assert str(bait) not in json.dumps(models_)
    assert tr["type"] == "error" and tr["error"]["param"] == "session.audio.input.transcription"
    assert instr["type"] == "error" and instr["error"]["param"] == "session.instructions"
    assert item_id["type"] == "error" and item_id["error"]["param"] == "item.id"
    assert text["type"] == "error" and text["error"]["param"] == "item.content"
    assert opened == []


def test_static_files_cannot_be_reached_by_path(rt):
    import urllib.request

    async def scenario(port, srv):
        def get(path):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, b""
        loop = asyncio.get_running_loop()
        return [await loop.run_in_executor(None, get, p) for p in
                ("/webrtc/../../agent/config.py", "/static/webrtc.html", "/%2e%2e/agent/limits.py", "/webrtc")]

    res = run(rt, scenario)
    assert [s for s, _ in res[:3]] == [404, 404, 404] and res[3][0] == 200
