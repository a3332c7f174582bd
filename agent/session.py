"""One conversation: audio in -> VAD -> turn taking -> ASR -> LLM (history in its KV cache) -> phrases -> TTS ->
audio events out, with barge-in and a latency trace per turn. Transport-agnostic: a transport feeds audio with
`feed()`, reads `events`, and reports what it sent with `audio_sent()`."""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from . import events as ev
from .audio import INTERNAL_RATE, StreamResampler
from .phrases import Phrase, PhraseChunker
from .runtime import Runtime
from .trace import TurnTrace
from .turn import Decision, Kind, TurnParams, TurnTaker

log = logging.getLogger("quickturn.session")

PRE_ROLL_S = 0.3  # audio kept before the detected speech start
POST_ROLL_S = 0.2  # and after the last speech frame
MAX_UTTERANCE_S = 30.0


class Playback:
    """Where the listener is in the reply audio, assuming it plays what it receives at once, in real time."""

    def __init__(self, rate: int):
        self.rate = rate
        self.sent = 0  # samples handed to the listener this turn
        self.end_time = 0.0  # monotonic time its buffer runs dry

    def push(self, n: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.end_time = max(self.end_time, now) + n / self.rate
        self.sent += n

    def played(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        return max(0, self.sent - int(max(0.0, self.end_time - now) * self.rate))

    def playing(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.end_time

    def reset(self) -> None:
        self.sent, self.end_time = 0, 0.0


@dataclass
class Reply:
    """The reply being produced for one turn."""
    turn: int
    trace: TurnTrace
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    phrases: list[Phrase] = field(default_factory=list)
    # (phrase index, first sample, end sample) of synthesized audio, in reply samples
    spans: list[tuple[int, int, int]] = field(default_factory=list)
    words: list[tuple[str, int, int, int]] = field(default_factory=list)  # (word, phrase, start, end) samples
    samples: int = 0
    cancelled: bool = False  # stop generating / synthesizing
    interrupted: bool = False  # barge-in
    committed: bool = False  # the reply is closed in the KV cache and the history
    generating: bool = True
    silent: bool = False  # no reply was asked for (or nothing was said)
    task: asyncio.Task | None = None


class Session:
    def __init__(self, rt: Runtime, input_rate: int = INTERNAL_RATE, *, barge_in: bool | None = None,
                 auto_respond: bool = True):
        self.rt = rt
        cfg = rt.config
        self.cfg = cfg
        self.events: asyncio.Queue = asyncio.Queue()
        self.input_rate = input_rate
        self.resample = StreamResampler(input_rate, INTERNAL_RATE)
        self.vad = rt.vad.stream()
        self.turns = TurnTaker(TurnParams(
            threshold=cfg.vad.threshold, neg_threshold=cfg.vad.neg_threshold,
            min_speech_s=cfg.vad.min_speech_ms / 1000, endpoint_silence_s=cfg.turn.endpoint_silence_ms / 1000,
            barge_in_s=cfg.turn.barge_in_ms / 1000, barge_in=cfg.turn.barge_in if barge_in is None else barge_in))
        self.out_rate = rt.tts.sample_rate
        self.playback = Playback(self.out_rate)
        # audio since the last endpoint (16 kHz), and where it starts in the stream
        self._buf: list[np.ndarray] = []
        self._buf_start = 0
        self._n_in = 0  # samples fed so far (16 kHz)
        self._vad_pos = 0  # samples the VAD has consumed
        self._arrivals: list[tuple[int, float]] = []  # (stream sample index, monotonic time it arrived)
        self.turn_index = 0
        self.reply: Reply | None = None
        self.history: list[dict] = []  # {"role", "content"} as the LLM's cache holds them
        self.traces: list[TurnTrace] = []
        self.llm = None  # the LLM session, created on first use in the LLM thread
        self.auto_respond = auto_respond  # answer at each endpoint (False: only when respond() is called)
        self.pending_user: list[str] = []  # user messages not answered yet
        self.closed = False

    # ----------------------------------------------------------------------------------------------- input
    async def start(self) -> None:
        """Create the LLM session (system prompt prefilled / shared) before the first turn."""
        self.llm = await self.rt.run(self.rt.llm_pool, self.rt.llm.new_session)

    async def feed(self, audio: np.ndarray) -> None:
        """Float32 mono audio at the session's input rate."""
        if self.closed:
            return
        now = time.monotonic()
        x = self.resample(audio)
        if not len(x):
            return
        self._buf.append(x)
        self._n_in += len(x)
        self._arrivals.append((self._n_in, now))
        if len(self._arrivals) > 4096:
            del self._arrivals[:2048]
        self._trim_buffer()
        self._update_speaking(now)
        for prob in self.vad.feed(x):
            self._vad_pos += self.rt.vad.window
            t_end = self._vad_pos / INTERNAL_RATE
            for d in self.turns.on_vad(t_end, self.rt.vad.window / INTERNAL_RATE, prob):
                await self._decide(d)

    def audio_sent(self, n_samples: int) -> None:
        """The transport handed n reply samples (at `out_rate`) to the listener."""
        r = self.reply
        if r is not None and not r.cancelled:
            r.trace.mark("audio_sent")
        self.playback.push(n_samples)

    async def close(self) -> None:
        self.closed = True
        if self.reply and self.reply.task and not self.reply.task.done():
            self.reply.cancelled = True
            try:
                await self.reply.task
            except BaseException:
                pass
        if self.llm is not None:
            await self.rt.run(self.rt.llm_pool, self.llm.free)
            self.llm = None

    # ------------------------------------------------------------------------------------------- decisions
    async def _decide(self, d: Decision) -> None:
        if d.kind is Kind.BARGE_IN:
            await self._barge_in()
        elif d.kind is Kind.SPEECH_START:
            self._emit(ev.SpeechStarted(d.speech_start))
        elif d.kind is Kind.ENDPOINT:
            self._emit(ev.SpeechStopped(d.speech_end))
            self._start_reply(d)

    def _update_speaking(self, now: float) -> None:
        r = self.reply
        busy = r is not None and (r.task is not None and not r.task.done())
        speaking = busy or self.playback.playing(now)
        if speaking != self.turns.agent_speaking:
            self.turns.set_agent_speaking(speaking)

    def _start_reply(self, d: Decision) -> None:
        """The turn taker decided the user is done: transcribe what they said and (by default) answer."""
        trace = TurnTrace(self.turn_index + 1)
        trace.mark("speech_end", self._arrival_time(int(d.speech_end * INTERNAL_RATE)))
        trace.mark("endpoint")
        a = int(max(0.0, d.speech_start - PRE_ROLL_S) * INTERNAL_RATE)
        b = int((d.speech_end + POST_ROLL_S) * INTERNAL_RATE)
        audio = self._slice(a, b)
        self._drop_before(b)
        self._launch(trace, audio=audio, respond=self.auto_respond)

    def _launch(self, trace: TurnTrace, audio: np.ndarray | None = None, text: str | None = None,
                respond: bool = True) -> Reply:
        self.turn_index += 1
        trace.turn = self.turn_index
        self.playback.reset()
        reply = Reply(self.turn_index, trace)
        self.reply = reply
        self.turns.set_agent_speaking(True)
        reply.task = asyncio.create_task(self._respond(reply, audio, text, respond))
        return reply

    # ---------------------------------------------------------------------------------- manual control
    # For transports whose clients decide turns themselves (OpenAI Realtime without server VAD, typed input,
    # embedding services). Each mirrors what the automatic path does.
    async def commit_input(self, respond: bool = True) -> Reply:
        """End the user's turn now: transcribe the audio received since the last turn."""
        await self._stop_current()
        trace = TurnTrace(self.turn_index + 1)
        trace.mark("speech_end")
        trace.mark("endpoint")
        audio = self._slice(self._buf_start, self._n_in)
        self._drop_before(self._n_in)
        self.turns.in_turn = False
        return self._launch(trace, audio=audio, respond=respond)

    async def add_user_text(self, text: str, respond: bool = True) -> Reply:
        """A typed user message (no ASR)."""
        await self._stop_current()
        trace = TurnTrace(self.turn_index + 1)
        trace.mark("speech_end")
        trace.mark("endpoint")
        return self._launch(trace, text=text, respond=respond)

    async def respond(self) -> Reply:
        """Answer the user messages committed without a reply."""
        await self._stop_current()
        trace = TurnTrace(self.turn_index + 1)
        trace.mark("speech_end")
        return self._launch(trace, respond=True)

    async def cancel_reply(self) -> None:
        """Stop generating; the history keeps what was generated (not what was played)."""
        r = self.reply
        if r is not None and r.task is not None and not r.task.done():
            r.cancelled = True
            await asyncio.gather(r.task, return_exceptions=True)

    async def truncate_reply(self, played_samples: int | None = None) -> None:
        """Barge-in by the client's word: keep only the first `played_samples` of the reply (None: as tracked)."""
        await self._barge_in(played_samples)

    async def set_instructions(self, text: str) -> None:
        """A new system prompt for this session; the history is re-prefilled after it."""
        await self._stop_current()
        if self.llm is None:
            await self.start()
        await self.rt.run(self.rt.llm_pool, self.llm.set_system, text, list(self.history))

    async def _stop_current(self) -> None:
        r = self.reply
        if r is not None and r.task is not None and not r.task.done():
            await self.cancel_reply()

    # ---------------------------------------------------------------------------------------------- reply
    async def _respond(self, r: Reply, audio: np.ndarray | None, text: str | None, respond: bool) -> None:
        rt, cfg = self.rt, self.cfg
        tts_q: asyncio.Queue = asyncio.Queue()
        tts_task = asyncio.create_task(self._speak(r, tts_q))
        gen = None
        try:
            if audio is not None:
                text = (await rt.run(rt.asr_pool, rt.asr.transcribe, audio)).strip()
                r.trace.mark("transcript")
                self._emit(ev.TranscriptEvent(text, True, r.turn, text))
            if text:
                self.pending_user.append(text.strip())
            if not respond or not self.pending_user or r.cancelled:
                r.silent = True
                return
            text = " ".join(self.pending_user)
            self.pending_user.clear()
            r.trace.info["transcript"] = text
            if self.llm is None:
                await self.start()
            n_new = await rt.run(rt.llm_pool, self._prefill_user, text)
            r.trace.info["prefill_tokens"] = n_new
            chunker = PhraseChunker(cfg.phrases.first_min_words, cfg.phrases.first_max_words,
                                    cfg.phrases.min_words, cfg.phrases.max_words)
            gen = await rt.run(rt.llm_pool, self.llm.generate_reply)
            decoded = ""
            while not r.cancelled:
                tok = await rt.run(rt.llm_pool, next, gen, None)
                if tok is None:
                    break
                r.trace.mark("llm_first_token")
                r.tokens.append(tok)
                full = self.rt.llm.decode(r.tokens)
                if full.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
                    piece = None
                else:
                    piece, decoded = full[len(decoded):], full
                if piece is None:
                    chunker.push("")  # the token still belongs to the current phrase
                    continue
                r.text = decoded
                if piece:
                    self._emit(ev.ReplyDelta(piece, r.turn))
                phrase = chunker.push(piece)
                if phrase is not None:
                    self._phrase_ready(r, phrase, tts_q)
            r.generating = False
            if not r.cancelled:
                last = chunker.flush()
                if last is not None:
                    self._phrase_ready(r, last, tts_q)
            r.trace.info["reply_tokens"] = len(r.tokens)
        except Exception as e:  # one bad turn must not take the session down
            log.exception("turn %d failed", r.turn)
            self._emit(ev.ErrorEvent("turn_failed", f"turn {r.turn} failed: {type(e).__name__}: {e}"))
            r.cancelled = True
        finally:
            r.generating = False
            if gen is not None:
                await rt.run(rt.llm_pool, gen.close)  # ends the engine's generation request
            await tts_q.put(None)
            if r.cancelled:
                tts_task.cancel()
            try:
                await tts_task
            except asyncio.CancelledError:
                pass
            await self._commit(r)

    def _phrase_ready(self, r: Reply, phrase: Phrase, tts_q: asyncio.Queue) -> None:
        r.trace.mark("first_phrase")
        r.phrases.append(phrase)
        tts_q.put_nowait(phrase)

    async def _speak(self, r: Reply, q: asyncio.Queue) -> None:
        """Synthesize phrases as they come (or all at the end, in the no-streaming baseline)."""
        rt = self.rt
        pending: list[Phrase] = []
        while True:
            phrase = await q.get()
            if phrase is not None:
                pending.append(phrase)
                if self.cfg.pipeline.stream_tts is False:
                    continue
            for p in pending:
                gen = await rt.run(rt.tts_pool, rt.tts.synthesize, p.text)
                start = r.samples
                while not r.cancelled:
                    chunk = await rt.run(rt.tts_pool, next, gen, None)
                    if chunk is None:
                        break
                    for w in chunk.words:
                        r.words.append((w.word, p.index, start + w.start, start + w.end))
                    if len(chunk.audio):
                        r.trace.mark("tts_first_audio")
                        r.samples += len(chunk.audio)
                        self._emit(ev.ReplyAudio(chunk.audio, rt.tts.sample_rate, r.turn, p.index))
                r.spans.append((p.index, start, r.samples))
                if r.cancelled:
                    return
            pending.clear()
            if phrase is None:
                return

    def _prefill_user(self, text: str) -> int:
        """LLM thread. Returns the number of tokens prefilled for this turn."""
        if not self.cfg.pipeline.reuse_kv:  # baseline: forget the cache, prefill the whole history again
            return self.llm.replay(self.history + [{"role": "user", "content": text}])
        return self.llm.add_user(text)

    async def _commit(self, r: Reply) -> None:
        """Close the assistant message (everything generated) in the KV cache and the history; report the turn."""
        text = r.text.strip()
        if self.llm is not None and "transcript" in r.trace.info and not self.closed:
            await self.rt.run(self.rt.llm_pool, self.llm.end_reply, list(r.tokens))
            self.history.append({"role": "user", "content": r.trace.info["transcript"]})
            self.history.append({"role": "assistant", "content": text})
            r.committed = True
        if r.silent:
            return
        r.trace.info["reply"] = text
        self._emit(ev.ReplyDone(text, r.turn, r.cancelled, text))
        self.traces.append(r.trace)
        self._emit(ev.TurnLatency(r.turn, r.trace.relative_ms(), r.trace.v2v_ms(), dict(r.trace.info)))
        if path := self.cfg.pipeline.trace_log:
            with open(path, "a") as f:
                f.write(r.trace.log_line() + "\n")

    async def _barge_in(self, played: int | None = None) -> None:
        """The user spoke over the reply: stop it, keep in the history only what was played, flush the client."""
        r = self.reply
        if r is None or r.interrupted or r.silent:
            return
        played = self.playback.played() if played is None else played
        r.cancelled = r.interrupted = True
        if r.task is not None:
            try:
                await r.task
            except BaseException:
                pass
        self._emit(ev.Flush(r.turn, played))
        self.playback.reset()
        # phrase granularity: phrases whose audio was played to the end
        done = {i for i, a, b in r.spans if b <= played}
        kept = [p for p in r.phrases if p.index in done]
        n_tok = kept[-1].token_end if kept else 0
        text = " ".join(p.text for p in kept)
        if r.committed:
            await self.rt.run(self.rt.llm_pool, self.llm.end_reply, r.tokens[:n_tok])
            self.history[-1] = {"role": "assistant", "content": text}
        r.trace.info["interrupted_at_sample"] = played
        self._emit(ev.ReplyTruncated(text, r.turn, played))

    # ---------------------------------------------------------------------------------------------- utils
    def _emit(self, event) -> None:
        self.events.put_nowait(event)

    def _arrival_time(self, sample: int) -> float:
        keys = [k for k, _ in self._arrivals]
        i = bisect.bisect_left(keys, sample)
        return self._arrivals[min(i, len(self._arrivals) - 1)][1] if self._arrivals else time.monotonic()

    def _slice(self, a: int, b: int) -> np.ndarray:
        buf = np.concatenate(self._buf) if self._buf else np.zeros(0, np.float32)
        self._buf = [buf]
        a, b = max(a - self._buf_start, 0), max(b - self._buf_start, 0)
        return buf[a:b].copy()

    def _drop_before(self, sample: int) -> None:
        buf = np.concatenate(self._buf) if self._buf else np.zeros(0, np.float32)
        cut = max(0, min(len(buf), sample - self._buf_start))
        self._buf = [buf[cut:]]
        self._buf_start += cut

    def _trim_buffer(self) -> None:
        """Bound the audio kept: outside a turn, only the pre-roll; inside, MAX_UTTERANCE_S."""
        keep = MAX_UTTERANCE_S if self.turns.in_turn else PRE_ROLL_S + 0.1
        excess = (self._n_in - self._buf_start) - int(keep * INTERNAL_RATE)
        if excess > INTERNAL_RATE:  # trim in 1 s steps, not every frame
            self._drop_before(self._buf_start + excess)


def trace_summary(traces: list[TurnTrace]) -> str:
    return json.dumps([t.to_json() for t in traces], indent=1)
