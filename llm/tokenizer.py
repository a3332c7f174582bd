"""Tokenizer from the model files (transformers' fast tokenizer).

Building it from a GGUF (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`) takes seconds, so the converted
tokenizer (tokenizer.json + config with the chat template) is saved under $QUICKTURN_HOME/cache/llm/ keyed by
the GGUF's sha256 and loaded from there afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

from llm.weights import cache_root, file_sha256, find_gguf


def load_tokenizer(source: str | Path, cache_dir: Path | None = None):
    from transformers import AutoTokenizer

    p = Path(source).expanduser()
    if p.suffix != ".gguf" and not (p.is_dir() and any(p.glob("*.gguf"))):
        return AutoTokenizer.from_pretrained(str(p))  # a Hugging Face directory
    gguf = find_gguf(p)
    cached = (cache_dir or cache_root()) / f"{gguf.stem}-{file_sha256(gguf)[:16]}-tokenizer"
    if (cached / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(cached))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tmp = cached.with_name(cached.name + ".tmp")
    tok.save_pretrained(str(tmp))
    if not cached.exists():
        os.replace(tmp, cached)
    return tok
