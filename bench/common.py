"""Shared bits for benchmarks: the header every result file carries, and where results go."""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def git_commit() -> str:
    if env := os.environ.get("QUICKTURN_COMMIT"):  # set when the tree was copied without .git
        return env
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except Exception:
        return "unknown"


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    return f"cpu: {host_cpu()}"


@functools.cache
def host_cpu() -> str:
    """The host's CPU model and core count: on a GPU machine the host-bound work (Python, the GIL, the launches)
    runs on it, so two machines with the same GPU can give different timings."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores)"


def gpu_tag() -> str:
    """'h100' / 'h200' / 'cpu' for result file names."""
    name = device_name().lower()
    for tag in ("h100", "h200", "a100", "l40s", "l4"):
        if tag in name:
            return tag
    return "cpu" if name.startswith("cpu") else name.split()[-1]


def result_header(**extra) -> dict:
    load = None
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return {"device": device_name(), "host": host_cpu(), "commit": git_commit(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "load_average": load,
            **extra}


def result_path(name: str, out_dir: Path | None = None) -> Path:
    """Where a result file (JSON, plot) goes: out_dir, else $QUICKTURN_RESULTS, else bench/results (an absolute
    name stays where it says). Its folder exists."""
    path = Path(out_dir or os.environ.get("QUICKTURN_RESULTS") or RESULTS) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_result(name: str, payload: dict, out_dir: Path | None = None) -> Path:
    path = result_path(name, out_dir)
    text = json.dumps(payload, indent=2, sort_keys=False)
    if len(text) > 300_000:  # per-turn records of many callers: compact (the carry to the GPU counts these bytes)
        text = json.dumps(payload, separators=(",", ":"))
    path.write_text(text + "\n")
    return path


def percentile(values, q: float) -> float:
    """Linear-interpolated percentile; a value that is infinite (a turn never answered) makes every percentile
    that reaches it infinite (numpy gives nan where two infinities meet)."""
    import numpy as np

    if not len(values):
        return float("nan")
    with np.errstate(invalid="ignore"):
        x = float(np.percentile(np.asarray(values, dtype=float), q))
    return float("inf") if x != x else x


# ---- what a client heard as the reply to one turn (bench/voice_to_voice.py, bench/sessions.py) -------------------
# A client records every binary audio chunk as (arrival, bytes) and the events ("reply_done", turn, interrupted,
# arrival) and ("flush", turn, None, arrival). An endpoint called while the user was in fact still speaking (a false
# cut-off) starts a reply that arrives before the user's true end of speech and is interrupted (flush, then an
# interrupted reply_done): it is not the answer. The answer is the first reply completed without interruption after
# the true end of speech; its audio is what arrived after that end and after the last flush.


def answered(events, t_end: float) -> int | None:
    """The server turn of the reply that answers speech ending at t_end (None: not yet)."""
    return next((turn for name, turn, intr, at in events if name == "reply_done" and not intr and at >= t_end), None)


def reply_chunks(chunks, events, t_end: float) -> list:
    """The audio chunks of the answer: those that arrived after t_end and after the last flush."""
    start = max([t_end] + [at for name, _, _, at in events if name == "flush"])
    return [(at, c) for at, c in chunks if at >= start]


def first_audible_ms(chunks, rate: int, t_end: float, level: float) -> float | None:
    """ms from t_end to the first sample above `level` (16-bit PCM chunks played back to back from the first one's
    arrival); None without one."""
    import numpy as np

    if not chunks:
        return None
    pcm = np.frombuffer(b"".join(c for _, c in chunks), dtype="<i2").astype(np.float32) / 32768
    loud = np.flatnonzero(np.abs(pcm) > level)
    return (chunks[0][0] + loud[0] / rate - t_end) * 1000 if len(loud) else None
