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


def machine_probe() -> dict:
    """About a second of fixed work that says how fast this machine is, so that two runs of one commit on two
    machines can be told apart (on the H100s lent here the same 64-caller run has varied twofold: docs/perf-notes.md,
    "Sixteenth session"). Always: the host's Python (a pure-Python loop, ms). On CUDA also: the cost of one small
    kernel launch as the host queues it (us), a bf16 8192^3 matmul (TFLOP/s), a 1 GiB device copy (GB/s read plus
    written) and what nvidia-smi says of the clocks, power and throttling."""
    import time

    def best(fn, n=3):
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts)

    out = {"python_loop_ms": round(best(lambda: sum(i * i for i in range(1_000_000))) * 1000, 1)}
    try:
        import torch
    except ImportError:
        return out
    if not torch.cuda.is_available():
        return out
    dev = torch.device("cuda")
    x = torch.zeros(1, device=dev)

    def launches(n=2000):
        for _ in range(n):
            x.add_(1)
        torch.cuda.synchronize()

    launches(200)
    out["launch_us"] = round(best(launches) / 2000 * 1e6, 2)

    from triton.testing import do_bench  # ms, median of the runs: how bench/kernels.py times GPU work

    def matmul_tflops():
        a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        return round(2 * 8192 ** 3 / do_bench(lambda: a @ b, return_mode="median") / 1e9, 1)

    def copy_gbps():
        src = torch.empty(1 << 28, device=dev)  # 1 GiB of float32
        dst = torch.empty_like(src)
        return round(2 * src.numel() * 4 / do_bench(lambda: dst.copy_(src), return_mode="median") / 1e6, 1)

    out["matmul_tflops"], out["copy_gbps"] = matmul_tflops(), copy_gbps()  # their tensors are freed on return
    torch.cuda.empty_cache()
    out["nvidia_smi"] = nvidia_smi_query(("clocks.sm", "clocks.max.sm", "clocks.mem", "power.draw", "power.limit",
                                          "temperature.gpu"))
    for name in ("clocks_event_reasons.active", "clocks_throttle_reasons.active"):  # newer name, then older
        reasons = nvidia_smi_query((name,))
        if isinstance(reasons, dict):
            out["nvidia_smi"] = {**out["nvidia_smi"], **reasons} if isinstance(out["nvidia_smi"], dict) else reasons
            break
    return out


def nvidia_smi_query(fields) -> dict | str:
    """One nvidia-smi reading of `fields` (its --query-gpu names) for GPU 0, as {field: text}; or why not."""
    cmd = ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits", "-i", "0"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return repr(e)
    if r.returncode != 0:
        return (r.stdout + r.stderr).strip()[:300]
    return dict(zip(fields, (v.strip() for v in r.stdout.strip().splitlines()[0].split(","))))


CLOCK_FIELDS = ("clocks.sm", "clocks.mem", "power.draw", "temperature.gpu", "utilization.gpu")


def summarize_clock_lines(lines) -> dict | None:
    """nvidia-smi's csv lines of CLOCK_FIELDS (one per sample) -> min / median / max of each; unreadable lines (a
    "[N/A]", a header) are skipped. None when no line could be read."""
    import statistics

    rows = []
    for line in lines:
        try:
            rows.append([float(v) for v in line.split(",")])
        except ValueError:
            continue
    rows = [r for r in rows if len(r) == len(CLOCK_FIELDS)]
    if not rows:
        return None
    out = {"samples": len(rows)}
    for i, name in enumerate(CLOCK_FIELDS):
        col = [r[i] for r in rows]
        out[name] = {"min": min(col), "median": statistics.median(col), "max": max(col)}
    return out


class ClockLog:
    """nvidia-smi sampling CLOCK_FIELDS every interval_ms for as long as the `with` block runs, in one child process
    (not one process per sample), read by a thread. `summary` afterwards: summarize_clock_lines; None without
    nvidia-smi."""

    def __init__(self, interval_ms: int = 500):
        self.interval_ms, self.lines, self.summary, self.proc = interval_ms, [], None, None

    def __enter__(self):
        import shutil
        import threading

        if shutil.which("nvidia-smi") is None:
            return self
        self.proc = subprocess.Popen(["nvidia-smi", f"--query-gpu={','.join(CLOCK_FIELDS)}",
                                      "--format=csv,noheader,nounits", "-i", "0", "-lms", str(self.interval_ms)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.reader.join(timeout=5)
            self.summary = summarize_clock_lines(self.lines)
        return False


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
