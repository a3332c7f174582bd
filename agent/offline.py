"""Driving a session from recorded audio, as a live caller would: the demo, the tests and the CPU benchmark."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from . import events as ev
from .audio import INTERNAL_RATE
from .runtime import Runtime
from .session import Session

FRAME_S = 0.02


@dataclass
class TurnResult:
    transcript: str = ""
    reply: str = ""
    audio: list[np.ndarray] = field(default_factory=list)
    latency: ev.TurnLatency | None = None
    interrupted: bool = False
    kept: str | None = None  # after a barge-in: the part of the reply the history keeps
    first_audio_at: float | None = None  # monotonic time the first reply audio arrived

    @property
    def reply_audio(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)


@dataclass
class Conversation:
    turns: list[TurnResult]
    events: list = field(default_factory=list)
    session: Session | None = None


async def _pump(session: Session, results: dict[int, TurnResult], log: list, done: asyncio.Event) -> None:
    """Consume events the way a transport would: audio counts as sent (and starts playing) on arrival."""
    while True:
        e = await session.events.get()
        log.append(e)
        if isinstance(e, ev.ReplyAudio):
            r = results.setdefault(e.turn, TurnResult())
            if r.first_audio_at is None:
                r.first_audio_at = time.monotonic()
            session.audio_sent(len(e.audio))
            r.audio.append(e.audio)
        elif isinstance(e, ev.TranscriptEvent) and e.final:
            results.setdefault(e.turn, TurnResult()).transcript = e.text
        elif isinstance(e, ev.ReplyDone):
            r = results.setdefault(e.turn, TurnResult())
            r.reply, r.interrupted = e.text, e.interrupted
        elif isinstance(e, ev.ReplyTruncated):
            r = results.setdefault(e.turn, TurnResult())
            r.interrupted, r.kept = True, e.text
        elif isinstance(e, ev.TurnLatency):
            results.setdefault(e.turn, TurnResult()).latency = e
            done.set()


async def converse(rt: Runtime, clips: list[np.ndarray], rate: int = INTERNAL_RATE, realtime: bool = True,
                   gap_s: float = 1.5, reply_timeout_s: float = 60.0, session: Session | None = None,
                   wait_for_playback: bool = True) -> Conversation:
    """Speak each clip into a session, then stay silent until the agent has answered (and finished talking).
    realtime=False feeds audio as fast as it is processed (latencies then mean little)."""
    session = session or Session(rt, rate)
    if session.llm is None:
        await session.start()
    results: dict[int, TurnResult] = {}
    log: list = []
    done = asyncio.Event()
    pump = asyncio.create_task(_pump(session, results, log, done))
    frame = int(rate * FRAME_S)
    silence = np.zeros(frame, np.float32)
    t_next = time.monotonic()

    async def tick():
        nonlocal t_next
        t_next += FRAME_S
        if realtime:
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        else:
            await asyncio.sleep(0)

    try:
        for clip in clips:
            done.clear()
            for i in range(0, len(clip), frame):
                await session.feed(clip[i:i + frame])
                await tick()
            # silence until the reply is complete and has been played out
            deadline = time.monotonic() + reply_timeout_s
            fed = 0.0
            while time.monotonic() < deadline:
                await session.feed(silence)
                fed += FRAME_S
                await tick()
                if done.is_set() and fed >= gap_s and (not wait_for_playback or not session.playback.playing()):
                    break
            else:
                raise TimeoutError(f"no reply within {reply_timeout_s:.0f} s")
    finally:
        pump.cancel()
    return Conversation([results[k] for k in sorted(results)], log, session)
