"""The embedded default's real LLM (SmolLM2-135M), loaded once per test process, with a KV pool of any size:
`chat_llm(num_pages)` builds a fresh engine over the same weights (tests of eviction, quotas, admission)."""

from functools import lru_cache


@lru_cache(maxsize=1)
def _weights():
    from agent.config import Config, resolve_model
    from llm.tokenizer import load_tokenizer
    from llm.weights import load_model

    cfg = Config.load("cpu")
    path = resolve_model(cfg.llm.model, "LLM")
    return cfg, load_model(path), load_tokenizer(path)


def chat_llm(num_pages: int, max_new_tokens: int = 24):
    import copy

    from agent.llm_adapter import ChatLLM
    from llm.chat import ChatFormat
    from llm.engine import Engine

    cfg, model, tok = _weights()
    c = copy.deepcopy(cfg.llm)
    c.max_new_tokens = max_new_tokens
    return ChatLLM(Engine(model, tok, num_pages=num_pages, page_size=16), ChatFormat.from_tokenizer(tok), tok, c)
