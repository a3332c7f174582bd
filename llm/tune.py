"""Per-op choice of the GEMV for the one-token decode step on CUDA: cuBLAS or the Triton GEMV at one of a few tiles.

At batch 1 every projection is a matrix-vector product that only streams its weight, and which kernel streams it
fastest depends on the shape and the GPU (H200 sweep, bench/results/llm_study_h200.json: on the 8B shapes the
Triton GEMV at (4, 512, 4) beats cuBLAS on gate|up 61 vs 65 us, down 32 vs 34, o_proj 11 vs 14, while cuBLAS wins
q|k|v on some tiles; on the 1B shapes the winners differ again). So instead of a table per GPU, the engine times
each candidate on the model's own weights when it captures its decode graphs: every layer's weight in turn (so the
weights come from HBM, not from L2, as in a real step), inside a CUDA graph (so the Triton launch cost on the host
is not what is measured), and keeps the fastest. `choose()` is the pure part (unit-tested).

Each projection is timed with the op before it (RMSNorm + residual add before q|k|v, gate|up and the LM head;
SiLU·mul before down), because that op can also be folded into the Triton GEMV's prologue (kernels/gemv.py): one
kernel instead of two per op per layer. So the candidates are: that op then cuBLAS (the baseline), that op then
the plain GEMV at each tile, and the fused GEMV at each tile. A 2 us kernel removed per layer is ~2 % of an 8B step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# (BLOCK_N, BLOCK_K, num_warps) tiles of kernels/gemv.py worth trying: the H200 sweep's winners, and the narrow
# tiles (1-2 rows per program) that won every projection on the H100 (bench/results/llm_h100.json)
CANDIDATES: tuple[tuple[int, int, int], ...] = ((4, 512, 4), (8, 1024, 8), (16, 512, 4), (8, 512, 4), (4, 1024, 8),
                                                (2, 1024, 4), (1, 1024, 4), (2, 2048, 8), (1, 2048, 8))
MIN_GAIN = 0.02  # the Triton GEMV must beat cuBLAS by 2 % to replace it (noise of a 10-replay median)


def choose(times_us: dict, min_gain: float = MIN_GAIN):
    """times_us {None (the cuBLAS baseline) or a candidate: us} -> the fastest candidate if it beats the baseline
    by min_gain, else None (a time of None: that candidate could not run)."""
    tiles = [(t, c) for c, t in times_us.items() if c is not None and t is not None]
    if not tiles:
        return None
    t, tile = min(tiles)
    base = times_us.get(None)
    return tile if base is None or t < base * (1 - min_gain) else None


def graph_us(fn, replays: int = 10) -> float:
    """GPU time (us) of one call of fn captured in a CUDA graph: no host launch cost in it, as in the engine's decode
    graphs. Median of `replays` timed replays after an untimed one; fn runs once before the capture (compile,
    cuBLAS algorithm choice)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):  # not the process-wide default capture stream, which other graphs may use:
        fn()  # in newer torch, destroying a graph releases its capture stream's cuBLAS workspace (pytorch#193402)
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[replays // 2] * 1e3


PROLOGUE_OPS = {"qkv": "norm", "w13": "norm", "head": "norm", "w2": "silu"}  # the op before each projection


def op_weights(model) -> dict:
    """{op: (weights of every layer, their biases, their RMSNorm weights or None, input width)} for the
    projections of one decode step."""
    layers, cfg = model.layers, model.cfg
    return {"qkv": ([l.wqkv.weight for l in layers], [l.wqkv.bias for l in layers], [l.attn_norm for l in layers],
                    cfg.hidden_size),
            "wo": ([l.wo.weight for l in layers], [None] * len(layers), None, layers[0].wo.weight.shape[1]),
            "w13": ([l.w13.weight for l in layers], [None] * len(layers), [l.ffn_norm for l in layers],
                    cfg.hidden_size),
            "w2": ([l.w2.weight for l in layers], [None] * len(layers), None, layers[0].w2.weight.shape[1]),
            "head": ([model.head_weight()], [None], [model.norm], cfg.hidden_size)}


def variants(op, ws, bs, norms, x, res, eps, candidates) -> dict:
    """{key: fn running the op over every layer's weight}: key None = the op before it as its own kernel, then
    cuBLAS (the baseline); (tile, False) = that, then the Triton GEMV at tile; (tile, True) = one Triton kernel with
    the op before it fused into the GEMV's prologue (kernels/gemv.py), at tile."""
    from kernels import gemv as G
    from llm import ops

    kind = PROLOGUE_OPS.get(op)
    if kind == "norm":
        def pre(i):
            return ops.rmsnorm(x, norms[i], eps, res)[0]
    elif kind == "silu":
        def pre(i):
            return ops.silu_and_mul(x)
    else:
        def pre(i):
            return x
    out = {None: lambda: [F.linear(pre(i), w, b) for i, (w, b) in enumerate(zip(ws, bs))]}
    for c in candidates:
        out[(c, False)] = lambda c=c: [G.gemv(pre(i), w, b, config=c) for i, (w, b) in enumerate(zip(ws, bs))]
        if kind == "norm":
            out[(c, True)] = lambda c=c: [G.rmsnorm_gemv(x, norms[i], eps, w, res, b, config=c)[0]
                                          for i, (w, b) in enumerate(zip(ws, bs))]
        elif kind == "silu":
            out[(c, True)] = lambda c=c: [G.silu_gemv(x, w, config=c) for w in ws]
    return out


@torch.inference_mode()
def tune_decode_gemv(model, candidates=CANDIDATES, log=None) -> dict:
    """Time, per projection of the one-token decode step, cuBLAS and each Triton tile, plain and with the op before
    it fused in, on the model's weights; keep the fastest. Sets model.decode_gemv ({op: tile} where a Triton kernel
    won), model.decode_fusions (the ops whose fused kernel won, plus the untuned fusions such as "argmax") and
    model.decode_gemv_times ({op: {label: us per layer}}); returns model.decode_gemv."""
    chosen, fused, report = {}, set(), {}
    eps = model.cfg.rms_eps
    weights = op_weights(model)
    for op, (ws, bs, norms, k) in weights.items():
        dev, dt = ws[0].device, ws[0].dtype
        x = torch.randn(1, 2 * k if op == "w2" else k, device=dev, dtype=dt)
        res = torch.randn(1, k, device=dev, dtype=dt)
        times: dict = {}
        for key, fn in variants(op, ws, bs, norms, x, res, eps, candidates).items():
            try:
                times[key] = graph_us(fn) / len(ws)
            except Exception:  # noqa: BLE001 - a tile this GPU/Triton cannot run is simply not a candidate
                times[key] = None
        pick = choose(times)
        if pick is not None:
            chosen[op] = pick[0]
            if pick[1]:
                fused.add(op)
        report[op] = {label(c): (None if t is None else round(t, 2)) for c, t in times.items()}
        if log:
            log(f"decode GEMV {op}: {'Triton ' if pick else ''}{label(pick)} {report[op]}")
    model.decode_gemv, model.decode_gemv_times = chosen, report
    model.decode_fusions = frozenset(model.decode_fusions - set(weights) | fused)
    return chosen


def label(key) -> str:
    """A candidate key of variants() as text: "cublas", "(4, 512, 4)" or "(4, 512, 4) fused"."""
    return "cublas" if key is None else f"{key[0]}{' fused' if key[1] else ''}"
