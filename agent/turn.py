"""Turn taking as a pure state machine. Fed timestamped events — VAD probabilities, end-of-turn probabilities
computed during pauses, the agent's speaking state — it emits decisions: the user started talking, paused (use the
pause: prefill, draft), resumed (drop the draft), finished (endpoint), or interrupted the agent (barge-in).
No I/O and no clock of its own: times are audio-stream seconds given by the caller.

The endpoint is adaptive. Silence alone is a poor judge: people pause mid-sentence for as long as they pause at
the end. So the silence needed depends on P(end of turn) for what was said so far — short when the words are
clearly finished, long mid-sentence, never longer than `max_delay_s`. Two judges may say how finished the turn is:
the LLM's P(end-of-turn token) for the transcript so far (on_end_probability; needs the pause's ASR first, so on a
slow CPU it comes late) and an audio model's P(complete) for the turn's audio (on_audio_end_probability; smart-turn,
~50-100 ms into a pause). Each maps to a confidence in [0, 1]; with both fresh, the lower one decides: the turn
ends quickly only when both hear it finished (a mid-sentence hesitation can fool either one) — or, with
`judge_alone`, the audio judge's verdict decides by itself and the LLM's counts only when there is none.

The words get the last say (`confirm`): an endpoint the silence calls is only pending until the caller has read
the transcript (which the reply needs before it can start anyway). Speech in the meantime resumes the turn; a
transcript that trails off ("Eight of spades, four of cl...") rejects the endpoint, and that silence then ends the
turn only at `max_delay_s`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class Kind(str, Enum):
    SPEECH_START = "speech_start"
    PAUSE = "pause"  # silence >= pause_s inside a turn: background work may start
    RESUME = "resume"  # speech again after a PAUSE: what the pause prepared is stale
    ENDPOINT = "endpoint"
    # with TurnParams.confirm: the silence says the turn is over, pending a check of the words (the caller answers
    # confirm_end() -> ENDPOINT, or reject_end(): the turn goes on, and only max_delay_s of silence ends it)
    ENDPOINT_PENDING = "endpoint_pending"
    BARGE_IN = "barge_in"


@dataclass(frozen=True)
class Decision:
    kind: Kind
    t: float  # stream time the decision was taken
    speech_start: float  # start of the current utterance
    speech_end: float  # end of the last speech frame
    delay: float = 0.0  # ENDPOINT: the silence that was required


@dataclass
class TurnParams:
    threshold: float = 0.5
    neg_threshold: float = 0.35
    min_speech_s: float = 0.096
    barge_in_s: float = 0.2
    barge_in: bool = True
    pause_s: float = 0.1  # silence that counts as a pause (pause-time work starts)
    adaptive: bool = True  # False: a fixed silence of endpoint_silence_s ends the turn
    endpoint_silence_s: float = 0.5  # fixed mode
    unknown_delay_s: float = 0.8  # adaptive mode, while P(end) for the words so far is not known yet
    min_delay_s: float = 0.15  # adaptive: silence needed when P(end) >= p_high
    max_delay_s: float = 1.0  # adaptive: silence needed when P(end) <= p_low
    # P(end-of-turn token) spans decades (a cut sentence ~1e-5, a finished one 0.005-0.5 with SmolLM2-135M):
    # the delay is interpolated on log10(P) between these two
    p_low: float = 0.001
    p_high: float = 0.05
    # the audio judge's P(complete): at or above judge_p_high the turn is finished (min_delay_s), at or below
    # judge_p_low it is not (max_delay_s); in between the judge alone decides nothing (unknown_delay_s: wait for
    # the LLM's verdict) and, with the LLM's verdict known, counts linearly
    judge_p_low: float = 0.5
    judge_p_high: float = 0.95
    # True: once the audio judge has a verdict on the pause, it alone sets the delay (the LLM's P(end) counts only
    # without one). Measured offline (bench/pause_judge.py): on Whisper tiny.en transcripts the LLM's P(end) lets
    # more mid-sentence pauses through than it saves finished turns waiting
    judge_alone: bool = False
    # True: an endpoint is ENDPOINT_PENDING until the caller has checked the words (the transcript that the reply
    # needs anyway): speech before then resumes the turn, a transcript that trails off rejects it
    confirm: bool = False


def llm_confidence(p: TurnParams, p_end: float) -> float:
    """The LLM's P(end-of-turn token) -> how finished the turn is, in [0, 1] (log-interpolated)."""
    if p_end >= p.p_high:
        return 1.0
    if p_end <= p.p_low:
        return 0.0
    return (math.log10(p_end) - math.log10(p.p_low)) / (math.log10(p.p_high) - math.log10(p.p_low))


def audio_confidence(p: TurnParams, p_audio: float) -> float:
    """The audio judge's P(complete) -> how finished the turn is, in [0, 1] (linear)."""
    if p_audio >= p.judge_p_high:
        return 1.0
    if p_audio <= p.judge_p_low:
        return 0.0
    return (p_audio - p.judge_p_low) / (p.judge_p_high - p.judge_p_low)


def endpoint_delay(p: TurnParams, p_end: float | None, p_audio: float | None = None) -> float:
    """Silence (s) that ends the turn, given the LLM's P(end of turn) for everything said so far and the audio
    judge's P(complete) for the audio so far (None: not known yet)."""
    if not p.adaptive:
        return p.endpoint_silence_s
    if p.judge_alone and p_audio is not None:
        p_end = None
    if p_end is None and p_audio is not None and p.judge_p_low < p_audio < p.judge_p_high:
        return p.unknown_delay_s  # the audio judge is unsure: a mid-sentence hesitation sounds like this too
    xs = ([llm_confidence(p, p_end)] if p_end is not None else []) + \
         ([audio_confidence(p, p_audio)] if p_audio is not None else [])
    if not xs:
        return p.unknown_delay_s
    x = min(xs)
    if x >= 1.0:
        return p.min_delay_s
    if x <= 0.0:
        return p.max_delay_s
    return p.max_delay_s - x * (p.max_delay_s - p.min_delay_s)


class TurnTaker:
    """idle -> (speech >= min_speech) -> in turn -> (silence >= endpoint delay) -> idle with an ENDPOINT.
    Inside a turn, silence >= pause_s is a PAUSE and speech after it a RESUME. While the agent speaks, speech
    >= barge_in_s is a BARGE_IN (ignored in half duplex)."""

    def __init__(self, params: TurnParams):
        self.p = params
        self.in_turn = False  # the user holds the floor (speech_start emitted, no endpoint yet)
        self.agent_speaking = False
        self.paused = False  # a PAUSE was emitted and no speech since
        self.pending = False  # an ENDPOINT_PENDING was emitted and neither confirmed nor rejected yet
        self._pending_delay = 0.0
        self._unfinished_upto = -1.0  # reject_end(): the words up to here are unfinished (max_delay_s applies)
        self.p_end: float | None = None  # P(end of turn) for speech up to p_end_upto
        self.p_end_upto = -1.0
        self.p_audio: float | None = None  # the audio judge's P(complete) for speech up to p_audio_upto
        self.p_audio_upto = -1.0
        self._run_start: float | None = None  # start of the current run of speech frames
        self._last_speech: float = 0.0  # end time of the last speech frame
        self._turn_start = 0.0
        self._speech = False  # hysteresis state of the frame classifier

    @property
    def last_speech(self) -> float:
        """End (stream s) of the last speech frame."""
        return self._last_speech

    @property
    def turn_start(self) -> float:
        """Start (stream s) of the current turn's speech."""
        return self._turn_start

    def set_agent_speaking(self, speaking: bool) -> None:
        self.agent_speaking = speaking
        if speaking and not self.in_turn:
            self._run_start = None

    def on_end_probability(self, p_end: float, upto: float) -> None:
        """P(end of turn) computed on the transcript of speech up to stream time `upto`."""
        self.p_end, self.p_end_upto = p_end, upto

    def on_audio_end_probability(self, p_complete: float, upto: float) -> None:
        """The audio judge's P(complete) for the turn's audio up to stream time `upto` (the speech end it saw)."""
        self.p_audio, self.p_audio_upto = p_complete, upto

    def confirm_end(self, t: float) -> Decision | None:
        """The pending endpoint holds: the ENDPOINT decision (None when nothing is pending: the user resumed)."""
        if not self.pending:
            return None
        self.in_turn = self.paused = self.pending = False
        return Decision(Kind.ENDPOINT, t, self._turn_start, self._last_speech, self._pending_delay)

    def reject_end(self) -> None:
        """The pending endpoint does not hold (the words trail off): the turn goes on, and this silence ends it only
        at max_delay_s."""
        if self.pending:
            self.pending = False
            self._unfinished_upto = self._last_speech

    def current_delay(self) -> float:
        last = self._last_speech - 1e-6
        if self.p.adaptive and self._unfinished_upto >= last:
            return self.p.max_delay_s
        fresh = self.p_end is not None and self.p_end_upto >= last
        fresh_audio = self.p_audio is not None and self.p_audio_upto >= last
        return endpoint_delay(self.p, self.p_end if fresh else None, self.p_audio if fresh_audio else None)

    def on_vad(self, t_end: float, dur: float, prob: float) -> list[Decision]:
        """One VAD frame covering [t_end - dur, t_end]."""
        p = self.p
        self._speech = prob >= p.threshold if not self._speech else prob >= p.neg_threshold
        out: list[Decision] = []
        if self._speech:
            if self._run_start is None:
                self._run_start = t_end - dur
            self._last_speech = t_end
            run = t_end - self._run_start
            if self.in_turn:
                if self.paused or self.pending:
                    self.paused = self.pending = False
                    out.append(Decision(Kind.RESUME, t_end, self._turn_start, t_end))
            elif self.agent_speaking:
                if p.barge_in and run >= p.barge_in_s:
                    out.append(Decision(Kind.BARGE_IN, t_end, self._run_start, t_end))
                    self.agent_speaking = False
                    out.append(self._start(t_end))
            elif run >= p.min_speech_s:
                out.append(self._start(t_end))
        else:
            if not self.in_turn:
                self._run_start = None
                return out
            self._run_start = None
            silence = t_end - self._last_speech
            if self.pending:
                return out
            if silence >= self.current_delay():
                delay = self.current_delay()
                if p.confirm:  # the turn stays open (speech resumes it) until confirm_end() / reject_end()
                    self.pending = self.paused = True
                    self._pending_delay = delay
                    out.append(Decision(Kind.ENDPOINT_PENDING, t_end, self._turn_start, self._last_speech, delay))
                    return out
                self.in_turn = self.paused = False
                out.append(Decision(Kind.ENDPOINT, t_end, self._turn_start, self._last_speech, delay))
            elif not self.paused and silence >= p.pause_s:
                self.paused = True
                out.append(Decision(Kind.PAUSE, t_end, self._turn_start, self._last_speech))
        return out

    def _start(self, t: float) -> Decision:
        self.in_turn, self.paused, self.pending = True, False, False
        self._unfinished_upto = -1.0
        self.p_end, self.p_end_upto = None, -1.0
        self.p_audio, self.p_audio_upto = None, -1.0
        self._turn_start = self._run_start if self._run_start is not None else t
        return Decision(Kind.SPEECH_START, t, self._turn_start, t)
