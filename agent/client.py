"""`quickturn client`: stream a recording to a server in real time, like a caller would, and measure the latency
where the caller hears it: from the end of speech in the file to the first reply audio received."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .audio import INTERNAL_RATE, float_to_pcm16, load_audio, write_wav

FRAME_S = 0.02


@dataclass
class ClientResult:
    events: list[dict] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)  # PCM16 reply audio (after flushes)
    output_rate: int = 0
    speech_end_s: float | None = None
    latency_ms: float | None = None  # end of speech in the file -> first reply audio byte received
    errors: list[dict] = field(default_factory=list)

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("type") == kind]

    @property
    def reply_audio(self) -> np.ndarray:
        return np.frombuffer(bytes(self.audio), dtype="<i2").astype(np.float32) / 32768.0


def end_of_speech(audio: np.ndarray) -> float:
    """The true end of speech in a 16 kHz clip, by Silero VAD when its model is there, else by energy."""
    try:
        from . import models
        from .vad import SileroVAD, speech_bounds

        b = speech_bounds(SileroVAD(models.require("silero-vad")), audio)
        if b:
            return b[1]
    except Exception:
        pass
    frame = 320
    energy = np.array([np.sqrt(np.mean(audio[i:i + frame] ** 2)) for i in range(0, len(audio) - frame, frame)])
    loud = np.flatnonzero(energy > max(energy.max() * 0.05, 1e-3))
    return (loud[-1] + 1) * frame / INTERNAL_RATE if len(loud) else len(audio) / INTERNAL_RATE


async def stream_file(url: str, audio: np.ndarray, rate: int = INTERNAL_RATE, realtime: bool = True,
                      tail_s: float = 8.0, start_msg: dict | None = None, turns: int = 1) -> ClientResult:
    """Send `audio` (float32 at `rate`) then silence, until `turns` replies are done or `tail_s` of silence
    passed after the last reply. Returns everything received."""
    res = ClientResult()
    speech_end = end_of_speech(audio if rate == INTERNAL_RATE else load_resampled(audio, rate))
    res.speech_end_s = speech_end
    frame = int(rate * FRAME_S)
    async with connect(url, max_size=None) as ws:
        try:
            await ws.send(json.dumps(start_msg or {"type": "start", "sample_rate": rate, "encoding": "pcm_s16le"}))
        except ConnectionClosed:
            pass  # refused (server_full / server_busy): its error frame is still read below, the loop ends at once
        done = asyncio.Event()
        t0: list[float] = []

        async def receive():
            try:
                await _receive()
            except ConnectionClosed as e:  # closed without a clean close frame: say so unless an error said why
                if not any(x.get("fatal") for x in res.errors):
                    res.errors.append({"type": "error", "code": "connection_closed", "fatal": True,
                                       "message": f"the connection closed: {e}"})
            done.set()

        async def _receive():
            async for msg in ws:
                if isinstance(msg, bytes):
                    if res.latency_ms is None and t0:
                        res.latency_ms = (time.monotonic() - (t0[0] + speech_end)) * 1000
                    res.audio += msg
                    continue
                e = json.loads(msg)
                res.events.append(e)
                if e["type"] == "ready":
                    res.output_rate = e["output_sample_rate"]
                elif e["type"] == "flush":
                    res.audio.clear()
                elif e["type"] == "error":
                    res.errors.append(e)
                    if e.get("fatal"):
                        done.set()
                elif e["type"] == "reply_done" and len(res.of("reply_done")) >= turns:
                    done.set()

        rx = asyncio.create_task(receive())
        silence = np.zeros(frame, np.float32)
        t_start = time.monotonic()
        t0.append(t_start)
        i, n = 0, 0
        deadline = None
        while True:
            chunk = audio[i:i + frame] if i < len(audio) else silence
            i += frame
            try:
                await ws.send(float_to_pcm16(chunk))
            except Exception:
                break
            n += 1
            if realtime:
                await asyncio.sleep(max(0.0, t_start + n * FRAME_S - time.monotonic()))
            if done.is_set() and deadline is None:
                # keep the line open while the reply plays out (its duration), then hang up
                played = len(res.audio) / 2 / max(res.output_rate, 1)
                deadline = time.monotonic() + min(played, 2.0) + 0.2
            if deadline and time.monotonic() > deadline:
                break
            if i > len(audio) and (i - len(audio)) / rate > tail_s + 60 * turns:
                break
            if rx.done():
                break
        try:
            await ws.send(json.dumps({"type": "stop"}))
        except ConnectionClosed:  # the server hung up (a refusal, a fatal error): read what it sent before that
            try:
                await asyncio.wait_for(asyncio.shield(rx), 2.0)
            except asyncio.TimeoutError:
                pass
        except Exception:
            pass
        rx.cancel()
    return res


def load_resampled(audio: np.ndarray, rate: int) -> np.ndarray:
    from .audio import resample

    return resample(audio, rate, INTERNAL_RATE)


async def run_client(url: str, path: str, output: str, realtime: bool = True) -> int:
    audio = load_audio(path)
    print(f"streaming {path} ({len(audio) / INTERNAL_RATE:.1f} s) to {url} {'in real time' if realtime else ''}")
    res = await stream_file(url, audio, realtime=realtime)
    for e in res.of("transcript"):
        if e["final"]:
            print(f"transcript: {e['text']}")
    for e in res.of("reply_done"):
        print(f"reply     : {e['text']}")
    for e in res.errors:
        print(f"error     : {e['code']}: {e['message']}")
    if res.audio:
        write_wav(Path(output), res.reply_audio, res.output_rate)
        print(f"reply audio: {output} ({len(res.audio) / 2 / res.output_rate:.1f} s)")
    if res.latency_ms is not None:
        print(f"latency at the client (end of speech in the file -> first reply audio): {res.latency_ms:.0f} ms")
    for e in res.of("latency"):
        print(f"server stages (ms after end of speech): {e['ms']}")
    return 0 if res.audio else 1
