"""Browser WebRTC end to end: headless Chromium opens the page `quickturn serve` serves, its fake microphone plays a
real speech recording, and the page must show the transcript and the agent's reply, and receive reply audio
(measured by the browser's own WebRTC receiver stats). Driven over the Chrome DevTools protocol."""

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect

from agent.audio import INTERNAL_RATE, load_audio, resample, write_wav
from agent.server import start_server
from asr.wer import word_match
from transports_helpers import runtime_with

pytest.importorskip("aiortc")
REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = os.environ.get("QUICKTURN_WEBRTC_SCREENSHOT")  # save the page's screenshot here (to look at it)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:  # the test setup installs it (CI runs as root on a fresh machine)
        r = subprocess.run(["bash", str(REPO / "tests/setup_chromium.sh")], capture_output=True, text=True)
        path = shutil.which("chromium")
        if path is None:
            pytest.fail(f"chromium is not installed and tests/setup_chromium.sh failed: {r.stderr[-500:]}")
    return path


@pytest.fixture(scope="module")
def rt():
    yield from runtime_with(max_new_tokens=24)


class DevTools:
    """A minimal Chrome DevTools protocol client over one page target."""

    def __init__(self, ws):
        self.ws, self.n = ws, 0

    async def call(self, method: str, **params):
        self.n += 1
        await self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            m = json.loads(await self.ws.recv())
            if m.get("id") == self.n:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]

    async def eval(self, expression: str):
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return r["result"].get("value")


def _devtools_port(profile: Path, proc, timeout=30) -> int:
    f = profile / "DevToolsActivePort"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if f.exists() and f.read_text().strip():
            return int(f.read_text().split()[0])
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited: {proc.stderr.read()[-2000:]}")
        time.sleep(0.1)
    raise RuntimeError("chromium did not open its DevTools port")


def test_browser_page_talks_over_webrtc(rt, speech, chromium, tmp_path):
    clip = load_audio(speech / "speechbrain_harvard/spk2_snt2.wav")  # "What joy there is in living."
    # Chromium's fake microphone: 48 kHz 16-bit WAV, silence while the call connects (the file starts playing when
    # the page opens the microphone, before WebRTC is up), the question, then silence (no loop)
    mic = np.concatenate([np.zeros(INTERNAL_RATE * 3, np.float32), clip, np.zeros(INTERNAL_RATE * 20, np.float32)])
    wav = tmp_path / "question.wav"
    write_wav(wav, resample(mic, INTERNAL_RATE, 48_000), 48_000)
    profile = tmp_path / "profile"

    async def scenario():
        server, srv = await start_server(rt, "127.0.0.1", 0)
        port = list(server.sockets)[0].getsockname()[1]
        proc = subprocess.Popen([
            chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-features=WebRtcHideLocalIpsWithMdns", "--autoplay-policy=no-user-gesture-required",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}%noloop", f"--user-data-dir={profile}",
            "--remote-debugging-port=0", "--window-size=900,900",
            f"http://127.0.0.1:{port}/webrtc?autostart=1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        try:
            dport = await asyncio.to_thread(_devtools_port, profile, proc)
            targets = json.loads(await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{dport}/json/list", timeout=10).read()))
            page = next(t for t in targets if t["type"] == "page")
            async with connect(page["webSocketDebuggerUrl"], max_size=None) as cdp_ws:
                cdp = DevTools(cdp_ws)
                end = time.monotonic() + 90
                st = None
                while time.monotonic() < end:
                    st = await cdp.eval("JSON.stringify(window.quickturn || null)")
                    st = json.loads(st) if st else None
                    if st and st["latency"] and st["energy"] > 0:
                        break
                    await asyncio.sleep(0.5)
                await asyncio.sleep(1.0)  # let the stats catch up with the rest of the reply
                st = json.loads(await cdp.eval("JSON.stringify(window.quickturn)"))
                text = await cdp.eval("document.getElementById('log').innerText")
                shot = await cdp.call("Page.captureScreenshot", format="png")
                if SCREENSHOT:
                    import base64

                    Path(SCREENSHOT).write_bytes(base64.b64decode(shot["data"]))
                return st, text
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            server.close()
            await server.wait_closed()

    st, text = asyncio.run(scenario())
    assert st is not None, "the page never ran"
    assert not st["errors"], st["errors"]
    assert st["transcripts"] and word_match("What joy there is in living.", st["transcripts"][0]) > 0.9, st
    assert st["replies"] and st["replies"][0].strip(), st
    assert "You:" in text and "joy" in text.lower() and "Agent:" in text  # what a person sees
    assert st["audioSeconds"] > 0.5  # the server streamed over half a second of reply audio ...
    assert st["energy"] > 0  # ... and the browser's WebRTC receiver decoded non-silent audio
    assert st["latency"] and st["latency"][0]["v2v_ms"] > 0
