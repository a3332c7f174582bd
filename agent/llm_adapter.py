"""The conversation's view of the LLM engine: chat turns in, reply tokens out, the history living in the session's
KV cache. Every method runs on the runtime's LLM thread (the engine is thread-confined)."""

from __future__ import annotations

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

    @classmethod
    def load(cls, cfg: LLMConfig, path: Path, max_sessions: int = 8) -> "ChatLLM":
        import torch

        from llm.chat import ChatFormat
        from llm.engine import Engine
        from llm.tokenizer import load_tokenizer
        from llm.weights import load_model

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        dtype = getattr(torch, cfg.dtype)
        model = load_model(path, device=cfg.device, dtype=dtype)
        tokenizer = load_tokenizer(path)
        page_size = 16
        num_pages = max(64, cfg.max_context_tokens * max_sessions // page_size)
        engine = Engine(model, tokenizer, num_pages=num_pages, page_size=page_size, device=cfg.device, dtype=dtype)
        return cls(engine, ChatFormat.from_tokenizer(tokenizer), tokenizer, cfg)

    def new_session(self) -> "ChatSession":
        if self.prefix is None and self.system_ids:
            self.prefix = self.engine.prefix(self.system_ids)
        return ChatSession(self, self.engine.new_session(prefix=self.prefix))

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

    @property
    def n_tokens(self) -> int:
        return self.s.n_tokens

    def _user_ids(self, text: str, close: bool) -> list[int]:
        before, after = self.llm.chat.user_tpl
        return self.llm.tokenizer.encode(before + text + (after if close else ""), add_special_tokens=False)

    def sync_user(self, text: str, close: bool, want_p_end: bool = False) -> tuple[int, float | None]:
        """Make the cache hold the user message `text` (closed, with the assistant header, or still open).
        Returns (tokens prefilled, P(end-of-turn token) after the text when asked and the message is open)."""
        if self.user_start is None:
            self.user_start = self.s.n_tokens
        target = self._user_ids(text, close=False)
        if close:
            target = self._user_ids(text, close=True)
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
        self.s.truncate(self.n_system)
        self.user_start = None
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
        self.s.truncate(0)
        if text:
            self.s.append(list(self.llm.chat.system_ids(text)))
        self.n_system = self.s.n_tokens
        return self.replay(history)

    def fork(self) -> "ChatSession":
        """A copy-on-write branch (a draft reply that may be thrown away)."""
        f = ChatSession(self.llm, self.s.fork())
        f.n_system, f.reply_start, f.user_start = self.n_system, self.reply_start, self.user_start
        return f

    def generate_reply(self, max_new_tokens: int | None = None) -> Iterator[int]:
        """Reply tokens, stop token excluded. Each is fed to the cache before the next is produced."""
        from llm.engine import Sampling

        c = self.llm.cfg
        sampling = Sampling(temperature=c.temperature, top_p=c.top_p)
        budget = c.max_new_tokens if max_new_tokens is None else max_new_tokens
        if budget <= 0:
            return
        for tok in self.s.generate(budget, sampling, stop_ids=self.llm.chat.stop_ids):
            if tok in self.llm.chat.stop_ids:
                return
            yield tok

    def end_reply(self, kept: list[int]) -> None:
        """Keep these reply tokens (all of them, or what was played) and close the assistant message."""
        end = self.reply_start + len(kept)
        if self.s.n_tokens > end:
            self.s.truncate(end)
        missing = kept[self.s.n_tokens - self.reply_start:]  # e.g. the last token, sampled but never fed
        self.s.append(list(missing) + list(self.llm.chat.end_of_reply_ids()))

    def free(self) -> None:
        self.s.free()
