"""The embedding API: Quickturn inside your own service (docs/embedding.md, examples/phonebot.py).

    agent = Agent.load("cpu", instructions="You are the front desk of Luigi's pizzeria.", on_turn=my_hook)
    await agent.serve(port=8765)                      # every transport, one port, hooks applied to every call
    # or, without any network:
    conv = agent.conversation(input_rate=16000)
    await conv.start(); await conv.feed(audio); event = await conv.events.get()

Hooks:
  instructions            the system prompt: a string, or `fn(info) -> str` called per conversation with what the
                          transport knows about the caller (Twilio: callSid, customParameters).
  on_turn(conv, text)     called with each final user transcript before the LLM answers. It is the place for tool
                          / function calls: look something up, act, and return a `TurnResult` (or a plain string)
                          whose `context` the LLM uses for its answer, or `respond=False` to stay silent, or
                          `end=True` to end the call after the reply. Return None to let the LLM answer alone.
  on_dtmf(conv, digit)    Twilio key presses.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

from . import events as ev
from .audio import INTERNAL_RATE
from .config import Config
from .runtime import Runtime
from .session import Session

log = logging.getLogger("quickturn.embed")


@dataclass
class TurnResult:
    """What an `on_turn` hook decided for one user turn."""
    context: str | None = None  # facts (a tool's result) the LLM must use in this answer
    respond: bool = True  # False: say nothing this turn
    end: bool = False  # end the conversation once this reply has been heard (Twilio: the <Stream> ends)


TurnHook = Callable[["Conversation", str], Awaitable["TurnResult | str | None"]]
DtmfHook = Callable[["Conversation", str], Awaitable[None]]
Instructions = str | Callable[[dict], str] | None


class Conversation(Session):
    """A Session whose user turns pass through the service's hook before the LLM answers.

    With no `on_turn` hook it behaves exactly like Session. With one, the session transcribes each turn without
    answering (auto_respond=False), the hook runs, and the conversation answers with `respond()` — the turn's
    latency trace keeps the real end of speech, so the hook's time shows in the measured latency."""

    def __init__(self, rt: Runtime, input_rate: int = INTERNAL_RATE, *, on_turn: TurnHook | None = None,
                 instructions: str | None = None, info: dict | None = None, barge_in: bool | None = None,
                 auto_respond: bool = True):
        super().__init__(rt, input_rate, barge_in=barge_in, auto_respond=auto_respond and on_turn is None)
        self.on_turn = on_turn
        self.base_instructions = instructions or rt.config.llm.system_prompt
        self.custom_instructions = instructions is not None
        self.info = dict(info or {})
        self.end_requested = False  # a hook asked to end the conversation after the current reply
        self.end_turn: int | None = None  # ... which is this turn
        self.hook_auto = auto_respond  # answer after the hook (False: the transport's client decides)
        self._hook_tasks: set[asyncio.Task] = set()
        self._with_context = False  # the system prompt currently carries a hook's context

    async def start(self) -> None:
        await super().start()
        if self.custom_instructions:
            await self.set_instructions(self.base_instructions)

    def _emit(self, event) -> None:
        # Session reports everything through _emit; a final transcript is where the hook gets its turn.
        super()._emit(event)
        if self.on_turn is not None and isinstance(event, ev.TranscriptEvent) and event.final and event.text:
            t = asyncio.get_running_loop().create_task(self._run_hook(event.text))
            self._hook_tasks.add(t)
            t.add_done_callback(self._hook_tasks.discard)

    async def _run_hook(self, text: str) -> None:
        heard = self.reply  # the (silent) turn that transcribed the user
        speech_end = heard.trace.t.get("speech_end") if heard is not None else None
        try:
            result = await self.on_turn(self, text)
        except Exception as e:
            log.exception("on_turn hook failed")
            self._emit(ev.ErrorEvent("hook_failed", f"on_turn hook failed: {type(e).__name__}: {e}"))
            result = None
        if isinstance(result, str):
            result = TurnResult(context=result)
        result = result or TurnResult()
        self.end_requested = self.end_requested or result.end
        if self.closed or not result.respond or not self.hook_auto:
            if not result.respond:
                self.pending_user.clear()
            return
        if result.context:
            await self.set_instructions(f"{self.base_instructions}\n\nUse these facts in your answer: "
                                        f"{result.context}")
            self._with_context = True
        elif self._with_context:
            await self.set_instructions(self.base_instructions)
            self._with_context = False
        r = await self.respond()
        if result.end:
            self.end_turn = r.turn
        if speech_end is not None:  # measure from the user's real end of speech, hook time included
            r.trace.t["speech_end"] = speech_end

    async def close(self) -> None:
        for t in list(self._hook_tasks):
            t.cancel()
        await super().close()

    async def run_queues(self, mic: asyncio.Queue, out: asyncio.Queue) -> None:
        """Raw-audio attachment: float32 chunks at `input_rate` from `mic` (None ends), every event to `out`
        (ReplyAudio included, counted as played the moment it is queued), then None."""
        await self.start()

        async def pump():
            while True:
                e = await self.events.get()
                if isinstance(e, ev.ReplyAudio):
                    self.audio_sent(len(e.audio))
                await out.put(e)

        p = asyncio.create_task(pump())
        try:
            while (x := await mic.get()) is not None:
                await self.feed(np.asarray(x, np.float32))
            if self.reply is not None and self.reply.task is not None:
                await asyncio.gather(self.reply.task, return_exceptions=True)
            for t in list(self._hook_tasks):
                await asyncio.gather(t, return_exceptions=True)
            if self.reply is not None and self.reply.task is not None:
                await asyncio.gather(self.reply.task, return_exceptions=True)
            await asyncio.sleep(0.05)
        finally:
            p.cancel()
            await self.close()
            await out.put(None)


@dataclass
class Agent:
    """A loaded voice agent (models in memory once) plus the service's hooks; makes Conversations."""
    rt: Runtime
    instructions: Instructions = None
    on_turn: TurnHook | None = None
    on_dtmf: DtmfHook | None = None
    servers: list = field(default_factory=list)

    @classmethod
    def load(cls, config: str | Config = "cpu", overrides: dict | None = None, warmup: bool = True,
             **hooks) -> "Agent":
        """config: a name in configs/, a TOML path or a Config; overrides: {"llm.max_new_tokens": 40, ...}."""
        cfg = config if isinstance(config, Config) else Config.load(config)
        for key, value in (overrides or {}).items():
            section, name = key.split(".", 1)
            if not hasattr(getattr(cfg, section), name):
                raise ValueError(f"unknown config key {key!r}")
            setattr(getattr(cfg, section), name, value)
        rt = Runtime.load(cfg)
        if warmup:
            rt.warmup()
        return cls(rt, **hooks)

    def instructions_for(self, info: dict) -> str | None:
        if callable(self.instructions):
            return self.instructions(info)
        return self.instructions

    def conversation(self, input_rate: int = INTERNAL_RATE, info: dict | None = None, **kw) -> Conversation:
        info = info or {}
        return Conversation(self.rt, input_rate, on_turn=self.on_turn, instructions=self.instructions_for(info),
                            info=info, **kw)

    def session_factory(self, rt: Runtime, input_rate: int, **kw) -> Conversation:
        """For the server's hub: every transport's sessions become this agent's Conversations."""
        info = kw.pop("info", None) or {}
        return Conversation(rt, input_rate, on_turn=self.on_turn, instructions=self.instructions_for(info),
                            info=info, **kw)

    async def start_server(self, host: str = "127.0.0.1", port: int = 8765):
        """Every transport on one port (see docs/transports.md), with this agent's hooks. Returns (server, srv)."""
        from .server import start_server
        from .transports.hub import Hub

        hub = Hub(self.rt)
        hub.session_factory = self.session_factory
        hub.on_dtmf = self.on_dtmf
        server, srv = await start_server(self.rt, host, port, hub=hub)
        self.servers.append(server)
        return server, srv

    async def serve(self, host: str = "127.0.0.1", port: int = 8765) -> None:
        server, _ = await self.start_server(host, port)
        h, p = list(server.sockets)[0].getsockname()[:2]
        print(f"quickturn agent: listening on {h}:{p} (/, /v1/realtime, /twilio, /webrtc, /metrics)", flush=True)
        await server.serve_forever()

    def close(self) -> None:
        for s in self.servers:
            s.close()
        self.rt.close()
