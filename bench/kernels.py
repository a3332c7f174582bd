"""GPU check + micro-benchmark of the Triton kernels in kernels/ against their torch references.

For each kernel and real shape (Llama-3.1-8B, Llama-3.2-1B; bf16): the Triton output against the reference
(relative error, or exact ids for sampling), the Triton time and the eager torch reference's time (median of
triton.testing.do_bench, L2 flushed between calls), the Triton time per call inside a CUDA graph (how the engine
runs decode: no launch gaps), a tuning sweep for attention, and achieved GB/s = the fewest bytes the op must move
(each input read once, each output written once) / time, against a device-to-device copy measured in this run.

    python -m bench.kernels            # writes bench/results/kernels_<gpu>.json (or $QUICKTURN_RESULTS)
"""

from __future__ import annotations

import math
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import gpu_tag, result_header, write_result  # noqa: E402
from kernels.activation import silu_and_mul_ref, silu_and_mul_triton  # noqa: E402
from kernels.paged_attention import (choose_num_splits, paged_decode_attention_ref,  # noqa: E402
                                     paged_decode_attention_triton)
from kernels.rmsnorm import rmsnorm_ref, rmsnorm_triton  # noqa: E402
from kernels.rope_kv import rope_write_kv_ref, rope_write_kv_triton  # noqa: E402
from kernels.sampling import exp_noise, sample_ref, sample_triton  # noqa: E402

MODELS = {  # name: hidden, heads, kv heads, head_dim, intermediate
    "llama-3.1-8b": dict(hidden=4096, heads=32, kv_heads=8, head_dim=128, inter=14336),
    "llama-3.2-1b": dict(hidden=2048, heads=32, kv_heads=8, head_dim=64, inter=8192),
}
VOCAB = 128256
DT = torch.bfloat16
DEV = "cuda"
ROWS = [1, 8, 64, 512]  # decode batches, and one 512-token prefill chunk
BATCHES = [1, 8, 32, 64]
CONTEXTS = [512, 4096, 16384]
PAGE = 16
SWEEP = {(1, 512), (1, 4096), (1, 16384), (8, 4096), (64, 4096)}  # (B, ctx) where attention variants are timed


def bench_ms(fn, warmup=10, rep=40) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def graph_us(calls, replays: int = 10) -> float:
    """Per-call GPU time of `calls` (each on its own inputs) captured back to back in one CUDA graph: no launch
    overhead, as in the engine's decode graphs. Inputs rotate over >= 128 MB where they are small (see copies())."""
    from llm.tune import graph_us as one_graph_us

    return one_graph_us(lambda: [c() for c in calls], replays) / len(calls)


def copies(nbytes: int) -> int:
    """How many input sets a graph rotates over so that together they exceed the 50 MB L2 (at most 64)."""
    return int(min(64, max(1, math.ceil(128e6 / max(1, nbytes)))))


def rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("nan")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def row(copy_gbps, nbytes, t_triton_ms, t_torch_ms, t_graph_us=None, **kw) -> dict:
    """triton_*: do_bench (one launch per call, L2 flushed); graph_*: CUDA-graph replay (no launch gaps)."""
    gbps = nbytes / t_triton_ms / 1e6
    r = dict(kw, bytes=int(nbytes), triton_us=round(t_triton_ms * 1e3, 2), torch_us=round(t_torch_ms * 1e3, 2),
             triton_GBps=round(gbps, 1), pct_copy=round(100 * gbps / copy_gbps, 1),
             torch_GBps=round(nbytes / t_torch_ms / 1e6, 1), speedup_vs_torch=round(t_torch_ms / t_triton_ms, 2))
    if t_graph_us is not None:
        g = nbytes / t_graph_us / 1e3
        r.update(graph_us=round(t_graph_us, 2), graph_GBps=round(g, 1), graph_pct_copy=round(100 * g / copy_gbps, 1))
    return r


def copy_bandwidth() -> float:
    n = 1 << 29  # 1 GiB of bf16
    src = torch.randn(n, device=DEV, dtype=DT)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), rep=200)
    return 2 * src.numel() * src.element_size() / ms / 1e6  # GB/s, read + write


def bench_rmsnorm(copy_gbps):
    out = []
    for name, m in MODELS.items():
        d = m["hidden"]
        w = (1 + 0.1 * torch.randn(d, device=DEV)).to(DT)
        for n in ROWS:
            x, res = torch.randn(n, d, device=DEV, dtype=DT), torch.randn(n, d, device=DEV, dtype=DT)
            o, nr = torch.full_like(x, float("nan")), torch.full_like(x, float("nan"))
            got = rmsnorm_triton(x, w, 1e-5, res, out=o, new_residual=nr)
            want = rmsnorm_ref(x, w, 1e-5, res)
            err = max(rel_err(got[0], want[0]), rel_err(got[1], want[1]))
            t = bench_ms(lambda: rmsnorm_triton(x, w, 1e-5, res, out=o, new_residual=nr))
            tr = bench_ms(lambda: rmsnorm_ref(x, w, 1e-5, res))
            nbytes = 4 * n * d * 2 + d * 2
            sets = [[torch.randn(n, d, device=DEV, dtype=DT) for _ in range(4)] for _ in range(copies(nbytes))]
            tg = graph_us([lambda a=a: rmsnorm_triton(a[0], w, 1e-5, a[1], out=a[2], new_residual=a[3]) for a in sets])
            out.append(row(copy_gbps, nbytes, t, tr, tg, model=name, N=n, D=d, rel_err=err, ok=err < 1e-2))
    return out


def bench_silu(copy_gbps):
    out = []
    for name, m in MODELS.items():
        i = m["inter"]
        for n in ROWS:
            x = torch.randn(n, 2 * i, device=DEV, dtype=DT)
            o = torch.full((n, i), float("nan"), device=DEV, dtype=DT)
            err = rel_err(silu_and_mul_triton(x, out=o), silu_and_mul_ref(x))
            t = bench_ms(lambda: silu_and_mul_triton(x, out=o))
            tr = bench_ms(lambda: silu_and_mul_ref(x))
            nbytes = 3 * n * i * 2
            sets = [(torch.randn(n, 2 * i, device=DEV, dtype=DT), torch.empty(n, i, device=DEV, dtype=DT))
                    for _ in range(copies(nbytes))]
            tg = graph_us([lambda a=a: silu_and_mul_triton(a[0], out=a[1]) for a in sets])
            out.append(row(copy_gbps, nbytes, t, tr, tg, model=name, N=n, I=i, rel_err=err, ok=err < 1e-2))
    return out


def bench_rope(copy_gbps):
    out = []
    for name, m in MODELS.items():
        h, hkv, d = m["heads"], m["kv_heads"], m["head_dim"]
        pages = 4096
        inv = 1.0 / 500000.0 ** (torch.arange(0, d, 2, device=DEV, dtype=torch.float32) / d)
        f = torch.outer(torch.arange(32768, device=DEV, dtype=torch.float32), inv)
        cos, sin = f.cos(), f.sin()
        for t_ in ROWS:
            q = torch.randn(t_, h, d, device=DEV, dtype=DT)
            k, v = torch.randn(t_, hkv, d, device=DEV, dtype=DT), torch.randn(t_, hkv, d, device=DEV, dtype=DT)
            pos = torch.randint(0, 32768, (t_,), device=DEV, dtype=torch.int32)
            slots = torch.randperm(pages * PAGE, device=DEV)[:t_].int()
            kc, vc, kc2, vc2 = (torch.full((pages, PAGE, hkv, d), float("nan"), device=DEV, dtype=DT)
                                for _ in range(4))
            o = torch.full_like(q, float("nan"))
            got = rope_write_kv_triton(q, k, v, pos, cos, sin, kc, vc, slots, out=o)
            want = rope_write_kv_ref(q, k, v, pos, cos, sin, kc2, vc2, slots.long())
            fk = lambda c: c.view(-1, hkv, d)[slots.long()]  # noqa: E731
            err = max(rel_err(got, want), rel_err(fk(kc), fk(kc2)), rel_err(fk(vc), fk(vc2)))
            same_nan = bool(torch.equal(kc.isnan(), kc2.isnan()) and torch.equal(vc.isnan(), vc2.isnan()))
            t = bench_ms(lambda: rope_write_kv_triton(q, k, v, pos, cos, sin, kc, vc, slots, out=o))
            tr = bench_ms(lambda: rope_write_kv_ref(q, k, v, pos, cos, sin, kc2, vc2, slots.long()))
            nbytes = 2 * (t_ * h * d * 2 + 2 * t_ * hkv * d * 2) + t_ * d * 4 + t_ * 8
            sets = [(torch.randn_like(q), torch.randn_like(k), torch.randn_like(v), torch.empty_like(q),
                     torch.randperm(pages * PAGE, device=DEV)[:t_].int()) for _ in range(copies(nbytes))]
            tg = graph_us([lambda a=a: rope_write_kv_triton(a[0], a[1], a[2], pos, cos, sin, kc, vc, a[4], out=a[3])
                           for a in sets])
            out.append(row(copy_gbps, nbytes, t, tr, tg, model=name, T=t_, rel_err=err, ok=err < 1e-2 and same_nan))
    return out


def bench_attention(copy_gbps):
    out = []
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for name, m in MODELS.items():
        h, hkv, d = m["heads"], m["kv_heads"], m["head_dim"]
        for ctx in CONTEXTS:
            for b in BATCHES:
                n_pages_seq = ctx // PAGE
                pool = b * n_pages_seq
                kc = torch.randn(pool, PAGE, hkv, d, device=DEV, dtype=DT)
                vc = torch.randn(pool, PAGE, hkv, d, device=DEV, dtype=DT)
                bt = torch.randperm(pool, device=DEV).view(b, n_pages_seq).int()
                lens = torch.full((b,), ctx, device=DEV, dtype=torch.int32)
                lens[0] = ctx - 7  # one sequence ending mid-page
                q = torch.randn(b, h, d, device=DEV, dtype=DT)
                scale = d ** -0.5
                o = torch.full_like(q, float("nan"))
                splits = choose_num_splits(b, hkv, ctx, sms)
                got = paged_decode_attention_triton(q, kc, vc, bt, lens, scale, out=o)
                want = paged_decode_attention_ref(q, kc, vc, bt, lens, scale)
                err = rel_err(got, want)
                t = bench_ms(lambda: paged_decode_attention_triton(q, kc, vc, bt, lens, scale, out=o))
                t1 = bench_ms(lambda: paged_decode_attention_triton(q, kc, vc, bt, lens, scale, 1, out=o)) \
                    if splits > 1 else t
                tr = bench_ms(lambda: paged_decode_attention_ref(q, kc, vc, bt, lens, scale), rep=20)
                nbytes = int(lens.sum()) * hkv * d * 2 * 2 + 2 * b * h * d * 2 + bt.numel() * 4
                del want
                # graph timing: `c` calls over disjoint random pages of one pool (cold KV, as in real decode)
                c = copies(nbytes)
                if c > 1:
                    del kc, vc
                    kc = torch.randn(c * pool, PAGE, hkv, d, device=DEV, dtype=DT)
                    vc = torch.randn(c * pool, PAGE, hkv, d, device=DEV, dtype=DT)
                bts = torch.randperm(c * pool, device=DEV).view(c, b, n_pages_seq).int()
                qs = torch.randn(c, b, h, d, device=DEV, dtype=DT)
                os_ = torch.empty_like(qs)

                def calls(**kw):
                    return [lambda i=i: paged_decode_attention_triton(qs[i], kc, vc, bts[i], lens, scale, out=os_[i],
                                                                      **kw) for i in range(c)]

                tg = graph_us(calls())
                r = row(copy_gbps, nbytes, t, tr, tg, model=name, B=b, ctx=ctx, num_splits=splits, rel_err=err,
                        ok=err < 1e-2)
                r["no_split_us"] = round(t1 * 1e3, 2)
                if (b, ctx) in SWEEP:  # tuning sweep, graph-timed, same inputs
                    r["sweep_graph_us"] = sweep = {}
                    variants = {f"block_n={bn},warps={nw}": dict(block_n=bn, num_warps=nw)
                                for bn, nw in [(32, 4), (64, 4), (128, 4), (32, 8), (64, 8), (128, 8)]}
                    variants.update({f"splits={sp}": dict(num_splits=sp)
                                     for sp in sorted({max(1, splits // 2), 2 * splits, 4 * splits})})
                    variants.update({f"stages={st}": dict(num_stages=st) for st in (1, 2, 4)})
                    for key, kw in variants.items():
                        try:
                            sweep[key] = round(graph_us(calls(**kw)), 2)
                        except Exception as e:  # e.g. out of shared memory for a large tile
                            sweep[key] = repr(e)[:120]
                            torch.cuda.synchronize()
                out.append(r)
                del kc, vc, qs, os_
                torch.cuda.empty_cache()
    return out


def bench_sampling(copy_gbps):
    out = []
    g = torch.Generator(device=DEV).manual_seed(0)
    for b in BATCHES:
        logits = 4 * torch.randn(b, VOCAB, device=DEV, dtype=torch.float32)
        temp = torch.rand(b, device=DEV) + 0.3
        temp[::3] = 0.0  # every third row greedy
        top_p = torch.full((b,), 0.9, device=DEV)
        noise = exp_noise((b, VOCAB), DEV, g)
        mism = 0
        for tp in (None, top_p):
            got, want = sample_triton(logits, temp, tp, noise=noise), sample_ref(logits, temp, tp, noise=noise)
            mism += int((got != want).sum())
        n_sampled = int((temp > 0).sum())
        kernel_bytes = b * VOCAB * 4 + n_sampled * VOCAB * 4  # logits, plus noise for the sampled rows
        t_kernel = bench_ms(lambda: sample_triton(logits, temp, None, noise=noise))
        t_full = bench_ms(lambda: sample_triton(logits, temp, None, generator=g))
        t_full_tp = bench_ms(lambda: sample_triton(logits, temp, top_p, generator=g))
        t_ref = bench_ms(lambda: sample_ref(logits, temp, None, generator=g))
        t_ref_tp = bench_ms(lambda: sample_ref(logits, temp, top_p, generator=g))
        sets = [(4 * torch.randn(b, VOCAB, device=DEV), exp_noise((b, VOCAB), DEV))
                for _ in range(copies(kernel_bytes))]
        tg = graph_us([lambda a=a: sample_triton(a[0], temp, None, noise=a[1]) for a in sets])
        tg_full = graph_us([lambda a=a: sample_triton(a[0], temp, None) for a in sets])
        tg_full_tp = graph_us([lambda a=a: sample_triton(a[0], temp, top_p) for a in sets])
        r = row(copy_gbps, kernel_bytes, t_kernel, t_ref, tg, B=b, V=VOCAB, id_mismatches=mism, ok=mism == 0)
        r.update(sample_graph_us=round(tg_full, 2), sample_top_p_graph_us=round(tg_full_tp, 2))
        r.update(sample_us=round(t_full * 1e3, 2), sample_top_p_us=round(t_full_tp * 1e3, 2),
                 ref_top_p_us=round(t_ref_tp * 1e3, 2),
                 note="triton_us/graph_us: fused pass + final argmax (noise given); sample_*: whole sample() "
                      "with noise drawn (default generator in graphs); torch_us: reference, noise drawn inside")
        out.append(r)
    return out


def main():
    assert torch.cuda.is_available(), "bench/kernels.py needs a CUDA GPU"
    import triton

    torch.manual_seed(0)
    t0 = time.time()
    copy = copy_bandwidth()
    print(f"copy bandwidth {copy:.0f} GB/s", flush=True)
    res = result_header(torch=torch.__version__, triton=triton.__version__, dtype="bfloat16", copy_GBps=round(copy, 1),
                        timing="triton_us/torch_us: triton.testing.do_bench median, L2 flushed between calls, includes "
                        "host launch gaps where the host is slower than the GPU; graph_us: per call in a CUDA graph "
                        "of calls over rotating inputs (>=128 MB together, or 64 sets); torch = eager references",
                        bytes="fewest bytes each op must move: inputs read once, outputs written once")
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--kernels", default=None, help="comma list of the kernels to run (default: all)")
    ap.add_argument("--out-name", default=None, help="result file name (default kernels_<gpu>.json)")
    args = ap.parse_args()
    for name, fn in [("rmsnorm_residual", bench_rmsnorm), ("silu_and_mul", bench_silu), ("rope_write_kv", bench_rope),
                     ("paged_decode_attention", bench_attention), ("sampling", bench_sampling)]:
        if args.kernels and name not in args.kernels.split(","):
            continue
        t1 = time.time()
        try:
            res[name] = fn(copy)
        except Exception as e:  # keep the other kernels' numbers
            traceback.print_exc()
            res[name] = {"error": repr(e)}
        print(f"{name}: {time.time() - t1:.1f}s", flush=True)
        res["wall_s"] = round(time.time() - t0, 1)
        path = write_result(args.out_name or f"kernels_{gpu_tag()}.json", res)  # after each kernel: a timeout keeps the rest
    print(f"wrote {path}")
    for name, rows in res.items():
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            print(f"\n== {name}")
            for r in rows:
                keys = [k for k in ("model", "N", "T", "B", "ctx", "num_splits") if k in r]
                print(" ".join(f"{k}={r[k]}" for k in keys), f"ok={r['ok']} tri={r['triton_us']}us "
                      f"({r['pct_copy']}%) graph={r.get('graph_us')}us ({r.get('graph_pct_copy')}%) "
                      f"torch={r['torch_us']}us", r.get("sample_graph_us", ""), r.get("sample_top_p_graph_us", ""),
                      r.get("no_split_us", ""))
                if "sweep_graph_us" in r:
                    print("   sweep:", r["sweep_graph_us"])


if __name__ == "__main__":
    main()
