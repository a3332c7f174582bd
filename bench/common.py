"""Shared bits for benchmarks: the header every result file carries, and where results go."""

from __future__ import annotations

import datetime as _dt
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
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu} ({os.cpu_count()} cores)"


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
    return {"device": device_name(), "commit": git_commit(),
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
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def percentile(values, q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")
