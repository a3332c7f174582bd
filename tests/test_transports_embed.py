"""The embedding API (agent/embed.py) on raw audio queues with real speech, and the example phone bot's tools."""

import asyncio
import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

from agent import events as ev
from agent.audio import INTERNAL_RATE, load_audio
from agent.embed import Agent, TurnResult
from transports_helpers import runtime_with

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rt():
    yield from runtime_with(max_new_tokens=24)


def load_phonebot():
    spec = importlib.util.spec_from_file_location("phonebot", REPO / "examples/phonebot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_turn_hook_on_raw_audio_queues(rt, speech):
    clip = load_audio(speech / "speechbrain_harvard/spk2_snt2.wav")  # "What joy there is in living."
    calls = []

    async def on_turn(conv, text):
        calls.append((text, time.monotonic()))
        await asyncio.sleep(0.3)  # a slow "tool"
        return TurnResult(context="The shop opens at nine.")

    agent = Agent(rt, instructions=lambda info: f"You are a test bot on {info.get('line', '?')}.", on_turn=on_turn)

    async def scenario():
        conv = agent.conversation(INTERNAL_RATE, info={"line": "line 7"})
        mic, out = asyncio.Queue(), asyncio.Queue()
        runner = asyncio.create_task(conv.run_queues(mic, out))
        audio = np.concatenate([clip, np.zeros(INTERNAL_RATE * 2, np.float32)])
        t0 = time.monotonic()
        for k, i in enumerate(range(0, len(audio), 320)):  # 20 ms chunks in real time
            await mic.put(audio[i:i + 320])
            await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))
        got = []
        while not any(isinstance(e, ev.TurnLatency) for e in got):
            got.append(await asyncio.wait_for(out.get(), 60))
        await mic.put(None)
        while (e := await asyncio.wait_for(out.get(), 30)) is not None:
            got.append(e)
        await runner
        return conv, got

    conv, got = asyncio.run(scenario())
    assert conv.base_instructions == "You are a test bot on line 7."
    assert len(calls) == 1 and "joy" in calls[0][0].lower()
    finals = [e for e in got if isinstance(e, ev.TranscriptEvent) and e.final]
    assert len(finals) == 1  # the hook's answer is one turn, not a second transcript
    done = [e for e in got if isinstance(e, ev.ReplyDone)]
    assert len(done) == 1 and done[0].full_text.strip()
    assert sum(len(e.audio) for e in got if isinstance(e, ev.ReplyAudio)) > rt.tts.sample_rate // 2
    lat = next(e for e in got if isinstance(e, ev.TurnLatency))
    assert lat.v2v_ms is not None and lat.v2v_ms > 300  # measured from the real end of speech, hook included
    # the answer was prefilled after a system prompt carrying the tool's fact
    assert conv._with_context


def test_phonebot_tools():
    pb = load_phonebot()
    assert pb.order_number("my order is one two three four please") == "1234"
    assert pb.order_number("order 5678") == "5678"
    assert pb.order_number("I want a pizza") is None
    hours = asyncio.run(pb.on_turn(None, "When do you open tomorrow?"))
    assert hours == pb.HOURS
    status = asyncio.run(pb.on_turn(None, "Where is my order one two three four?"))
    assert "1234" in status and "oven" in status
    bye = asyncio.run(pb.on_turn(None, "That's all, goodbye."))
    assert isinstance(bye, TurnResult) and bye.end
    assert asyncio.run(pb.on_turn(None, "Tell me a joke.")) is None
    assert "Anna" in pb.instructions({"custom": {"caller_name": "Anna"}})
