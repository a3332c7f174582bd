"""Shared by tests/test_transports_*.py: one Runtime for all of them (loading the models is most of their time).
Each module sets the config knobs it needs (read per turn / per server) in its own fixture."""

import atexit
import functools

from agent.config import Config
from agent.runtime import Runtime


@functools.lru_cache(maxsize=1)
def shared_runtime() -> Runtime:
    rt = Runtime.load(Config.load("cpu"))
    atexit.register(rt.close)
    return rt


def runtime_with(max_new_tokens: int, max_sessions: int | None = None):
    """The shared runtime with these settings; a generator for a module-scoped fixture (restores them after)."""
    rt = shared_runtime()
    old = rt.config.llm.max_new_tokens, rt.config.server.max_sessions
    rt.config.llm.max_new_tokens = max_new_tokens
    if max_sessions is not None:
        rt.config.server.max_sessions = max_sessions
    yield rt
    rt.config.llm.max_new_tokens, rt.config.server.max_sessions = old
