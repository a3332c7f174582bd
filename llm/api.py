"""One call to get a ready chat LLM: model + tokenizer + chat format + engine.

    llm = load_chat_llm()                      # the embedded default: SmolLM2-135M-Instruct, fp32, CPU
    s = llm.engine.new_session(prefix=llm.engine.prefix(llm.chat.system_ids("You are ...")))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llm.chat import ChatFormat
from llm.engine import Engine

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass
class ChatLLM:
    engine: Engine
    tokenizer: object
    chat: ChatFormat
    load_s: float


def load_chat_llm(source: str | Path | None = None, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                  num_pages: int = 256, page_size: int = 16, max_seq_len: int | None = None) -> ChatLLM:
    """`source`: a GGUF file / directory holding one, or a Hugging Face directory; default: the fetched
    SmolLM2-135M-Instruct. num_pages * page_size tokens fit in the KV pool (shared by all sessions)."""
    from llm.tokenizer import load_tokenizer
    from llm.weights import load_model

    t0 = time.perf_counter()
    if source is None:
        from agent.models import require

        source = require(DEFAULT_MODEL)
    model = load_model(source, device=device, dtype=dtype, max_seq_len=max_seq_len or num_pages * page_size)
    tok = load_tokenizer(source)
    eng = Engine(model, tok, num_pages=num_pages, page_size=page_size)
    return ChatLLM(eng, tok, ChatFormat.from_tokenizer(tok), time.perf_counter() - t0)
