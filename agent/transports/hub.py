"""What every transport of one `quickturn serve` process shares: the runtime, the session capacity, the Prometheus
metrics, the health answers and the JSON log format. A transport opens its sessions through `Hub.open()` (which
refuses past `server.max_sessions`) and passes every session event to `Hub.observe()`."""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .. import events as ev
from ..runtime import Runtime
from ..session import Session
from ..trace import STAGES

log = logging.getLogger("quickturn.hub")

# seconds after the end of the user's speech; CPU turns reach several seconds, GPU turns a few hundred ms
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0)


class Metrics:
    """The process's Prometheus metrics, in a registry of their own (several servers can live in one process)."""

    def __init__(self, hub: "Hub"):
        self.registry = r = CollectorRegistry()
        self.stage = Histogram("quickturn_stage_latency_seconds",
                               "Time from the end of the user's speech to each pipeline stage of a turn",
                               ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.v2v = Histogram("quickturn_voice_to_voice_seconds",
                             "End of the user's speech to the first reply audio handed to the transport",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.turns = Counter("quickturn_turns_total", "Replies finished", ["transport", "interrupted"], registry=r)
        self.sessions = Counter("quickturn_sessions_total", "Sessions opened", ["transport"], registry=r)
        self.refused = Counter("quickturn_sessions_refused_total", "Sessions refused because the server was full",
                               ["transport"], registry=r)
        self.errors = Counter("quickturn_errors_total", "Errors reported to clients", ["transport", "code"],
                              registry=r)
        self.live = Gauge("quickturn_sessions_live", "Sessions open now", ["transport"], registry=r)
        self.refusals = Counter("quickturn_refusals_total", "Connections refused or closed by a limit (bad origin, "
                                "too many sessions from one address, idle, too long, slow consumer, ...)",
                                ["transport", "reason"], registry=r)
        cap = Gauge("quickturn_sessions_capacity_left", "Sessions this process can still accept", registry=r)
        cap.set_function(lambda: hub.capacity_left())
        gpu = Gauge("quickturn_gpu_memory_bytes", "GPU memory held by this process's tensors (0 without a GPU)",
                    ["kind"], registry=r)
        gpu.labels("allocated").set_function(lambda: _cuda_memory("memory_allocated"))
        gpu.labels("reserved").set_function(lambda: _cuda_memory("memory_reserved"))
        for t in ("quickturn", "realtime", "twilio", "webrtc"):
            self.live.labels(t).set(0)
        r.register(WorkerCollector(hub.rt))

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class WorkerCollector:
    """The scheduler's worker threads (ASR, LLM, TTS, judge), read at each scrape: what admission control decides
    on (agent/memory.py `admission`: recent urgent queue wait and busy fraction) and the paced items that waited
    for urgent work on another worker ([pipeline] paced_yield_s)."""

    def __init__(self, rt: Runtime):
        self.rt = rt

    def collect(self):
        busy = GaugeMetricFamily("quickturn_worker_busy_ratio", "Fraction of the last window the worker ran items",
                                 labels=["worker"])
        wait = GaugeMetricFamily("quickturn_worker_urgent_wait_p95_seconds",
                                 "p95 queue wait of the worker's urgent items in the last window (NaN: none)",
                                 labels=["worker"])
        queued = GaugeMetricFamily("quickturn_worker_queued", "Items waiting in the worker's queue", labels=["worker"])
        held = CounterMetricFamily("quickturn_worker_paced_holds", "Paced items that waited for urgent work on "
                                   "another worker", labels=["worker"])
        for name, pool in self.rt.worker_pools():
            if not hasattr(pool, "load"):  # a plain thread pool (the onnxruntime judge)
                continue
            load = pool.load()
            busy.add_metric([name], load["busy"])
            p95 = load["urgent_wait_p95_ms"]
            wait.add_metric([name], float("nan") if p95 is None else p95 / 1000)
            queued.add_metric([name], load["queued"])
            held.add_metric([name], pool.held_total)
        yield from (busy, wait, queued, held)


def _cuda_memory(fn: str) -> float:
    torch = sys.modules.get("torch")  # never import torch just to answer a scrape
    try:
        if torch is not None and torch.cuda.is_available():
            return float(getattr(torch.cuda, fn)())
    except Exception:
        pass
    return 0.0


class Hub:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self.cfg = rt.config.server
        self.sessions: dict[int, tuple[str, Session]] = {}
        self.ids = itertools.count(1)
        self.started = time.time()
        self.draining = False  # set on shutdown: /readyz answers 503 so load balancers stop sending calls
        self.metrics = Metrics(self)
        # embedding hooks (agent/embed.py): how sessions are made, what a Twilio key press does
        self.session_factory: Callable[..., Session] = lambda rt, rate, info=None, **kw: Session(rt, rate, **kw)
        self.on_dtmf = None  # async (session, digit) -> None
        self.refusals: dict[str, int] = {}  # refusal code -> count (agent/limits.py Refusal codes)
        from ..limits import log_content_enabled

        self.log_content = log_content_enabled(self.cfg.log_content)  # transcripts and reply text in DEBUG logs

    # ------------------------------------------------------------------------------------------ capacity
    def capacity_left(self) -> int:
        return max(0, self.cfg.max_sessions - len(self.sessions))

    def reserve(self, transport: str) -> int | None:
        """A session id, or None (and a refusal counted) when the server is full, when a worker is stuck (health), or
        when admission control refuses (Runtime.admit: the KV plan, the measured load); `last_refusal` is then
        (code, message)."""
        self.last_refusal = ("server_full", f"the server is at its limit of {self.cfg.max_sessions} sessions; "
                             "try again later")
        admitted = self.capacity_left() > 0 and not self.draining
        stuck = self.health().get("stuck") if admitted else None
        if stuck:  # a worker every session needs is not coming back: a new caller would wait for nothing
            admitted = False
            self.last_refusal = ("server_busy", f"the server cannot answer new calls: its {', '.join(stuck)} worker "
                                 f"has been on one call for over {self.cfg.stuck_after_s:.0f} s; try again later")
        if admitted and hasattr(self.rt, "admit"):
            admitted, code, why = self.rt.admit(len(self.sessions))
            if not admitted:
                self.last_refusal = (code, why)
        if not admitted:
            self.metrics.refused.labels(transport).inc()
            log.warning(json.dumps({"event": "session_refused", "transport": transport,
                                    "live": len(self.sessions)}))
            return None
        return next(self.ids)

    def add(self, sid: int, transport: str, session: Session) -> None:
        self.sessions[sid] = (transport, session)
        self.metrics.sessions.labels(transport).inc()
        self.metrics.live.labels(transport).inc()
        log.info(json.dumps({"event": "session_open", "session": sid, "transport": transport}))

    def open(self, transport: str, input_rate: int, info: dict | None = None, **kw) -> tuple[int, Session] | None:
        """Reserve and create a session (not started yet); None when the server is full. `info`: what the
        transport knows about the caller, for the embedding hooks."""
        sid = self.reserve(transport)
        if sid is None:
            return None
        session = self.session_factory(self.rt, input_rate, info={"transport": transport, **(info or {})}, **kw)
        self.add(sid, transport, session)
        return sid, session

    def remove(self, sid: int) -> None:
        entry = self.sessions.pop(sid, None)
        if entry is not None:
            self.metrics.live.labels(entry[0]).dec()
            log.info(json.dumps({"event": "session_close", "session": sid, "transport": entry[0]}))

    # ------------------------------------------------------------------------------------------- metrics
    def observe(self, transport: str, e) -> None:
        """Every session event passes here on its way to the client."""
        if isinstance(e, ev.TurnLatency):
            for stage, ms in e.ms.items():
                if stage != "speech_end" and ms is not None:
                    self.metrics.stage.labels(stage).observe(max(0.0, ms) / 1000)
            if e.v2v_ms is not None:
                self.metrics.v2v.observe(max(0.0, e.v2v_ms) / 1000)
            log.info(json.dumps({"event": "turn_latency", "transport": transport, "turn": e.turn, "ms": e.ms,
                                 "v2v_ms": e.v2v_ms}))
        elif isinstance(e, ev.ReplyDone):
            self.metrics.turns.labels(transport, str(e.interrupted).lower()).inc()
        elif isinstance(e, ev.ErrorEvent):
            self.metrics.errors.labels(transport, e.code).inc()
        if self.log_content and isinstance(e, (ev.TranscriptEvent, ev.ReplyDone)) and log.isEnabledFor(logging.DEBUG):
            # conversation content: only when asked for ([server] log_content / $QUICKTURN_LOG_CONTENT)
            kind = "transcript" if isinstance(e, ev.TranscriptEvent) else "reply"
            log.debug(json.dumps({"event": kind, "transport": transport, "turn": e.turn, "text": e.text}))

    def error(self, transport: str, code: str) -> None:
        self.metrics.errors.labels(transport, code).inc()

    def refuse(self, transport: str, code: str) -> None:
        """A connection refused or ended by a limit (agent/limits.py), before or after the upgrade."""
        self.refusals[code] = self.refusals.get(code, 0) + 1
        self.metrics.refusals.labels(transport, code).inc()

    # -------------------------------------------------------------------------------------------- health
    def health(self) -> dict:
        """Liveness: "ok", or "stuck" when a worker thread has run one item for [server] stuck_after_s or has died
        (every session waiting on it would hang: restart the process). Each worker's snapshot says what it runs."""
        workers = {name: pool.snapshot() for name, pool in self.rt.worker_pools() if hasattr(pool, "snapshot")}
        limit = self.cfg.stuck_after_s
        stuck = sorted(n for n, w in workers.items()
                       if not w["alive"] or (limit > 0 and w["running_s"] >= limit))
        out = {"status": "stuck" if stuck else "ok", "uptime_s": round(time.time() - self.started, 1),
               "workers": workers}
        if stuck:
            out["stuck"] = stuck
        return out

    def readiness(self) -> tuple[bool, dict]:
        left = self.capacity_left()
        stuck = self.health().get("stuck", [])
        ready = left > 0 and not self.draining and not stuck
        return ready, {"ready": ready, "sessions": len(self.sessions), "max_sessions": self.cfg.max_sessions,
                       "capacity_left": left, "draining": self.draining, "stuck": stuck}


STAGE_NAMES = STAGES  # re-exported for docs and tests


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (messages that are JSON objects are merged in)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name}
        msg = record.getMessage()
        try:
            obj = json.loads(msg)
        except (ValueError, TypeError):
            obj = None
        if isinstance(obj, dict):
            out.update(obj)
        else:
            out["msg"] = msg
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def use_json_logs(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("websockets", "faster_whisper", "aioice", "aiortc"):  # per-request / per-packet chatter
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
