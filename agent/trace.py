"""Per-turn latency trace: named timestamps on one monotonic clock, reported relative to the end of speech."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

# The stages, in the order a turn passes them.
STAGES = (
    "speech_end",  # last speech frame (VAD), mapped to when that audio arrived
    "endpoint",  # the turn taker decided the user is done (by the silence; with confirm_endpoint, pending then)
    "endpoint_confirmed",  # ... and the transcript did not trail off (confirm_endpoint)
    "transcript",  # final transcript ready
    "llm_first_token",
    "first_phrase",  # first phrase complete (text)
    "tts_first_audio",  # first synthesized audio ready
    "audio_sent",  # first reply audio handed to the transport
)


@dataclass
class TurnTrace:
    turn: int
    t: dict[str, float] = field(default_factory=dict)  # stage -> time.monotonic()
    info: dict = field(default_factory=dict)

    def mark(self, stage: str, when: float | None = None) -> None:
        if stage not in self.t:
            self.t[stage] = time.monotonic() if when is None else when

    def relative_ms(self) -> dict[str, float]:
        base = self.t.get("speech_end")
        if base is None:
            return {}
        return {s: round((self.t[s] - base) * 1000, 1) for s in STAGES if s in self.t}

    def v2v_ms(self) -> float | None:
        if "speech_end" in self.t and "audio_sent" in self.t:
            return (self.t["audio_sent"] - self.t["speech_end"]) * 1000
        return None

    def to_json(self) -> dict:
        return {"turn": self.turn, "ms_from_speech_end": self.relative_ms(), "v2v_ms": self.v2v_ms(), **self.info}

    def log_line(self) -> str:
        return json.dumps({"event": "turn_latency", **self.to_json()})


def format_table(trace: TurnTrace) -> str:
    rel = trace.relative_ms()
    lines = [f"{'stage':<18} {'t (ms)':>8} {'+ (ms)':>8}"]
    prev = 0.0
    for s in STAGES:
        if s in rel:
            lines.append(f"{s:<18} {rel[s]:>8.0f} {rel[s] - prev:>8.0f}")
            prev = rel[s]
    return "\n".join(lines)
