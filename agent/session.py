"""One conversation: audio in -> VAD -> turn taking -> ASR -> LLM (history in its KV cache) -> phrases -> TTS ->
audio events out, with barge-in and a latency trace per turn. Transport-agnostic: a transport feeds audio with
`feed()`, reads `events`, and reports what it sent with `audio_sent()`."""

from __future__ import annotations

import asyncio
import bisect
import inspect
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
from .worker import Priority, paced_deadline, urgent_deadline

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
    t_start: float = field(default_factory=time.monotonic)  # the endpoint: urgent work is due soon after it


class TokenText:
    """Incremental detokenisation: the text each new token adds (None while a UTF-8 sequence is incomplete)."""

    def __init__(self, llm):
        self.llm = llm
        self.tokens: list[int] = []
        self.text = ""

    def add(self, tok: int) -> str | None:
        self.tokens.append(tok)
        full = self.llm.decode(self.tokens)
        if full.endswith("\ufffd"):
            return None
        piece, self.text = full[len(self.text):], full
        return piece


BURST_MAX_TOKENS = 32  # a first phrase is at most [phrases] first_max_words words: the burst ends there or earlier


def add_token(tok: int | None, tt: TokenText, chunker: PhraseChunker) -> tuple:
    """One generated token into the reply's text and phrases -> (its text piece, the phrase it completes). piece is
    None while a UTF-8 sequence is incomplete (the token still belongs to the current phrase); tok None: the end."""
    if tok is None:
        return None, None
    piece = tt.add(tok)
    return piece, chunker.push("" if piece is None else piece)


def phrase_burst(gen, tt: TokenText, chunker: PhraseChunker, max_tokens: int, yield_to=None) -> list[tuple]:
    """On the LLM worker: the reply's tokens up to the end of the phrase being generated (at most max_tokens), as
    [(tok, piece, phrase)] (add_token's; tok None: the reply ended). One worker item for the first phrase instead of
    one per token: at 64 callers each token's round trip through the event loop took ~14 ms against a ~6 ms step.
    `yield_to()` true (other urgent work is queued on the worker): stop after the token in hand. Other sessions'
    first phrases then go on in the same batched decode steps, one token an item, as without the burst: a burst
    that ran to its phrase's end regardless stepped alone, and when endpoints came together the sessions' first
    phrases ran one after another (H100, 64 callers: after-endpoint p95 355-399 -> 1,044-1,092 ms)."""
    out = []
    for _ in range(max_tokens):
        tok = next(gen, None)
        out.append((tok, *add_token(tok, tt, chunker)))
        if tok is None or out[-1][2] is not None or (yield_to is not None and yield_to()):
            break
    return out


@dataclass
class Draft:
    """The first phrase of a reply, generated and synthesized during a pause on a fork of the session."""
    transcript: str
    priority: Priority = Priority.BACKGROUND  # raised to URGENT when the endpoint wants it
    llm: object = None  # the forked ChatSession
    text: TokenText | None = None
    chunker: PhraseChunker | None = None
    phrase: Phrase | None = None
    chunks: list = field(default_factory=list)  # TTSChunk of the phrase
    ended: bool = False  # the whole reply fitted in the draft
    cancelled: bool = False
    task: asyncio.Task | None = None
    tts: asyncio.Future | None = None  # the phrase's synthesis while it runs
    release: asyncio.Task | None = None  # frees the fork once a discarded draft's task has ended
    queued: list = field(default_factory=list)  # (worker, future, ready) of its items still queued or running
    t: dict = field(default_factory=dict)  # stage -> time.monotonic(): fork, prefill, first_token, phrase, audio, taken

    def run(self, pool, fn, *args, ready=None) -> asyncio.Future:
        """One of the draft's model calls on a PriorityWorker, at the draft's priority (background until the
        endpoint wants it). `ready`: for a token of its reply, "a batched decode step already produced it"; it
        counts only once the draft is urgent, as for a reply's tokens (a background item stays behind the rest)."""
        urgent = self.priority == Priority.URGENT
        fut = pool.submit_with(self.priority, fn, *args, ready=ready if urgent else None)
        entry = (pool, fut, ready)
        self.queued.append(entry)
        fut.add_done_callback(lambda _: self.queued.remove(entry) if entry in self.queued else None)
        return asyncio.wrap_future(fut)

    def make_urgent(self) -> None:
        """The endpoint waits for this draft: its remaining calls, and those already queued, are urgent, and a
        token a batched step already produced is handed over first, as a reply's are (without it, at 64 callers
        each draft token queued behind a round of other sessions' tokens: ~1 s for a first phrase)."""
        self.priority = Priority.URGENT
        for pool, fut, ready in list(self.queued):
            pool.promote(fut, Priority.URGENT, ready=ready)


@dataclass
class PauseWork:
    """What one pause prepares: the transcript so far, the KV prefill, P(end of turn), maybe a draft."""
    upto: float  # speech end (stream s) that the transcript covers
    asr: asyncio.Task | None = None
    task: asyncio.Task | None = None
    transcript: str | None = None
    asr_p_end: float | None = None  # the recogniser's P(end of text) after the transcript's last word, if known
    p_end: float | None = None
    prefilled: int = 0
    draft: Draft | None = None
    stale: bool = False
    t: dict = field(default_factory=dict)  # stage -> time.monotonic(), for the turn's trace (pause timeline)


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
        t = cfg.turn
        self.turns = TurnTaker(TurnParams(
            threshold=cfg.vad.threshold, neg_threshold=cfg.vad.neg_threshold,
            min_speech_s=cfg.vad.min_speech_ms / 1000, barge_in_s=t.barge_in_ms / 1000,
            barge_in=t.barge_in if barge_in is None else barge_in, pause_s=t.pause_ms / 1000, adaptive=t.adaptive,
            endpoint_silence_s=t.endpoint_silence_ms / 1000, unknown_delay_s=t.unknown_delay_ms / 1000,
            min_delay_s=t.min_delay_ms / 1000,
            max_delay_s=t.max_delay_ms / 1000, p_low=t.p_low, p_high=t.p_high,
            judge_p_low=t.judge_p_low, judge_p_high=t.judge_p_high, judge_alone=t.judge_alone,
            confirm=t.confirm_endpoint))
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
        self.pause: PauseWork | None = None  # the current pause's work, if any
        self.judge_task: asyncio.Task | None = None  # the audio end-of-turn judge on the current pause
        self.confirm_task: asyncio.Task | None = None  # reads the transcript of a pending endpoint
        self._rejected: list[dict] = []  # endpoints the words took back in the current turn (for its trace)
        self.p_audio: tuple[float, float] | None = None  # its last verdict: (P(complete), speech end it saw)
        self._judged_upto = -1.0  # the speech end whose silence the judge last ran on (once per silence)
        self._judge_at = 0.0  # time.monotonic() of the last verdict
        self._non_finite = 0  # input samples that were NaN or infinite (replaced by silence)
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
        audio = np.asarray(audio, dtype=np.float32)
        finite = np.isfinite(audio)
        if not finite.all():  # only an embedder's own float audio can hold these (the wire formats are integers);
            # kept, they would go on with the turn's audio: the judge refuses them, the ASR hears "!"
            bad = int(audio.size - np.count_nonzero(finite))
            audio = np.where(finite, audio, np.float32(0.0))
            if not self._non_finite:
                self._emit(ev.ErrorEvent("bad_audio", f"{bad} NaN or infinite input samples replaced by silence "
                                                      f"(said once per session)"))
            self._non_finite += bad
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
        batcher = self.rt.vad_batcher
        probs = self.vad.feed(x) if batcher is None else await batcher.feed(self.vad, x)
        if self.closed:
            return
        for prob in probs:
            self._vad_pos += self.rt.vad.window
            t_end = self._vad_pos / INTERNAL_RATE
            for d in self.turns.on_vad(t_end, self.rt.vad.window / INTERNAL_RATE, prob):
                await self._decide(d)
            if self.rt.judge is not None:
                self._maybe_judge(t_end)

    def audio_sent(self, n_samples: int) -> None:
        """The transport handed n reply samples (at `out_rate`) to the listener."""
        r = self.reply
        if r is not None and not r.cancelled:
            r.trace.mark("audio_sent")
        self.playback.push(n_samples)

    async def close(self) -> None:
        """End the session: stop the reply and the pause-time work, give back every KV page (the conversation's
        and a draft fork's). Waits at most for the model calls already running."""
        self.closed = True
        pause, self.pause = self.pause, None
        if self.judge_task is not None:
            self.judge_task.cancel()
        self._cancel_confirm()
        if pause is not None:
            self._drop(pause)  # cancels the pause task and discards its draft
            if pause.asr is not None:
                pause.asr.cancel()  # nobody needs the transcript (an ASR call already running finishes unseen)
        if self.reply and self.reply.task and not self.reply.task.done():
            self.reply.cancelled = True
            try:
                await self.reply.task
            except BaseException:
                pass
        if pause is not None:  # nothing of the pause outlives the session
            d = pause.draft
            await asyncio.gather(*[t for t in (pause.task, pause.asr, d and d.task, d and d.release) if t],
                                 return_exceptions=True)
        if self.llm is not None:
            await self.rt.run(self.rt.llm_pool, self.llm.free)
            self.llm = None

    # ------------------------------------------------------------------------------------------- decisions
    async def _decide(self, d: Decision) -> None:
        if d.kind is Kind.BARGE_IN:
            await self._barge_in()
        elif d.kind is Kind.SPEECH_START:
            self._emit(ev.SpeechStarted(d.speech_start))
        elif d.kind is Kind.PAUSE:
            self._start_pause(d)
        elif d.kind is Kind.RESUME:
            self._cancel_confirm()
            self._drop_pause()
        elif d.kind is Kind.ENDPOINT_PENDING:
            self._cancel_confirm()
            if self.auto_respond:
                self.confirm_task = asyncio.create_task(self._confirm_endpoint(d, time.monotonic()))
            else:  # the client answers when it wants to: its turn events stay prompt, no check of the words
                self._end_turn(self.turns.confirm_end(d.t))
        elif d.kind is Kind.ENDPOINT:
            self._end_turn(d)

    def _end_turn(self, d: Decision, endpoint_at: float | None = None) -> None:
        self._emit(ev.SpeechStopped(d.speech_end))
        self._start_reply(d, endpoint_at)

    async def _confirm_endpoint(self, d: Decision, at: float) -> None:
        """The silence says the turn is over: check the words first. Their transcript is the one the reply starts
        from (the pause's, started now if the endpoint came before the pause), so waiting for it costs the reply
        nothing. Trailing off ("... four of cl...") -> the turn goes on, unless the silence is already max_delay."""
        pw = self.pause
        if pw is None or pw.upto < d.speech_end - 1e-6:  # no pause yet: only the transcript, for the reply
            self._drop_pause()
            pw = self.pause = PauseWork(upto=d.speech_end)
            pw.asr = asyncio.create_task(self._transcribe_pause(pw, self._slice(*turn_span(d))))
        try:
            text = await asyncio.shield(pw.asr)
        except asyncio.CancelledError:
            return
        except Exception:  # the ASR failed: end the turn anyway, and the reply transcribes it again
            log.exception("endpoint check failed")
            self._drop_pause()
            text = ""
        now = self._vad_pos / INTERNAL_RATE
        p_asr = pw.asr_p_end
        why = unfinished(text, p_asr, self.cfg.turn.asr_end_min_p)
        if why and now - d.speech_end < self.turns.p.max_delay_s - 1e-6:
            self.turns.reject_end()
            self._rejected.append({"text": text, "asr_p_end": None if p_asr is None else round(p_asr, 4), "why": why})
            log.info(json.dumps({"event": "endpoint_rejected", "turn": self.turn_index + 1, **self._rejected[-1],
                                 "silence_ms": round((now - d.speech_end) * 1000)}))
        elif (end := self.turns.confirm_end(now)) is not None:
            self._end_turn(end, at)

    def _cancel_confirm(self) -> None:
        if self.confirm_task is not None and not self.confirm_task.done():
            self.confirm_task.cancel()
        self.confirm_task = None

    def _update_speaking(self, now: float) -> None:
        r = self.reply
        busy = r is not None and (r.task is not None and not r.task.done())
        speaking = busy or self.playback.playing(now)
        if speaking != self.turns.agent_speaking:
            self.turns.set_agent_speaking(speaking)

    def _start_reply(self, d: Decision, endpoint_at: float | None = None) -> None:
        """The turn taker decided the user is done: transcribe what they said and (by default) answer."""
        trace = TurnTrace(self.turn_index + 1)
        trace.mark("speech_end", self._arrival_time(int(d.speech_end * INTERNAL_RATE)))
        trace.mark("endpoint", endpoint_at)  # when the silence called it (a pending one: confirmed just now)
        if endpoint_at is not None:
            trace.mark("endpoint_confirmed")
        a, b = turn_span(d)
        audio = self._slice(a, b)
        self._drop_before(b)
        pause, self.pause = self.pause, None
        trace.info["endpoint_delay_ms"] = round(d.delay * 1000)
        if pause is not None and pause.p_end is not None:
            trace.info["p_end"] = round(pause.p_end, 4)
        if pause is not None and pause.asr_p_end is not None:
            trace.info["asr_p_end"] = round(pause.asr_p_end, 4)  # Whisper's P(end of text) for the checked words
        if self._rejected:  # endpoints of this turn the words took back (the caller went on, or max_delay came)
            trace.info["endpoints_rejected"], self._rejected = self._rejected, []
        if self.p_audio is not None and self.p_audio[1] >= d.speech_end - 1e-6:
            trace.info["p_audio"] = round(self.p_audio[0], 4)
            trace.info["judge_ms"] = round((self._judge_at - trace.t["speech_end"]) * 1000, 1)  # verdict in
        if pause is not None and pause.t:  # the pause's timeline, ms after the end of speech (where it got to by now)
            t0 = trace.t["speech_end"]
            trace.info["pause_ms"] = {k: round((v - t0) * 1000, 1) for k, v in pause.t.items()}
        if pause is not None and pause.upto < d.speech_end - 1e-6:  # the user spoke again after that pause
            self._drop(pause)
            pause = None
        self._launch(trace, audio=audio, respond=self.auto_respond, pause=pause)

    def _launch(self, trace: TurnTrace, audio: np.ndarray | None = None, text: str | None = None,
                respond: bool = True, pause: PauseWork | None = None) -> Reply:
        self.turn_index += 1
        trace.turn = self.turn_index
        self.playback.reset()
        reply = Reply(self.turn_index, trace)
        self.reply = reply
        self.turns.set_agent_speaking(True)
        reply.task = asyncio.create_task(self._respond(reply, audio, text, respond, pause))
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
        self._cancel_confirm()
        self.turns.in_turn = self.turns.pending = False
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

    # ---------------------------------------------------------------------------------------------- pauses
    # A pause is idle time: transcribe what was said so far, prefill it into the KV cache (its logits give
    # P(end of turn) for free), and when the turn looks finished, draft the first phrase on a fork — generated
    # and synthesized before the endpoint. All of it is background work on the LLM worker.
    def _start_pause(self, d: Decision) -> None:
        self._drop_pause()
        if self.llm is None or not self.auto_respond:
            return
        pw = PauseWork(upto=d.speech_end)
        pw.t["pause"] = time.monotonic()
        pw.asr = asyncio.create_task(self._transcribe_pause(pw, self._slice(*turn_span(d))))
        pw.task = asyncio.create_task(self._pause_work(pw))
        self.pause = pw

    def _maybe_judge(self, t: float) -> None:
        """The audio judge, once per silence inside a turn, as soon as it has heard judge_after_ms of it — before
        the PAUSE when judge_after_ms < pause_ms (the judge needs no transcript)."""
        tt = self.turns
        end = tt.last_speech
        if not tt.in_turn or end == self._judged_upto or t - end < self.cfg.turn.judge_after_ms / 1000 - 1e-6:
            return
        self._judged_upto = end
        # up to the VAD frame that reached judge_after_ms, not to the last sample received: the judge hears the
        # same silence whatever the client's chunk size and the server's load (over 16 ms more or less of silence
        # its P moves by 0.13 on average, up to 0.79: perf-notes, "Fourteenth session")
        self._run_judge(int(max(0.0, tt.turn_start - PRE_ROLL_S) * INTERNAL_RATE), round(t * INTERNAL_RATE), end)

    def _run_judge(self, a: int, b: int, upto: float) -> None:
        """The audio judge on the turn's audio (samples a to b), on its own thread."""
        if self.judge_task is not None:
            self.judge_task.cancel()  # a verdict on older audio nobody waits for
        self.judge_task = asyncio.create_task(self._judge(self._slice(a, b), upto))

    async def _judge(self, audio: np.ndarray, upto: float) -> float | None:
        """P(complete) from the audio judge for the turn's audio up to a pause; fed to the turn taker, which
        ignores it once the user has spoken again."""
        try:
            p = await self.rt.judge_p_end(audio)
        except asyncio.CancelledError:
            return None
        except Exception:
            log.exception("audio end-of-turn judge failed")  # the endpoint falls back to the LLM / silence
            return None
        self.p_audio = (p, upto)
        self._judge_at = time.monotonic()
        self.turns.on_audio_end_probability(p, upto)
        return p

    async def _transcribe(self, audio: np.ndarray) -> str:
        return (await self.rt.transcribe(audio)).strip()

    async def _transcribe_pause(self, pw: PauseWork, audio: np.ndarray) -> str:
        """A pause's transcript; keeps the recogniser's P(end of text) for the endpoint check when the check is on
        and the ASR reports it (otherwise the batched path)."""
        if not self.cfg.turn.confirm_endpoint or self.cfg.turn.asr_end_min_p <= 0:
            return await self._transcribe(audio)
        text, pw.asr_p_end = await self.rt.transcribe_with_end(audio)
        return text.strip()

    async def _pause_work(self, pw: PauseWork) -> None:
        rt, t = self.rt, self.cfg.turn
        try:
            pw.transcript = text = await asyncio.shield(pw.asr)
            pw.t["asr"] = time.monotonic()
            if pw.stale or not text:
                return
            self._emit(ev.TranscriptEvent(text, False, self.turn_index + 1, text))
            if self.turns.pending:  # the endpoint is being checked on this very transcript: if it holds, the reply
                return  # prefills it at once (urgent); a background prefill now would hold the worker (~50 ms)
            if t.pause_prefill:
                pw.prefilled, pw.p_end = await rt.llm_pool.run(Priority.BACKGROUND, self.llm.sync_user, text,
                                                               False, True)
            elif t.llm_p_end:  # ablation: judge the end of turn on a throw-away fork, keep nothing in the cache
                pw.p_end = await rt.llm_pool.run(Priority.BACKGROUND, self.llm.end_probability, text)
            pw.t["prefill"] = time.monotonic()
            if pw.stale:
                return
            if t.llm_p_end and pw.p_end is not None:
                if trails_off(text):  # Whisper's "..." marks a voice that stopped mid-phrase
                    pw.p_end = min(pw.p_end, t.p_low)
                self.turns.on_end_probability(pw.p_end, pw.upto)
            p_audio = None
            if self.judge_task is not None and not t.draft_early:  # done long before the transcript, normally
                p_audio = await asyncio.shield(self.judge_task)
                if self.p_audio is None or self.p_audio[1] < pw.upto - 1e-6:
                    p_audio = None  # a verdict on an earlier pause
            if pw.stale:
                return
            llm_says = t.llm_p_end and pw.p_end is not None and pw.p_end >= t.draft_min_p
            judge_says = p_audio is not None and p_audio >= t.judge_draft_min_p
            if t.draft and (llm_says or judge_says or t.draft_early):
                pw.t["draft_start"] = time.monotonic()
                pw.draft = Draft(text)
                pw.draft.task = asyncio.create_task(self._make_draft(pw.draft))
                await asyncio.shield(pw.draft.task)
                pw.t["draft_audio"] = time.monotonic()
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("pause-time work failed")

    async def _make_draft(self, d: Draft) -> None:
        rt, pool = self.rt, self.rt.llm_pool
        gen = None
        try:
            d.llm = await d.run(pool, self.llm.fork)
            d.t["fork"] = time.monotonic()
            if d.cancelled:
                return
            await d.run(pool, d.llm.sync_user, d.transcript, True)
            d.t["prefill"] = time.monotonic()
            if d.cancelled:
                return
            d.text = TokenText(rt.llm)
            ph = self.cfg.phrases
            d.chunker = PhraseChunker(ph.first_min_words, ph.first_max_words, ph.min_words, ph.max_words)
            gen = d.llm.generate_reply()  # a generator: nothing runs until its first next(), on the worker
            while not d.cancelled and d.phrase is None:
                tok = await d.run(pool, next, gen, None, ready=getattr(d.llm, "token_ready", None))
                d.t.setdefault("first_token", time.monotonic())
                if tok is None:
                    d.ended = True
                    d.phrase = d.chunker.flush()
                    break
                piece = d.text.add(tok)
                d.phrase = d.chunker.push(piece if piece is not None else "")
            d.t["phrase"] = time.monotonic()
            await d.run(pool, gen.close)
            gen = None
            if d.phrase is not None and not d.cancelled:  # background too: another session's first audio goes first
                d.tts = d.run(rt.tts_pool, lambda text: list(rt.tts.synthesize(text)), d.phrase.text)
                d.chunks = await d.tts  # _discard cancels it: a discarded draft does not wait for its audio
                d.t["audio"] = time.monotonic()
        finally:
            if gen is not None:  # cancelled mid-way: close the generation on the worker, in order
                pool.submit_with(Priority.URGENT, gen.close)

    def _drop_pause(self) -> None:
        if self.pause is not None:
            self._drop(self.pause)
            self.pause = None

    def _drop(self, pw: PauseWork) -> None:
        """The user went on speaking (or the words changed): what this pause prepared is stale."""
        pw.stale = True
        if pw.asr is not None and not pw.asr.done():
            pw.asr.cancel()  # not started yet: never runs
        if pw.draft is not None:
            self._discard(pw.draft)
        if pw.task is not None:
            pw.task.cancel()

    def _discard(self, d: Draft) -> None:
        if d.release is not None:
            return
        d.cancelled = True
        d.priority = Priority.URGENT  # what is left (closing its generation, freeing its pages) is cheap: no wait
        if d.tts is not None:
            d.tts.cancel()

        async def free_after():
            if d.task is not None:
                await asyncio.gather(d.task, return_exceptions=True)
            if d.llm is not None:
                await self.rt.llm_pool.run(Priority.URGENT, d.llm.free)

        d.release = asyncio.ensure_future(free_after())

    async def _take_draft(self, pw: PauseWork | None, text: str) -> Draft | None:
        """At the endpoint: the draft, finished, when it answers exactly what was said; else nothing."""
        if pw is None:
            return None
        d = pw.draft
        if d is not None and not d.cancelled and d.transcript == text:
            d.t["taken"] = time.monotonic()
            d.make_urgent()
            await asyncio.gather(d.task, return_exceptions=True)
            if d.phrase is not None and d.chunks and not d.cancelled:
                await asyncio.gather(pw.task, return_exceptions=True)
                return d
        self._drop(pw)
        if pw.task is not None:
            await asyncio.gather(pw.task, return_exceptions=True)  # nothing of it may still be queued
        return None

    # ---------------------------------------------------------------------------------------------- reply
    async def _respond(self, r: Reply, audio: np.ndarray | None, text: str | None, respond: bool,
                       pause: PauseWork | None = None) -> None:
        rt, cfg = self.rt, self.cfg
        pool = rt.llm_pool
        tts_q: asyncio.Queue = asyncio.Queue()
        tts_task = asyncio.create_task(self._speak(r, tts_q))
        gen = None
        try:
            if audio is not None:
                if pause is not None and pause.asr is not None:  # transcribed during the pause already
                    text = await asyncio.shield(pause.asr)
                    r.trace.info["asr_during_pause"] = True
                else:
                    text = await self._transcribe(audio)
                r.trace.mark("transcript")
                self._emit(ev.TranscriptEvent(text, True, r.turn, text))
            if text:
                self.pending_user.append(text.strip())
            if not respond or not self.pending_user or r.cancelled:
                r.silent = True
                if pause is not None:
                    self._drop(pause)
                return
            text = " ".join(self.pending_user)
            self.pending_user.clear()
            r.trace.info["transcript"] = text
            if self.llm is None:
                await self.start()
            draft = await self._take_draft(pause, text)
            ph = cfg.phrases
            if draft is not None:  # the first phrase is ready: adopt the fork, play its audio now
                old, self.llm = self.llm, draft.llm
                pool.submit_with(Priority.BACKGROUND, old.free)
                r.trace.info.update(drafted=True, prefill_tokens=0)
                if "speech_end" in r.trace.t:  # where the draft was when the endpoint took it, and when it got done
                    t0 = r.trace.t["speech_end"]
                    r.trace.info["draft_ms"] = {k: round((v - t0) * 1000, 1) for k, v in sorted(
                        draft.t.items(), key=lambda kv: kv[1])}
                r.trace.mark("llm_first_token")
                tt, chunker = draft.text, draft.chunker
                r.tokens = tt.tokens
                r.text = tt.text
                self._emit(ev.ReplyDelta(tt.text, r.turn))
                self._phrase_ready(r, draft.phrase, tts_q, chunks=draft.chunks)
                budget = cfg.llm.max_new_tokens - len(r.tokens)
                if draft.ended:
                    budget = 0
            else:
                n_new = await pool.run(Priority.URGENT, self._prefill_user, text)
                r.trace.info["prefill_tokens"] = n_new  # prefilled after the endpoint
                if pause is not None:
                    r.trace.info["prefilled_in_pause"] = pause.prefilled
                tt = TokenText(rt.llm)
                r.tokens = tt.tokens
                chunker = PhraseChunker(ph.first_min_words, ph.first_max_words, ph.min_words, ph.max_words)
                budget = cfg.llm.max_new_tokens
            if budget > 0 and not r.cancelled:
                # a generator function: the call runs nothing (no hop to the LLM thread, whose queue an urgent item
                # waits ~15 ms in at 64 callers); its first next() below, on the worker, starts the generation
                gen = self.llm.generate_reply(budget)
            ended = False
            while gen is not None and not r.cancelled and not ended:
                # the first phrase is urgent; after it, generation only has to stay ahead of playback
                prio = Priority.URGENT if not r.phrases else Priority.PACED
                kw = dict(deadline=self._deadline(r, prio), ready=getattr(self.llm, "token_ready", None))
                if prio == Priority.URGENT and cfg.pipeline.first_phrase_burst:
                    # the first phrase's tokens in one item: no hop to the event loop and back between them. It
                    # ends early when other urgent work is queued, so a ready one (first, as cheap) stays cheap
                    steps = await pool.run(prio, phrase_burst, gen, tt, chunker, BURST_MAX_TOKENS,
                                           getattr(pool, "urgent_waiting", None), **kw)
                else:
                    tok = await pool.run(prio, next, gen, None, **kw)
                    steps = [(tok, *add_token(tok, tt, chunker))]
                for tok, piece, phrase in steps:
                    if tok is None:
                        ended = True
                        break
                    r.trace.mark("llm_first_token")  # with a burst: when its tokens reach the loop, not the first's
                    if piece is None:
                        continue
                    r.text = tt.text
                    if piece:
                        self._emit(ev.ReplyDelta(piece, r.turn))
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
                await pool.run(Priority.URGENT, gen.close)  # ends the engine's generation request
            await tts_q.put(None)
            if r.cancelled:
                tts_task.cancel()
            try:
                await tts_task
            except asyncio.CancelledError:
                pass
            except Exception as e:  # synthesis failed: this turn ends here, the session goes on
                log.exception("turn %d: speech synthesis failed", r.turn)
                self._emit(ev.ErrorEvent("turn_failed", f"turn {r.turn} failed: {type(e).__name__}: {e}"))
                r.cancelled = True
            try:
                await self._commit(r)
            except Exception as e:  # e.g. the KV pool is out of pages: report it, keep the session
                log.exception("turn %d: closing the reply failed", r.turn)
                self._emit(ev.ErrorEvent("turn_failed", f"turn {r.turn} failed: {type(e).__name__}: {e}"))

    def _deadline(self, r: Reply, prio: Priority, llm: bool = True) -> float:
        """When this reply's next item is due (agent/worker.py): urgent work (first phrase, first audio) soon after
        the endpoint; paced work when the audio already sent runs out (for the LLM: plus the speech of the tokens
        generated but not sent as audio yet), minus a margin."""
        if prio == Priority.URGENT:
            return urgent_deadline(r.t_start)
        sent = r.phrases[len(r.spans) - 1].token_end if r.spans else 0
        return paced_deadline(time.monotonic(), self.playback.end_time, max(0, len(r.tokens) - sent) if llm else 0)

    def _batched_tts(self) -> bool:
        """Phrases advance by `tts.step` items that the TTS thread batches across sessions ([tts] batch_steps)."""
        return (self.cfg.tts.batch_steps and hasattr(self.rt.tts, "step_batch")
                and hasattr(self.rt.tts_pool, "submit_with"))

    async def _tts(self, r: Reply, p: Phrase, fn, *args, batch=None):
        """A TTS call for phrase p: the first phrase is urgent, later ones paced by playback. batch=(key, fn):
        queued with other sessions' calls of that key, it may run as one batch with them (agent/worker.py)."""
        pool = self.rt.tts_pool
        if not hasattr(pool, "submit_with"):
            return await self.rt.run(pool, fn, *args)
        prio = Priority.URGENT if r.phrases and p is r.phrases[0] else Priority.PACED
        return await pool.run(prio, fn, *args, deadline=self._deadline(r, prio, llm=False), batch=batch)

    async def _chunks(self, r: Reply, p: Phrase, ready: list | None):
        """An async callable giving phrase p's next audio chunk (None at its end): from a draft's chunks, already
        made; else from the TTS thread, one item a chunk — batched with other sessions' ([tts] batch_steps), or
        stepping the backend's synthesis generator."""
        rt = self.rt
        if ready is not None:
            it = iter(ready)

            async def done_chunk():
                return next(it, None)
            return done_chunk
        if self._batched_tts():  # nothing runs yet: each step is one item, batched with others
            stream = rt.tts.stream(p.text)
            return lambda: self._tts(r, p, rt.tts.step, stream, batch=("tts.step", rt.tts.step_batch))
        if inspect.isgeneratorfunction(rt.tts.synthesize):  # the call runs nothing: no hop to the TTS thread; the
            it = rt.tts.synthesize(p.text)  # first next() there starts the phrase
        else:
            it = await self._tts(r, p, rt.tts.synthesize, p.text)
        return lambda: self._tts(r, p, next, it, None)

    def _phrase_ready(self, r: Reply, phrase: Phrase, tts_q: asyncio.Queue, chunks: list | None = None) -> None:
        r.trace.mark("first_phrase")
        r.phrases.append(phrase)
        tts_q.put_nowait((phrase, chunks))

    async def _speak(self, r: Reply, q: asyncio.Queue) -> None:
        """Synthesize phrases as they come (or all at the end, in the no-streaming baseline)."""
        rt = self.rt
        pending: list = []
        while True:
            item = await q.get()
            if item is not None:
                pending.append(item)
                if self.cfg.pipeline.stream_tts is False:
                    continue
            for p, ready in pending:
                start, seen = r.samples, set()
                next_chunk = await self._chunks(r, p, ready)
                while not r.cancelled:
                    chunk = await next_chunk()
                    if chunk is None or r.cancelled:  # a barge-in while the TTS ran: its audio is not sent
                        break
                    audio = chunk.audio
                    if not r.samples and len(audio):  # the reply's first audio: leading silence is only latency
                        k = lead_silence(audio, rt.tts.sample_rate)
                        audio, start = audio[k:], start - k  # word timings move with the audio
                    for w in chunk.words:  # backends may repeat the phrase's timings with every chunk
                        if (w.start, w.end) not in seen:
                            seen.add((w.start, w.end))
                            r.words.append((w.word, p.index, max(0, start + w.start), max(0, start + w.end)))
                    if len(audio):
                        r.trace.mark("tts_first_audio")
                        r.samples += len(audio)
                        self._emit(ev.ReplyAudio(audio, rt.tts.sample_rate, r.turn, p.index))
                r.spans.append((p.index, max(0, start), r.samples))
                if r.cancelled:
                    return
            pending.clear()
            if item is None:
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
        by_voice = played is None  # our VAD heard the user (not a client's truncate message)
        played = self.playback.played() if played is None else played
        r.cancelled = r.interrupted = True
        # the client stops playing now; the reply task ends after its current LLM step / TTS call and the KV
        # bookkeeping (hundreds of ms on a CPU), and emits no audio after this (_speak checks `cancelled`)
        self._emit(ev.Flush(r.turn, played))
        self.playback.reset()
        if r.task is not None:
            try:
                await r.task
            except BaseException:
                pass
        if r.words:  # word granularity, from the TTS's word timings: words played to their end
            n_words = sum(1 for _, _, _, end in r.words if end <= played)
            text = " ".join(w for w, _, _, _ in r.words[:n_words])
            n_tok = word_boundary(self.rt.llm.decode, r.tokens, n_words)
        else:  # phrase granularity: phrases whose audio was played to the end
            done = {i for i, a, b in r.spans if b <= played}
            kept = [p for p in r.phrases if p.index in done]
            n_tok = kept[-1].token_end if kept else 0
            text = " ".join(p.text for p in kept)
        if (by_voice and r.committed and played == 0 and len(self.history) >= 2
                and self.history[-2]["role"] == "user"):
            # the listener heard nothing of it (a false cut-off caught at once): the user's turn goes on, and the
            # next reply answers these words together with what follows, as if the agent had never spoken
            await self.rt.run(self.rt.llm_pool, self.llm.drop_last_turn)
            self.pending_user.insert(0, self.history[-2]["content"])
            del self.history[-2:]
            text = ""
        elif r.committed:
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


def turn_span(d: Decision) -> tuple[int, int]:
    """The samples (16 kHz stream indices) that hold a turn's speech: PRE_ROLL_S before it to POST_ROLL_S after."""
    return int(max(0.0, d.speech_start - PRE_ROLL_S) * INTERNAL_RATE), int((d.speech_end + POST_ROLL_S) * INTERNAL_RATE)


def lead_silence(audio: np.ndarray, rate: int, level: float = 0.01, keep_s: float = 0.005) -> int:
    """Samples of near-silence (below `level`, -40 dBFS) before the first sound, less `keep_s` of onset. Piper
    starts every phrase with 40-75 ms of it (measured), which the caller would only wait through."""
    loud = np.flatnonzero(np.abs(audio) > level)
    if not len(loud):
        return 0
    return max(0, int(loud[0]) - int(keep_s * rate))


# words a finished turn does not end on (articles, possessives, conjunctions, "of"): "I'd like a table for the..."
_DANGLING = frozenset("a an the my your our their and or but nor of because although if unless whether than".split())


def trails_off(text: str) -> bool:
    """The words stop mid-phrase. Whisper ends such a transcript with an ellipsis or a cut word ("Eight of spades,
    four of cl...", "Eight of s-"); or the last word is one a finished turn does not end on. Its P(end-of-turn
    token) still reads like a finished sentence's (the LLM sees the punctuation), so this overrides it, and it
    rejects a pending endpoint. Measured with tiny.en (bench/results/pause_judge_cpu.json): 17 of 81 pause
    transcripts at a word gap spliced mid-sentence trail off so, 1 of 100 at the end of a finished clip (a LJSpeech
    fragment that stops mid-sentence itself, "...natural there for...")."""
    t = text.rstrip()
    if t.endswith(("...", "\u2026", "-", "\u2014", "\u2013")):
        return True
    words = t.lower().rstrip(".,;:!?\"')").split()
    return bool(words) and words[-1] in _DANGLING


def unfinished(text: str, p_end: float | None, min_p: float) -> str | None:
    """Why the words of a pending endpoint say the turn goes on, or None: "trails_off" (see trails_off), or
    "asr_p_end" when the recogniser's P(end of text) after the last word is below min_p ([turn] asr_end_min_p; 0:
    never). The endpoint check and bench/pause_judge.py's replay of it."""
    if trails_off(text):
        return "trails_off"
    return "asr_p_end" if p_end is not None and p_end < min_p else None


def word_boundary(decode, tokens: list[int], n_words: int) -> int:
    """The number of leading tokens that spell exactly the first n_words words (cut at a word start)."""
    if n_words <= 0:
        return 0
    best = 0
    for k in range(1, len(tokens) + 1):
        text = decode(tokens[:k])
        words = len(text.split())
        if words > n_words:
            break
        at_word_end = k == len(tokens) or decode(tokens[:k + 1])[len(text):][:1].isspace()
        if words == n_words and at_word_end:
            return k
        if at_word_end:
            best = k
    return best
