"""GPU LLM benchmark (issue 3): our engine vs HF transformers eager, same synthetic bf16 weights, same run.

    python bench/llm.py [--models llama-3.2-1b,llama-3.1-8b] [--out DIR]  -> bench/results/llm_<gpu>.json

Weights are SYNTHETIC (fixed seed, real shapes): latency does not depend on the values for fixed lengths.
Per model: decode_tok_s (one session, 1,024-token context), pct_roofline (bytes read per decode step: every
weight but the embedding table (tied: counted once as the LM head) + the KV of the context, divided by the copy
bandwidth measured here), cold_ttft_ms / cold_first30_ms (1,024-token prompt into an empty session),
warm_ttft_ms / warm_first30_ms (1,024 tokens already in the session, 24 appended), aggregate decode tok/s at
1/8/32/64 concurrent sessions (256-token prompts), and hf_* for transformers eager (DynamicCache, argmax, one
token read back per step as streaming needs). Correctness (1B): logits vs transformers bf16, relative L2 error.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import gpu_tag, result_header, write_result  # noqa: E402
from llm import ops  # noqa: E402
from llm.engine import Engine  # noqa: E402
from llm.weights import load_model  # noqa: E402

CTX, WARM_NEW, N_FIRST = 1024, 24, 30


def sync():
    torch.cuda.synchronize()


def copy_bandwidth_TBps(n_bytes=2 << 30, iters=20) -> float:
    x = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        y.copy_(x)
    sync()
    dt = (time.perf_counter() - t0) / iters
    del x, y
    return 2 * n_bytes / dt / 1e12  # read + write


def median(xs):
    return statistics.median(xs)


def rand_ids(n, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab - 100, (n,), generator=g).tolist()


# ---- ours ------------------------------------------------------------------------------------------------------


def time_generate(s, n):
    """-> (ms to first token, ms to n-th token) for s.generate(n) (includes whatever append came before)."""
    t0 = time.perf_counter()
    first = None
    for i, _ in enumerate(s.generate(n)):
        if i == 0:
            first = time.perf_counter()
    sync()
    return (first - t0) * 1e3, (time.perf_counter() - t0) * 1e3


def decode_tok_s(s, n: int = 128) -> float:
    """One session's decode speed: 8 tokens of warm-up, then n timed (one token read back per step)."""
    list(s.generate(8))
    sync()
    t0 = time.perf_counter()
    list(s.generate(n))
    sync()
    return n / (time.perf_counter() - t0)


def bench_ours(eng: Engine, vocab: int, trials=3) -> dict:
    r = {}
    prompt = rand_ids(CTX, vocab, 1)
    # single-session decode at 1,024 context
    s = eng.new_session()
    s.append(prompt)
    n = 128
    r["decode_tok_s"] = decode_tok_s(s, n)
    r["decode_ctx"] = CTX + 8 + n // 2
    s.free()
    # cold: 1,024-token prompt into an empty session
    ttft, f30 = [], []
    for i in range(trials):
        s = eng.new_session()
        sync()
        t0 = time.perf_counter()
        s.append(rand_ids(CTX, vocab, 10 + i))
        a, b = time_generate(s, N_FIRST)
        pre = (time.perf_counter() - t0) * 1e3 - b
        ttft.append(pre + a)
        f30.append(pre + b)
        s.free()
    r["cold_ttft_ms"], r["cold_first30_ms"] = median(ttft), median(f30)
    # warm: 1,024 tokens already in the session, 24 new ones appended (the pause-prefill case)
    base = eng.new_session()
    base.append(prompt)
    ttft, f30 = [], []
    for i in range(trials):
        s = base.fork()
        sync()
        t0 = time.perf_counter()
        s.append(rand_ids(WARM_NEW, vocab, 20 + i))
        a, b = time_generate(s, N_FIRST)
        pre = (time.perf_counter() - t0) * 1e3 - b
        ttft.append(pre + a)
        f30.append(pre + b)
        s.free()
    base.free()
    r["warm_ttft_ms"], r["warm_first30_ms"] = median(ttft), median(f30)
    r["prefill_attention_after_context"] = "causal_lower_right" if ops.PREFILL_LOWER_RIGHT else "dense mask"
    # the other prefill-attention variant, and where the warm path spends its time
    ops.PREFILL_LOWER_RIGHT = not ops.PREFILL_LOWER_RIGHT
    try:
        alt = []
        for i in range(trials):
            s = base2 = eng.new_session()
            s.append(prompt)
            sync()
            t0 = time.perf_counter()
            s.append(rand_ids(WARM_NEW, vocab, 20 + i), return_logits=True)
            sync()
            alt.append((time.perf_counter() - t0) * 1e3)
            base2.free()
        r["warm_append_ms_other_variant"] = median(alt)
    except Exception as e:  # noqa: BLE001
        r["warm_append_ms_other_variant"] = repr(e)
    finally:
        ops.PREFILL_LOWER_RIGHT = not ops.PREFILL_LOWER_RIGHT
    r["profile"] = profile_warm(eng, prompt, vocab)
    # aggregate decode over concurrent sessions
    agg = {}
    for B in (1, 8, 32, 64):
        ss = [eng.new_session() for _ in range(B)]
        for j, s in enumerate(ss):
            s.append(rand_ids(256, vocab, 100 + j))
        gens = [s.generate(72) for s in ss]
        for _ in range(8):  # warm-up steps (first token is from the prefill logits)
            for g in gens:
                next(g)
        sync()
        t0 = time.perf_counter()
        steps = 0
        for toks in zip(*gens):
            steps += 1
        sync()
        agg[str(B)] = B * steps / (time.perf_counter() - t0)
        for s in ss:
            s.free()
    r["aggregate_tok_s"] = agg
    r["graph_steps"], r["eager_steps"] = eng.n_graph_steps, eng.n_eager_steps
    r["launched_ahead_used"], r["launched_ahead_dropped"] = eng.n_ahead_hits, eng.n_ahead_misses
    return r


def profile_warm(eng, prompt, vocab) -> str:
    """Top CUDA-time ops of: a warm 24-token append, then 10 graph decode steps."""
    from torch.profiler import ProfilerActivity, profile

    s = eng.new_session()
    s.append(prompt)
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p1:
        s.append(rand_ids(WARM_NEW, vocab, 99), return_logits=True)
        sync()
    g = s.generate(12)
    next(g)
    next(g)
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p2:
        for _ in range(10):
            next(g)
        sync()
    g.close()
    s.free()
    kw = dict(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60)
    return ("WARM APPEND (24 tokens after 1,024)\n" + p1.key_averages().table(**kw) +
            "\n10 DECODE STEPS (graphs)\n" + p2.key_averages().table(**kw))


# ---- transformers ----------------------------------------------------------------------------------------------


def build_hf(model, dtype=torch.bfloat16, attn="sdpa", device="cuda"):
    """transformers' LlamaForCausalLM with our model's weights, in `dtype`, with attention `attn`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hcfg = LlamaConfig(**model.cfg.hf_dict())
    hcfg._attn_implementation = attn
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # like from_pretrained(dtype=bf16): rotary inv_freq stays fp32
    try:
        with torch.device(device):
            hf = LlamaForCausalLM(hcfg)
    finally:
        torch.set_default_dtype(old)
    missing = hf.load_state_dict(model.hf_state_dict(), strict=False)
    assert not missing.missing_keys, missing.missing_keys
    return hf.eval()


@torch.inference_mode()
def hf_greedy(hf, ids, n, past=None):
    """Feed ids (to the cache `past`), then n-1 greedy steps; -> (ms to first token, ms to n-th, past)."""
    from transformers import DynamicCache

    past = past if past is not None else DynamicCache(config=hf.config)
    t0 = time.perf_counter()
    out = hf(input_ids=torch.tensor([ids], device="cuda"), past_key_values=past, use_cache=True, logits_to_keep=1)
    tok = out.logits[:, -1].argmax(-1)
    tok.item()
    first = time.perf_counter()
    for _ in range(n - 1):
        out = hf(input_ids=tok[:, None], past_key_values=past, use_cache=True)
        tok = out.logits[:, -1].argmax(-1)
        tok.item()  # streaming reads every token back
    sync()
    return (first - t0) * 1e3, (time.perf_counter() - t0) * 1e3, past


def bench_hf(hf, vocab: int, trials=3) -> dict:
    r = {}
    prompt = rand_ids(CTX, vocab, 1)
    hf_greedy(hf, prompt[:64], 8)  # warm-up
    _, _, past = hf_greedy(hf, prompt, 8)
    n = 64
    _, ms, _ = hf_greedy(hf, [0], n + 1, past)
    r["hf_decode_tok_s"] = (n + 1) / (ms / 1e3)
    del past
    ttft, f30 = [], []
    for i in range(trials):
        a, b, _ = hf_greedy(hf, rand_ids(CTX, vocab, 10 + i), N_FIRST)
        ttft.append(a)
        f30.append(b)
    r["hf_cold_ttft_ms"], r["hf_cold_first30_ms"] = median(ttft), median(f30)
    ttft, f30 = [], []
    for i in range(trials):
        _, _, past = hf_greedy(hf, prompt, 1)  # 1,024 tokens in the cache (untimed)
        a, b, _ = hf_greedy(hf, rand_ids(WARM_NEW, vocab, 20 + i), N_FIRST, past)
        ttft.append(a)
        f30.append(b)
    r["hf_warm_ttft_ms"], r["hf_warm_first30_ms"] = median(ttft), median(f30)
    return r


# ---- correctness -----------------------------------------------------------------------------------------------


@torch.inference_mode()
def hf_logits_along(hf, ids, toks):
    """transformers' logits after ids, then after each of toks (KV cache), as fp32."""
    from transformers import DynamicCache

    past = DynamicCache(config=hf.config)
    ref = [hf(input_ids=torch.tensor([ids], device="cuda"), past_key_values=past, use_cache=True).logits[0, -1]]
    for t in toks:
        ref.append(hf(input_ids=torch.tensor([[t]], device="cuda"), past_key_values=past, use_cache=True)
                   .logits[0, -1])
    return [r.float() for r in ref]


def rel_errs(a, b):
    return [float((x.float() - y.float()).norm() / y.float().norm()) for x, y in zip(a, b)]


@torch.inference_mode()
def check_vs_hf(eng: Engine, hf, vocab: int, hf32=None, hf_eager=None) -> dict:
    """Prefill logits and 8 decode steps (CUDA graphs) against transformers on the same tokens."""
    ids = rand_ids(200, vocab, 7)
    s = eng.new_session()
    ours = [s.append(ids, return_logits=True).clone()]
    toks = []
    for i, t in enumerate(s.generate(9)):  # decode steps run through the CUDA graphs
        toks.append(t)
        if i > 0:
            ours.append(s.last_logits.float().clone())  # logits after feeding toks[:i]
    ref = hf_logits_along(hf, ids, toks[:8])
    rel = rel_errs(ours, ref)
    hf_tokens = [int(x.argmax()) for x in ref[1:]]
    extra = {}
    if hf32 is not None:  # the bf16 noise floor: how far is transformers bf16 itself from fp32?
        ref32 = hf_logits_along(hf32, ids, toks[:8])
        extra = {"ours_bf16_vs_hf_fp32_max": max(rel_errs(ours, ref32)),
                 "hf_bf16_vs_hf_fp32_max": max(rel_errs(ref, ref32))}
    from bench.bf16_noise import split_projections

    try:  # a diagnostic (bench/bf16_noise.py): must not cost the rest of the check
        with split_projections(eng.model.cfg):  # prefill with transformers' separate q/k/v and gate/up GEMMs
            s2 = eng.new_session()
            extra["prefill_split_gemms_rel_err"] = rel_errs([s2.append(ids, return_logits=True)], ref[:1])[0]
            s2.free()
    except Exception as e:  # noqa: BLE001
        extra["prefill_split_gemms_rel_err"] = repr(e)
    if hf_eager is not None:  # two transformers bf16 models that differ only in the attention kernel
        ref_e = hf_logits_along(hf_eager, ids, toks[:8])
        extra["hf_eager_vs_hf_sdpa_bf16_max"] = max(rel_errs(ref_e, ref))
        extra["ours_vs_hf_eager_bf16_max"] = max(rel_errs(ours, ref_e))
    s.free()
    return {"logits_rel_err_max": max(rel), "logits_rel_err": rel,
            "greedy_tokens_match_hf": sum(a == b for a, b in zip(toks[1:9], hf_tokens)), "of": 8, **extra}


# ---- study: where a one-session decode step goes (used to choose the fused-GEMV configs) -----------------------


def time_graph(fn, reps=20) -> float:
    """ms per call of fn() captured in a CUDA graph, median over reps replays (bench/kernels.py's graph_us)."""
    from bench.kernels import graph_us

    return graph_us([fn], reps) / 1e3


@torch.inference_mode()
def study_gemv(shapes, configs, copy_tbps) -> list:
    """Per weight shape: cuBLAS F.linear vs the Triton GEMV (plain and with its prologue) at M=1, cold weights
    (rotating copies >= 512 MB). -> rows of (what, shape, config, us, pct of copy bandwidth)."""
    from kernels import gemv as G

    rows = []
    for name, (n, k), prologue in shapes:
        nbytes = n * k * 2
        copies = max(2, -(-(512 << 20) // nbytes))
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        x = torch.randn(1, 2 * k if prologue == "silu" else k, device="cuda", dtype=torch.bfloat16)
        res = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        nw = torch.ones(k, device="cuda", dtype=torch.bfloat16)
        xk = x[:, :k].contiguous()

        def add(label, fn, cfg=None):
            try:
                us = time_graph(lambda: [fn(w) for w in ws]) * 1e3 / copies
                rows.append((name, f"{n}x{k}", label, str(cfg), round(us, 2),
                             round(100 * nbytes / (us * 1e-6) / (copy_tbps * 1e12), 1)))
            except Exception as e:  # noqa: BLE001
                rows.append((name, f"{n}x{k}", label, str(cfg), repr(e)[:80], None))

        add("cublas", lambda w: torch.nn.functional.linear(xk, w))
        for cfg in configs:
            add("triton", lambda w, c=cfg: G.gemv(xk, w, config=c), cfg)
            if prologue == "norm":
                add("triton+norm", lambda w, c=cfg: G.rmsnorm_gemv(xk, nw, 1e-5, w, res, config=c), cfg)
            elif prologue == "silu":
                add("triton+silu", lambda w, c=cfg: G.silu_gemv(x, w, config=c), cfg)
        del ws
        torch.cuda.empty_cache()
    return rows


def study_model(name: str, copy_tbps: float, out_dir: Path | None, fusion_sets: dict) -> dict:
    """One-session decode tok/s at a 1,024 context for several sets of fused ops (batch-1 graph only), and a
    per-kernel profile of the graphed step with all and with none."""
    from llm.llama import DECODE_FUSIONS

    torch.manual_seed(0)
    model = load_model(f"synthetic:{name}", device="cuda", dtype=torch.bfloat16, max_seq_len=4096)
    res = {}
    prompt = rand_ids(CTX, model.cfg.vocab_size, 1)
    for label, fus in fusion_sets.items():
        model.decode_fusions = frozenset(fus)
        for look in ([True, False] if label == "all" else [True]):
            eng = Engine(model, num_pages=160, page_size=16, max_batch=1, prefill_chunk=2048, max_seq_len=4096)
            eng.lookahead = look
            eng.capture()
            s = eng.new_session()
            s.append(prompt)
            res[label + ("" if look else " (no lookahead)")] = round(decode_tok_s(s), 1)
            if look and label in ("all", "none") and out_dir is not None:
                from torch.profiler import ProfilerActivity, profile

                g = s.generate(12)
                next(g)
                next(g)
                sync()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(10):
                        next(g)
                    sync()
                g.close()
                (out_dir / f"kernels_{name}_{label}.txt").write_text(prof.key_averages().table(
                    sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))
            s.free()
            del eng
            torch.cuda.empty_cache()
        print(name, label, res, flush=True)
    model.decode_fusions = DECODE_FUSIONS
    cfg = model.cfg
    kv_per_tok = cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * 2
    roof = copy_tbps * 1e12 / (weight_bytes(model) + kv_per_tok * (CTX + 8 + 64))
    res["pct_roofline"] = {k: round(100 * v / roof, 1) for k, v in res.items()}
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return res


def study(out_dir: Path | None, parts: set = frozenset({"gemv", "argmax", "fusions", "check"})):
    from llm.llama import FUSABLE

    copy = copy_bandwidth_TBps()
    result = result_header(copy_TBps=copy, torch=torch.__version__, study=True)
    print("copy TB/s", copy, flush=True)
    configs = [(4, 512, 4), (8, 512, 4), (16, 512, 4), (16, 256, 4), (32, 256, 8), (8, 1024, 8), (32, 512, 8)]
    shapes = [("8b qkv", (6144, 4096), "norm"), ("8b wo", (4096, 4096), None), ("8b w13", (28672, 4096), "norm"),
              ("8b w2", (4096, 14336), "silu"), ("8b head", (128256, 4096), "norm"),
              ("1b qkv", (3072, 2048), "norm"), ("1b wo", (2048, 2048), None), ("1b w13", (16384, 2048), "norm"),
              ("1b w2", (2048, 8192), "silu"), ("1b head", (128256, 2048), "norm")]
    t0 = time.perf_counter()
    if "gemv" in parts:
        result["gemv"] = study_gemv(shapes, configs, copy)
        print("gemv sweep s", time.perf_counter() - t0, flush=True)
        for r in result["gemv"]:
            print(*r, flush=True)
        write_result(f"llm_study_{gpu_tag()}.json", result, out_dir)
    # argmax over the vocabulary: torch vs the split Triton pass
    from kernels.sampling import argmax_triton

    for b in ((1, 64) if "argmax" in parts else ()):
        lg = torch.randn(b, 128256, device="cuda", dtype=torch.bfloat16)
        result[f"argmax_b{b}_us"] = {"torch": time_graph(lambda: lg.argmax(-1)) * 1e3,
                                     "triton": time_graph(lambda: argmax_triton(lg)) * 1e3}
        print("argmax", b, result[f"argmax_b{b}_us"], flush=True)
    sets = {"all": FUSABLE, "none": set()}
    for f in sorted(FUSABLE):
        sets["all but " + f] = FUSABLE - {f}
    for name in (("llama-3.2-1b", "llama-3.1-8b") if "fusions" in parts else ()):
        result[name] = study_model(name, copy, out_dir, sets)
        write_result(f"llm_study_{gpu_tag()}.json", result, out_dir)
    if "check" not in parts:
        write_result(f"llm_study_{gpu_tag()}.json", result, out_dir)
        return
    # correctness with the new rounding, and how much of what is left comes from the decode attention kernel
    model = load_model("synthetic:llama-3.2-1b", device="cuda", dtype=torch.bfloat16, max_seq_len=4096)
    hf = build_hf(model)
    for label in ("kernels", "decode attention = torch SDPA reference", "no fusions"):  # "kernels": all fused
        saved = ops.paged_decode_attention, model.decode_fusions
        if label.startswith("decode attention"):
            from kernels.paged_attention import paged_decode_attention_ref

            ops.paged_decode_attention = paged_decode_attention_ref
        if label == "no fusions":
            model.decode_fusions = frozenset()
        elif label == "kernels":
            model.decode_fusions = FUSABLE
        try:
            eng = Engine(model, num_pages=256, page_size=16, max_batch=1, max_seq_len=4096)
            result["check_" + label] = check_vs_hf(eng, hf, model.cfg.vocab_size)
            print(label, result["check_" + label], flush=True)
        finally:
            ops.paged_decode_attention, model.decode_fusions = saved
        del eng
    write_result(f"llm_study_{gpu_tag()}.json", result, out_dir)


# ---- main ------------------------------------------------------------------------------------------------------


def weight_bytes(model) -> int:
    cfg = model.cfg
    n = sum(p.numel() for p in model.parameters())
    if not cfg.tie_embeddings:
        n -= cfg.vocab_size * cfg.hidden_size  # the embedding table is gathered, not read whole
    return n * 2


def run_model(name: str, copy_tbps: float, check: bool) -> dict:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = load_model(f"synthetic:{name}", device="cuda", dtype=torch.bfloat16, max_seq_len=4096)
    cfg = model.cfg
    eng = Engine(model, num_pages=2048, page_size=16, max_batch=64, prefill_chunk=2048, max_seq_len=4096)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    eng.capture()
    capture_s = time.perf_counter() - t0
    out = {"weights": "synthetic (seed 0, N(0, 0.02))", "dtype": "bfloat16", "load_s": load_s,
           "graph_capture_s": capture_s, "graph_buckets": eng.graphs.buckets, "backends": ops.BACKENDS,
           "decode_fusions_batch1": sorted(model.decode_fusions) if ops.HAVE_FUSED_DECODE else [],
           # per projection: Triton GEMV tile chosen over cuBLAS by llm/tune.py at capture (absent = cuBLAS)
           "decode_gemv_batch1": {k: list(v) for k, v in (model.decode_gemv or {}).items()},
           "decode_gemv_times_us": getattr(model, "decode_gemv_times", None)}
    hf = build_hf(model)
    if check:
        hf32, hf_eager = build_hf(model, torch.float32), build_hf(model, attn="eager")
        out["check_vs_hf"] = check_vs_hf(eng, hf, cfg.vocab_size, hf32, hf_eager)
        del hf32, hf_eager
        torch.cuda.empty_cache()
        print(name, out["check_vs_hf"], flush=True)
    out.update(bench_ours(eng, cfg.vocab_size))
    if model.decode_gemv:  # the same one-session decode with every projection on cuBLAS: what the tuning buys
        from llm.llama import DECODE_FUSIONS

        saved = model.decode_gemv, model.decode_fusions  # (the tuner's fused ops too: else they run untuned)
        model.decode_gemv, model.decode_fusions = {}, DECODE_FUSIONS
        e1 = Engine(model, num_pages=160, page_size=16, max_batch=1, prefill_chunk=2048, max_seq_len=4096)
        e1.capture()
        s1 = e1.new_session()
        s1.append(rand_ids(CTX, cfg.vocab_size, 1))
        out["decode_tok_s_all_cublas"] = decode_tok_s(s1)
        s1.free()
        del e1
        torch.cuda.empty_cache()
        model.decode_gemv, model.decode_fusions = saved
    print(name, {k: v for k, v in out.items() if k not in ("backends", "profile")}, flush=True)
    out.update(bench_hf(hf, cfg.vocab_size))
    kv_per_tok = cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * 2
    step_bytes = weight_bytes(model) + kv_per_tok * out["decode_ctx"]
    out["bytes_per_step"] = step_bytes
    out["roofline_tok_s"] = copy_tbps * 1e12 / step_bytes
    out["pct_roofline"] = 100 * out["decode_tok_s"] / out["roofline_tok_s"]
    out["speedup_vs_hf_decode"] = out["decode_tok_s"] / out["hf_decode_tok_s"]
    out["aggregate_64_over_single"] = out["aggregate_tok_s"]["64"] / out["aggregate_tok_s"]["1"]
    print(name, json.dumps({k: v for k, v in out.items() if k not in ("backends", "profile")}, default=str),
          flush=True)
    del hf, eng, model
    gc.collect()
    torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="llama-3.2-1b,llama-3.1-8b")
    ap.add_argument("--out", default=None)
    ap.add_argument("--study", action="store_true", help="GEMV sweep + fused-op ablation + per-kernel profiles")
    ap.add_argument("--study-parts", default="gemv,argmax,fusions,check",
                    help="with --study: which parts (the GEMV tile sweep alone is ~1 min of a device call)")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "bench/llm.py needs a GPU"
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)  # a directory (profiles are written beside the JSON)
    if args.study:
        return study(Path(args.out) if args.out else None, set(args.study_parts.split(",")))
    copy = copy_bandwidth_TBps()
    result = result_header(copy_TBps=copy, torch=torch.__version__, synthetic_weights=True)
    try:
        import transformers

        result["transformers"] = transformers.__version__
    except ImportError:
        pass
    for name in args.models.split(","):
        try:
            result[name] = run_model(name, copy, check=name == "llama-3.2-1b")
        except Exception as e:  # noqa: BLE001 - record and go on to the next model
            import traceback

            traceback.print_exc()
            result[name] = {"error": repr(e)}
        prof = result[name].pop("profile", None) if isinstance(result[name], dict) else None
        if prof and args.out:
            (Path(args.out) / f"profile_{name}.txt").write_text(prof)
        write_result(f"llm_{gpu_tag()}.json", result, Path(args.out) if args.out else None)
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
