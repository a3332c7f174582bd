"""Turn taking as a pure state machine: fed timestamped VAD probabilities and the agent's speaking state, it
decides when the user started talking, when their turn ended (endpoint) and when they interrupted the agent.
No I/O, no clocks of its own: times are audio-stream seconds given by the caller."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(str, Enum):
    SPEECH_START = "speech_start"
    ENDPOINT = "endpoint"
    BARGE_IN = "barge_in"


@dataclass(frozen=True)
class Decision:
    kind: Kind
    t: float  # stream time the decision was taken
    speech_start: float  # start of the current utterance
    speech_end: float  # end of the last speech frame (== t for SPEECH_START)


@dataclass
class TurnParams:
    threshold: float = 0.5
    neg_threshold: float = 0.35
    min_speech_s: float = 0.096
    endpoint_silence_s: float = 0.5
    barge_in_s: float = 0.2
    barge_in: bool = True


class TurnTaker:
    """idle -> (speech >= min_speech) -> speaking -> (silence >= endpoint_silence) -> idle with an ENDPOINT.
    While the agent speaks, speech >= barge_in_s is a BARGE_IN (or ignored in half duplex)."""

    def __init__(self, params: TurnParams):
        self.p = params
        self.in_turn = False  # the user holds the floor (speech_start emitted, no endpoint yet)
        self.agent_speaking = False
        self._run_start: float | None = None  # start of the current run of speech frames
        self._last_speech: float = 0.0  # end time of the last speech frame
        self._turn_start = 0.0
        self._speech = False  # hysteresis state of the frame classifier

    def set_agent_speaking(self, speaking: bool) -> None:
        self.agent_speaking = speaking
        if speaking and not self.in_turn:
            self._run_start = None

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
            if not self.in_turn:
                if self.agent_speaking:
                    if p.barge_in and run >= p.barge_in_s:
                        out.append(Decision(Kind.BARGE_IN, t_end, self._run_start, t_end))
                        self.agent_speaking = False
                        out.append(self._start(t_end))
                elif run >= p.min_speech_s:
                    out.append(self._start(t_end))
        else:
            if not self.in_turn:
                self._run_start = None
            elif t_end - self._last_speech >= p.endpoint_silence_s:
                self.in_turn = False
                self._run_start = None
                out.append(Decision(Kind.ENDPOINT, t_end, self._turn_start, self._last_speech))
        return out

    def _start(self, t: float) -> Decision:
        self.in_turn = True
        self._turn_start = self._run_start if self._run_start is not None else t
        return Decision(Kind.SPEECH_START, t, self._turn_start, t)
