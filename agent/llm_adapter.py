"""The conversation's view of the LLM engine: chat turns in, reply tokens out, the history living in the session's
KV cache. Every method runs on the runtime's LLM thread (the engine is thread-confined)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

from .config import LLMConfig


class ChatLLM:
    def __init__(self, engine, chat, tokenizer, cfg: LLMConfig):
        self.engine = engine
        self.chat = chat
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.system_ids = list(chat.system_ids(cfg.system_prompt)) if cfg.system_prompt else []
        self.prefix = None  # the system prompt's pages, prefilled once and shared by every session
        # synthetic-weight benchmarks: the scripted reply's ids, ending with the end-of-reply token
        self.script = (tuple(tokenizer.encode(cfg.script_reply, add_special_tokens=False)) +
                       (chat.end_of_reply_ids()[0],)) if cfg.script_reply else None

    @classmethod
    def load(cls, cfg: LLMConfig, path: Path, max_sessions: int = 8, plan_pages=None) -> "ChatLLM":
        """plan_pages(model, page_size) -> KV pages: the runtime's memory plan (agent/memory.py), asked once the
        weights are loaded; without it, max_context_tokens x max_sessions tokens."""
        import torch

        from llm.chat import ChatFormat
        from llm.engine import Engine
        from llm.tokenizer import load_tokenizer
        from llm.weights import load_model

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        dtype = getattr(torch, cfg.dtype)
        model = load_model(path, device=cfg.device, dtype=dtype)
        from .config import resolve_model

        tokenizer = load_tokenizer(resolve_model(cfg.tokenizer, "LLM tokenizer") if cfg.tokenizer else path)
        page_size = 16
        num_pages = (plan_pages(model, page_size) if plan_pages else
                     max(64, cfg.max_context_tokens * max_sessions // page_size))
        # one decode graph batch for every session the server admits (beyond it, decode steps run eagerly)
        engine = Engine(model, tokenizer, num_pages=num_pages, page_size=page_size, device=cfg.device, dtype=dtype,
                        max_batch=max(64, max_sessions))
        return cls(engine, ChatFormat.from_tokenizer(tokenizer), tokenizer, cfg)

    def new_session(self) -> "ChatSession":
        if self.prefix is None and self.system_ids:
            self.prefix = self.engine.prefix(self.system_ids)
        cs = ChatSession(self, self.engine.new_session(prefix=self.prefix))
        self.conversations[cs] = time.monotonic()
        return cs

    # ---- KV pressure: per-session quota, LRU eviction of idle conversations --------------------------------
    # A conversation's quota (`quota_tokens`, [memory] session_tokens): when a new user message and the reply
    # budget would take it past the quota, its oldest whole turns are dropped from the cache (re-prefilled after
    # the system prompt: positions change). Under pool pressure (fewer free pages than an operation needs), idle
    # conversations — not generating, no draft fork alive, no open user message — give their pages back, least
    # recently used first; their token ids are kept, and their next operation (normally the pause-time prefill of
    # the next turn, background work) re-prefills them first.
    quota_tokens: int = 0  # 0: no quota
    evict_idle: bool = True
    evictions = restores = restored_tokens = dropped_turns = 0

    @property
    def conversations(self) -> dict:
        """Live main conversations -> last use (monotonic s)."""
        d = self.__dict__.get("_conversations")
        if d is None:
            d = self.__dict__["_conversations"] = {}
        return d

    def make_room(self, cs: "ChatSession", n_tokens: int) -> list["ChatSession"]:
        """Before `cs` grows by n_tokens: evict idle conversations (LRU) when the pool has fewer free pages than
        that needs. Returns those evicted ([] when there was room, or when evicting every idle one would not do)."""
        from .memory import KVLedger, MemoryPlanError

        eng = self.engine
        need = -(-n_tokens // eng.page_size) + 1  # +1: a shared last page copied on write
        if eng.free_pages >= need or not self.evict_idle:
            return []
        cands = {c: t for c, t in self.conversations.items() if c is not cs and c.idle}
        used = {c: c.own_pages() for c in cands}
        ledger = KVLedger(eng.free_pages + sum(used.values()))
        for c, t in cands.items():
            ledger.touch(c, used[c], t)
        try:
            out = ledger.to_evict(cs, need)
        except MemoryPlanError:
            return []
        for c in out:
            c.evict()
        return out

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class ChatSession:
    """One conversation in the engine. The cache holds: system prompt, then alternating user messages and replies.
    A user message may be open (being spoken): `sync_user` keeps the cache in step with the transcript so far,
    re-prefilling only from the first token that changed."""

    def __init__(self, llm: ChatLLM, session):
        self.llm = llm
        self.s = session
        self.n_system = session.n_tokens
        self.reply_start = session.n_tokens
        self.user_start: int | None = None  # where the open user message starts, if one is open
        self.turn_starts: list[int] = []  # where each user message starts (quota: the oldest turns go first)
        self.saved: list[int] | None = None  # token ids after the system prompt while evicted
        self.forks: set = set()  # live draft forks of this conversation
        self.parent: "ChatSession | None" = None

    @property
    def n_tokens(self) -> int:
        return self.s.n_tokens + (len(self.saved) if self.saved is not None else 0)

    # ---- eviction / quota ----
    @property
    def idle(self) -> bool:
        r = self.s._request
        return (self.saved is None and not self.s.freed and (r is None or (r.done and not r.out)) and not self.forks
                and self.user_start is None)  # a reply generated to its end but not all read yet is not idle

    def own_pages(self) -> int:
        """Pages only this conversation holds (what evicting it gives back)."""
        refs = self.llm.engine.pool.refs
        return sum(1 for p in self.s.pages if refs[p] == 1)

    def evict(self) -> None:
        self.saved = list(self.s.tokens[self.n_system:])
        self.s.truncate(self.n_system)
        self.llm.evictions += 1

    def token_ready(self) -> bool:
        """A generated token is waiting (a batched decode step produced it): taking it costs nothing."""
        r = self.s._request
        return r is not None and bool(r.out)

    def _use(self, grow: int = 0) -> None:
        """Every operation: mark recently used, re-prefill an evicted history, make room for `grow` tokens."""
        if self.parent is None and not self.s.freed:
            self.llm.conversations[self] = time.monotonic()
        if self.saved is not None:
            saved, self.saved = self.saved, None
            self.llm.make_room(self, len(saved) + grow)
            self.s.append(saved)
            self.llm.restores += 1
            self.llm.restored_tokens += len(saved)
        elif grow:
            self.llm.make_room(self, grow)

    def _fit_quota(self, extra: int) -> None:
        """Drop the oldest whole turns until the cache plus `extra` tokens fits the quota."""
        quota = self.llm.quota_tokens
        if not quota or self.s.n_tokens + extra <= quota:
            return
        current = self.user_start if self.user_start is not None else self.s.n_tokens
        keep_from = next((t for t in self.turn_starts
                          if t <= current and self.n_system + self.s.n_tokens - t + extra <= quota), None)
        if keep_from is None:
            keep_from = current
            if self.n_system + self.s.n_tokens - current + extra > quota:
                raise ValueError(f"this turn needs {self.s.n_tokens - current + extra} tokens of KV cache, more "
                                 f"than the session quota of {quota} tokens leaves after the system prompt "
                                 f"({self.n_system}); raise [memory] session_tokens or lower [llm] max_new_tokens")
        shift = keep_from - self.n_system
        if shift <= 0:
            return
        ids = self.s.tokens[keep_from:]
        self.llm.dropped_turns += sum(1 for t in self.turn_starts if t < keep_from)
        self.s.truncate(self.n_system)
        self.s.append(ids)
        self.turn_starts = [t - shift for t in self.turn_starts if t >= keep_from]
        self.reply_start -= shift
        if self.user_start is not None:
            self.user_start -= shift

    def _user_ids(self, text: str, close: bool) -> list[int]:
        before, after = self.llm.chat.user_tpl
        return self.llm.tokenizer.encode(before + text + (after if close else ""), add_special_tokens=False)

    def sync_user(self, text: str, close: bool, want_p_end: bool = False) -> tuple[int, float | None]:
        """Make the cache hold the user message `text` (closed, with the assistant header, or still open).
        Returns (tokens prefilled, P(end-of-turn token) after the text when asked and the message is open)."""
        target = self._user_ids(text, close=False)
        if close:
            target = self._user_ids(text, close=True)
        self._use(len(target) + 1)
        self._fit_quota(len(target) + (self.llm.cfg.max_new_tokens + 2 if close else 0)
                        - (self.s.n_tokens - self.user_start if self.user_start is not None else 0))
        if self.user_start is None:
            self.user_start = self.s.n_tokens
            self.turn_starts.append(self.user_start)
        have = self.s.tokens[self.user_start:]
        k = 0
        while k < min(len(have), len(target)) and have[k] == target[k]:
            k += 1
        if k < len(have):
            self.s.truncate(self.user_start + k)
        before = self.s.stats.prefill_tokens
        logits = self.s.append(target[k:], return_logits=want_p_end) if (target[k:] or want_p_end) else None
        n = self.s.stats.prefill_tokens - before
        p_end = None
        if logits is not None and not close:
            p_end = float(logits.float().softmax(-1)[self.llm.chat.end_of_turn_token_id])
        if close:
            self.reply_start = self.s.n_tokens
            self.user_start = None
        return n, p_end

    def add_user(self, text: str) -> int:
        """Append a whole user message (and the assistant header)."""
        return self.sync_user(text, close=True)[0]

    def end_probability(self, text: str) -> float:
        """P(end of turn) after `text` as an open user message, without keeping it in this session's cache."""
        f = self.fork()
        try:
            return f.sync_user(text, close=False, want_p_end=True)[1]
        finally:
            f.free()

    def replay(self, messages: list[dict]) -> int:
        """The no-KV-reuse baseline: drop everything after the system prompt and prefill the whole history."""
        self.saved = None
        self.s.truncate(self.n_system)
        self.user_start = None
        self.turn_starts = []
        ids: list[int] = []
        chat = self.llm.chat
        for m in messages:
            if m["role"] == "user":
                ids += chat.user_turn_ids(m["content"])
            else:
                ids += self.llm.tokenizer.encode(m["content"], add_special_tokens=False) + chat.end_of_reply_ids()
        self.s.append(ids)
        self.reply_start = self.s.n_tokens
        return len(ids)

    def set_system(self, text: str, history: list[dict]) -> int:
        """Replace the system prompt (this session only) and re-prefill the history after it."""
        self.saved = None
        self.s.truncate(0)
        if text:
            self.s.append(list(self.llm.chat.system_ids(text)))
        self.n_system = self.s.n_tokens
        return self.replay(history)

    def fork(self) -> "ChatSession":
        """A copy-on-write branch (a draft reply that may be thrown away)."""
        self._use(self.llm.engine.page_size)
        f = ChatSession(self.llm, self.s.fork())
        f.n_system, f.reply_start, f.user_start = self.n_system, self.reply_start, self.user_start
        f.turn_starts, f.parent = list(self.turn_starts), self
        self.forks.add(f)
        return f

    def adopt(self) -> None:
        """This fork becomes the conversation (a committed draft): it may now be evicted."""
        if self.parent is not None:
            self.parent.forks.discard(self)
            self.parent = None
            self.llm.conversations[self] = time.monotonic()

    def generate_reply(self, max_new_tokens: int | None = None) -> Iterator[int]:
        """Reply tokens, stop token excluded. Each is fed to the cache before the next is produced."""
        from llm.engine import Sampling

        c = self.llm.cfg
        script = self.llm.script
        if script is not None:  # a reply continued after a drafted first phrase goes on where the draft stopped
            script = script[min(max(0, self.s.n_tokens - self.reply_start), len(script) - 1):]
        sampling = Sampling(temperature=c.temperature, top_p=c.top_p, script=script)
        budget = c.max_new_tokens if max_new_tokens is None else max_new_tokens
        if budget <= 0:
            return
        self._use(budget + 1)
        tokens = self.s.generate(budget, sampling, stop_ids=self.llm.chat.stop_ids)
        try:
            for tok in tokens:
                if tok in self.llm.chat.stop_ids:
                    return
                yield tok
        finally:  # end the engine's request now, not whenever the inner generator is collected
            tokens.close()

    def end_reply(self, kept: list[int]) -> None:
        """Keep these reply tokens (all of them, or what was played) and close the assistant message."""
        self._use(len(kept) + 8)
        end = self.reply_start + len(kept)
        if self.s.n_tokens > end:
            self.s.truncate(end)
        missing = kept[self.s.n_tokens - self.reply_start:]  # e.g. the last token, sampled but never fed
        self.s.append(list(missing) + list(self.llm.chat.end_of_reply_ids()))

    def drop_last_turn(self) -> None:
        """Forget the last user message and everything after it (a reply the listener heard nothing of: the
        user's turn goes on, and the next reply answers those words together with what follows)."""
        self._use()
        if not self.turn_starts:
            return
        start = self.turn_starts.pop()
        self.s.truncate(start)
        self.reply_start = self.s.n_tokens
        self.user_start = None

    def free(self) -> None:
        self.s.free()
        self.saved = None
        self.llm.conversations.pop(self, None)
        for f in list(self.forks):  # a committed draft outlives the conversation it was forked from
            f.adopt()
        if self.parent is not None:
            self.parent.forks.discard(self)
            self.parent = None
