"""[vad] batch: many sessions' Silero windows in one ONNX call, off the event loop — the same probabilities and the
same turn events as one call per window."""

import asyncio
import dataclasses
import random

import numpy as np
import pytest
from speechdata import dev_set

from agent import events as ev
from agent import models
from agent.audio import load_audio
from agent.vad import SileroVAD, VADBatcher


@pytest.fixture(scope="module")
def vad():
    return SileroVAD(models.require("silero-vad"))


@pytest.fixture(scope="module")
def clips(speech):
    return [load_audio(speech / r["file"]) for r in dev_set()[:6]]


def test_batched_probabilities_equal_one_call_per_window(vad, clips):
    """Six streams fed concurrently in chunks of random sizes (so a round holds 0, 1 or several windows of each)."""
    expected = [vad.stream().feed(c) for c in clips]
    batcher = VADBatcher(vad, max_batch=4)  # fewer rows than streams: several batches per round too

    async def one(k, clip):
        s, rng, out, i = vad.stream(), random.Random(k), [], 0
        while i < len(clip):
            n = rng.choice([160, 320, 512, 700, 1600])
            out += await batcher.feed(s, clip[i:i + n])
            i += n
            await asyncio.sleep(0)
        return out

    async def main():
        return await asyncio.gather(*(one(k, c) for k, c in enumerate(clips)))

    got = asyncio.run(main())
    for g, e in zip(got, expected):
        assert len(g) == len(e) and np.allclose(g, e, atol=1e-6)
    assert batcher.calls < batcher.windows  # windows of different streams did share calls
    batcher.close()


def test_session_events_are_the_same_with_batching(clips):
    from agent.config import Config
    from agent.runtime import Runtime
    from agent.session import Session

    audio = np.concatenate([clips[0], np.zeros(24_000, np.float32), clips[1], np.zeros(24_000, np.float32)])

    def speech_events(batch: bool):
        cfg = Config.load("cpu")
        cfg.turn.judge = ""
        cfg.vad = dataclasses.replace(cfg.vad, batch=batch)
        rt = Runtime.load(cfg, log_fn=lambda m: None)
        assert (rt.vad_batcher is not None) == batch

        async def run():
            s = Session(rt, auto_respond=False)
            await s.start()
            for i in range(0, len(audio), 320):
                await s.feed(audio[i:i + 320])
            out = []
            while not s.events.empty():
                e = s.events.get_nowait()
                if isinstance(e, (ev.SpeechStarted, ev.SpeechStopped)):
                    out.append(e)
            await s.close()
            return out

        try:
            return asyncio.run(run())
        finally:
            rt.close()

    plain, batched = speech_events(False), speech_events(True)
    assert len(plain) >= 4 and batched == plain
