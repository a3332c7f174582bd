"""One memory plan for the whole device: every model's weights, the LLM KV pool, ASR/TTS workspaces, CUDA-graph
pools and a safety reserve. Pure arithmetic — the runtime measures the sizes and asks for a plan; the plan says
how many KV pages fit, how many sessions can be admitted, and refuses clearly when the models cannot fit.

    plan = make_plan(total=80 * GiB, fixed={"llm weights": ..., "asr weights": ..., ...},
                     reserve=0.05, kv_bytes_per_token=..., page_tokens=16, session_tokens=4096)
    print(plan.table())
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .models import ModelError

GiB = 1 << 30
MiB = 1 << 20


class MemoryPlanError(ModelError):
    """The models (and one session's KV cache) do not fit the device; the message says what to change."""


def _amount(value: float | int, total: int) -> int:
    """A size given as bytes (>= 1) or as a fraction of the device (< 1)."""
    return int(value * total) if 0 <= value < 1 else int(value)


@dataclass
class Plan:
    total: int
    fixed: dict[str, int]  # name -> bytes (weights, workspaces, graph pools)
    reserve: int
    kv_bytes_per_token: int
    page_tokens: int
    kv_pages: int
    session_tokens: int  # per-session quota
    notes: list[str] = field(default_factory=list)

    @property
    def page_bytes(self) -> int:
        return self.kv_bytes_per_token * self.page_tokens

    @property
    def kv_bytes(self) -> int:
        return self.kv_pages * self.page_bytes

    @property
    def kv_tokens(self) -> int:
        return self.kv_pages * self.page_tokens

    @property
    def max_sessions(self) -> int:
        """Sessions that can each hold a full quota at once (more may be admitted while their KV is evicted)."""
        return self.kv_tokens // max(self.session_tokens, 1)

    @property
    def planned(self) -> int:
        return sum(self.fixed.values()) + self.kv_bytes

    def table(self) -> str:
        rows = [(k, v) for k, v in self.fixed.items()]
        rows += [(f"LLM KV pool ({self.kv_pages} pages x {self.page_tokens} tokens)", self.kv_bytes),
                 ("safety reserve", self.reserve)]
        width = max(len(k) for k, _ in rows) + 2
        lines = [f"{'memory plan':<{width}} {'MiB':>10} {'share':>7}"]
        for k, v in rows:
            lines.append(f"{k:<{width}} {v / MiB:>10.1f} {100 * v / self.total:>6.1f}%")
        free = self.total - self.planned - self.reserve
        lines.append(f"{'unplanned':<{width}} {free / MiB:>10.1f} {100 * free / self.total:>6.1f}%")
        lines.append(f"{'device total':<{width}} {self.total / MiB:>10.1f}")
        lines.append(f"KV: {self.kv_tokens} tokens, {self.session_tokens} per session -> "
                     f"{self.max_sessions} sessions at full quota")
        return "\n".join(lines + self.notes)


def make_plan(total: int, fixed: dict[str, int], reserve: float | int, kv_bytes_per_token: int,
              page_tokens: int = 16, session_tokens: int = 4096, kv_limit: float | int | None = None,
              min_sessions: int = 1) -> Plan:
    """Size the KV pool from what is left after the fixed items and the reserve.
    Raises MemoryPlanError naming what does not fit."""
    reserve_b = _amount(reserve, total)
    used = sum(fixed.values())
    left = total - used - reserve_b
    need = min_sessions * session_tokens * kv_bytes_per_token
    if left < need:
        biggest = max(fixed, key=fixed.get) if fixed else "nothing"
        raise MemoryPlanError(
            f"the models do not fit: {used / GiB:.2f} GiB fixed ({', '.join(f'{k} {v / GiB:.2f}' for k, v in fixed.items())}) "
            f"+ {reserve_b / GiB:.2f} GiB reserve leaves {max(left, 0) / GiB:.2f} GiB of {total / GiB:.2f} GiB, "
            f"but {min_sessions} session(s) of {session_tokens} tokens need {need / GiB:.2f} GiB of KV cache; "
            f"the largest item is {biggest}: use a smaller model, fewer tokens per session, or a larger device")
    if kv_limit is not None:
        left = min(left, _amount(kv_limit, total))
    pages = left // (kv_bytes_per_token * page_tokens)
    return Plan(total, dict(fixed), reserve_b, kv_bytes_per_token, page_tokens, int(pages), session_tokens)


def kv_bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    return 2 * n_layers * n_kv_heads * head_dim * dtype_bytes  # K and V


@dataclass
class Admission:
    """Admit a new session only when the others keep their latency target (pure; fed measured load)."""
    max_sessions: int
    refused: int = 0

    def admit(self, live: int, predicted_p95_ms: float | None = None, target_ms: float = 500.0) -> tuple[bool, str]:
        if live >= self.max_sessions:
            self.refused += 1
            return False, f"at capacity: {live} live sessions (limit {self.max_sessions})"
        if predicted_p95_ms is not None and predicted_p95_ms > target_ms:
            self.refused += 1
            return False, (f"admitting another session would put p95 latency at ~{predicted_p95_ms:.0f} ms, over "
                           f"the {target_ms:.0f} ms target")
        return True, ""


class KVLedger:
    """Least-recently-used accounting of sessions' KV tokens: who to evict (their KV is re-prefilled during their
    next pause) when a session needs pages and the pool is short."""

    def __init__(self, capacity_tokens: int):
        self.capacity = capacity_tokens
        self.used: dict[str, int] = {}
        self.last_use: dict[str, float] = {}

    def touch(self, sid: str, tokens: int, now: float) -> None:
        self.used[sid] = tokens
        self.last_use[sid] = now

    def drop(self, sid: str) -> None:
        self.used.pop(sid, None)
        self.last_use.pop(sid, None)

    def to_evict(self, sid: str, need_tokens: int, busy: set[str] = frozenset()) -> list[str]:
        """Idle sessions to evict (oldest first) so that `sid` can grow by need_tokens; [] if none needed.
        Raises MemoryPlanError if even evicting every idle session would not make room."""
        free = self.capacity - sum(self.used.values())
        if free >= need_tokens:
            return []
        out = []
        for other in sorted(self.last_use, key=self.last_use.get):
            if other == sid or other in busy:
                continue
            out.append(other)
            free += self.used[other]
            if free >= need_tokens:
                return out
        raise MemoryPlanError(f"KV pool exhausted: {need_tokens} tokens needed, {free} free after evicting "
                              f"every idle session")


def admission(live: int, max_sessions: int, *, free_kv_tokens: int, evictable_kv_tokens: int, session_tokens: int,
              loads: dict[str, dict] | None = None, wait_target_ms: float = 150.0, busy_limit: float = 0.9,
              min_items: int = 20) -> tuple[bool, str, str]:
    """May one more session start? Pure: fed the KV pool's state and the GPU workers' measured load.
    Returns (admit, code, reason); code is "" when admitted, "server_full" at the hard cap, "server_busy" when the
    KV plan cannot hold one more session's quota even after evicting every idle session, or when a worker's recent
    load says the live sessions' deadlines would start to slip (p95 queue wait of its urgent items over the target,
    measured on at least `min_items` items; or busy more than `busy_limit` of the time).

    `loads`: {worker name: its PriorityWorker.load()} for every worker the sessions share (the LLM's, the ASR's,
    the TTS's, the judge's): any one over a limit refuses, and the reason names it. At 96 callers on the H100 under
    fifo the LLM's urgent items waited 6 ms on average while the ASR's waited 2.3 s and the TTS's 230 ms
    (sessions_order_4074be0_h100.json): the LLM's load alone admitted callers into sessions that were already late.
    None or {}: the load rules are off."""
    if live >= max_sessions:
        return False, "server_full", f"the server is at its limit of {max_sessions} sessions; try again later"
    if free_kv_tokens + evictable_kv_tokens < session_tokens:
        return False, "server_busy", (
            f"not enough KV cache for another session: {free_kv_tokens} tokens free and {evictable_kv_tokens} held by "
            f"idle sessions, a session may need {session_tokens}; try again later")
    loads = loads or {}
    late = [(ld["urgent_wait_p95_ms"], name) for name, ld in loads.items()
            if ld.get("urgent_wait_p95_ms") is not None and ld.get("urgent_items", 0) >= min_items
            and ld["urgent_wait_p95_ms"] > wait_target_ms]
    if late:
        wait, name = max(late)
        return False, "server_busy", (
            f"the server is too busy to keep its latency target: urgent work on the {name} worker waits {wait:.0f} ms "
            f"at p95 (target {wait_target_ms:.0f} ms); try again later")
    full = [(ld["busy"], name) for name, ld in loads.items() if ld.get("busy") is not None and ld["busy"] > busy_limit]
    if full:
        b, name = max(full)
        return False, "server_busy", (f"the server is too busy to keep its latency target: the {name} worker was busy "
                                      f"{100 * b:.0f} % of the last seconds (limit {100 * busy_limit:.0f} %); "
                                      f"try again later")
    return True, "", ""
