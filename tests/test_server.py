"""`quickturn serve` over loopback with real models and real speech, good and bad clients at once."""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect

from agent.audio import INTERNAL_RATE, float_to_pcm16, load_audio, resample
from agent.client import stream_file
from agent.config import Config
from agent.runtime import Runtime
from agent.server import start_server

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rt():
    cfg = Config.load("cpu")
    cfg.llm.max_new_tokens = 30
    cfg.server.max_frame_bytes = 8192
    runtime = Runtime.load(cfg)
    yield runtime
    runtime.close()


async def with_server(rt, fn):
    server, srv = await start_server(rt, "127.0.0.1", 0)
    port = list(server.sockets)[0].getsockname()[1]
    try:
        return await fn(f"ws://127.0.0.1:{port}", srv)
    finally:
        server.close()
        await server.wait_closed()


async def _errors_for(url, messages, wait=5.0):
    """Send messages, collect the error events, then prove the connection still works with a stop."""
    got = []
    async with connect(url) as ws:
        for m in messages:
            await ws.send(m)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                msg = await asyncio.wait_for(ws.recv(), timeout=max(0.01, end - time.monotonic()))
            except (asyncio.TimeoutError, Exception):
                break
            if isinstance(msg, str):
                got.append(json.loads(msg))
    return got


def test_stream_real_clip_8khz_and_bad_clients_meanwhile(rt, speech):
    clip = load_audio(speech / "speechbrain_harvard/spk2_snt2.wav")  # "What joy there is in living."
    clip8k = resample(clip, INTERNAL_RATE, 8000)  # the server resamples any supported rate

    async def scenario(url, srv):
        good = asyncio.create_task(stream_file(url, clip8k, rate=8000))
        await asyncio.sleep(0.3)
        start = json.dumps({"type": "start", "sample_rate": 16000})
        bad = await asyncio.gather(
            _errors_for(url, ["this is not json"]),
            _errors_for(url, [json.dumps({"type": "start", "sample_rate": 16000, "encoding": "opus"})]),
            _errors_for(url, [start, b"\x00" * 9000]),  # frame over the 8192-byte limit
            _errors_for(url, [float_to_pcm16(np.zeros(320, np.float32))]),  # audio before start
        )
        # a client declaring 8 kHz but sending 16 kHz audio in real time
        mismatch = stream_file(url, np.concatenate([clip, clip]), rate=16000,
                               start_msg={"type": "start", "sample_rate": 8000})
        return await good, bad, await mismatch

    res, bad, mismatch = asyncio.run(with_server(rt, scenario))
    codes = [[e["code"] for e in errs if e["type"] == "error"] for errs in bad]
    assert codes == [["bad_json"], ["unsupported_format"], ["frame_too_large"], ["not_started"]]
    assert [e["code"] for e in mismatch.errors] == ["sample_rate_mismatch"]
    assert all(len(e["message"]) > 10 for errs in bad for e in errs if e["type"] == "error")
    # the good client, served meanwhile, got everything
    assert not res.errors
    finals = [e for e in res.of("transcript") if e["final"]]
    assert finals and "joy" in finals[0]["text"].lower()
    assert res.of("reply_delta") and res.of("reply_done") and res.of("latency")
    assert res.output_rate == 22050 and len(res.audio) > 22050  # > 0.5 s of PCM16 reply audio
    assert res.latency_ms is not None and 0 < res.latency_ms < 30_000


def test_oversized_frame_keeps_session_alive(rt, speech):
    clip = load_audio(speech / "pocketsphinx_cards/003.wav")

    async def scenario(url, srv):
        async with connect(url) as ws:  # offers permessage-deflate (the client's default)
            assert "Sec-WebSocket-Extensions" not in ws.response.headers  # audio frames go uncompressed
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
            ready = json.loads(await ws.recv())
            await ws.send(b"\x00" * 20000)
            err = json.loads(await ws.recv())
            # the same session still answers a real utterance
            frames = [clip[i:i + 320] for i in range(0, len(clip), 320)] + [np.zeros(320, np.float32)] * 100
            for f in frames:
                await ws.send(float_to_pcm16(f))
                await asyncio.sleep(0.005)
            got = []
            end = time.monotonic() + 30
            while time.monotonic() < end:
                m = await asyncio.wait_for(ws.recv(), 30)
                if isinstance(m, str):
                    got.append(json.loads(m))
                    if got[-1]["type"] == "reply_done":
                        break
            return ready, err, got

    ready, err, got = asyncio.run(with_server(rt, scenario))
    assert ready["type"] == "ready" and err["code"] == "frame_too_large" and not err["fatal"]
    assert any(e["type"] == "transcript" and "clubs" in e["text"].lower() for e in got)


def test_cli_serve_and_client_over_loopback(tmp_path, speech):
    """The real commands, as a user runs them."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    port = 18000 + os.getpid() % 1000
    server = subprocess.Popen([sys.executable, "-m", "agent.cli", "serve", "--port", str(port),
                               "--set", "llm.max_new_tokens=30"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 240
        for line in server.stdout:
            if "listening on" in line:
                break
            assert time.monotonic() < deadline, "server did not start"
        out = tmp_path / "reply.wav"
        client = subprocess.run([sys.executable, "-m", "agent.cli", "client", "--input",
                                 str(speech / "speechbrain_harvard/spk1_snt3.wav"), "--url", f"ws://127.0.0.1:{port}",
                                 "--output", str(out)], capture_output=True, text=True, timeout=180, env=env, cwd=REPO)
        assert client.returncode == 0, client.stdout + client.stderr
        assert "latency at the client" in client.stdout and "transcript:" in client.stdout
        assert load_audio(out, None).size > 10_000
    finally:
        server.terminate()
        server.wait(10)


def test_cli_errors_are_clear(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + os.urandom(2000))
    r = subprocess.run([sys.executable, "-m", "agent.cli", "client", "--input", str(corrupt)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "not a readable audio file" in r.stderr
    cfg = tmp_path / "missing.toml"
    cfg.write_text('[llm]\nmodel = "/nonexistent/model.gguf"\n')
    r = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--config", str(cfg)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "LLM model not found: /nonexistent/model.gguf" in r.stderr
    cfg.write_text('[llm]\nmodle = "x"\n')
    r = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--config", str(cfg)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "unknown key 'modle'" in r.stderr
