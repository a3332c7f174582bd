"""Triton kernels for the LLM decode step, each beside its torch reference (`*_ref`) and a dispatcher.

    rmsnorm(x, weight, eps, residual=None)                         kernels/rmsnorm.py
    rope_write_kv(q, k, v, positions, cos, sin, k_cache, v_cache, slot_mapping) -> q_rot      kernels/rope_kv.py
    paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale, num_splits=None)
                                                                   kernels/paged_attention.py
    silu_and_mul(x)                                                kernels/activation.py
    sample(logits, temperature, top_p=None, generator=None)        kernels/sampling.py

Each dispatcher takes `impl="auto" | "triton" | "torch"`: auto runs Triton for CUDA tensors and the reference
otherwise (see kernels/_triton.py). Import the submodules directly; this package imports nothing eagerly.
"""
