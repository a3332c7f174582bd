"""Quickturn's LLM: a Llama-family decoder over a paged KV pool owned by the runtime.

    from llm.api import load_chat_llm          # model + tokenizer + ChatFormat + Engine in one call
    from llm.engine import Engine, Sampling, Cancelled, OutOfPages

Files: config.py (typed ModelConfig, named shapes), llama.py (the model), weights.py (GGUF / safetensors /
synthetic loaders, converted-weight cache), tokenizer.py, chat.py (ChatFormat), ops.py (kernels on CUDA, torch on
CPU), engine.py (sessions, paged pool, batched decode step, CUDA graphs).
"""
