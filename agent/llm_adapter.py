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
    def __init__(self, llm: ChatLLM, session):
        self.llm = llm
        self.s = session
        self.n_system = session.n_tokens
        self.reply_start = session.n_tokens

    @property
    def n_tokens(self) -> int:
        return self.s.n_tokens

    def add_user(self, text: str) -> int:
        """Append a user message (and the assistant header); only these new tokens are prefilled."""
        ids = list(self.llm.chat.user_turn_ids(text))
        self.s.append(ids)
        self.reply_start = self.s.n_tokens
        return len(ids)

    def replay(self, messages: list[dict]) -> int:
        """The no-KV-reuse baseline: drop everything after the system prompt and prefill the whole history."""
        self.s.truncate(self.n_system)
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

    def generate_reply(self) -> Iterator[int]:
        """Reply tokens, stop token excluded. Each is fed to the cache before the next is produced."""
        c = self.llm.cfg
        from llm.engine import Sampling

        sampling = Sampling(temperature=c.temperature, top_p=c.top_p)
        for tok in self.s.generate(c.max_new_tokens, sampling, stop_ids=self.llm.chat.stop_ids):
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
