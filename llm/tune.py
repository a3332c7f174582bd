"""Per-op choice of the GEMV for the one-token decode step on CUDA: cuBLAS or the Triton GEMV at one of a few tiles.

At batch 1 every projection is a matrix-vector product that only streams its weight, and which kernel streams it
fastest depends on the shape and the GPU (H200 sweep, bench/results/llm_study_h200.json: on the 8B shapes the
Triton GEMV at (4, 512, 4) beats cuBLAS on gate|up 61 vs 65 us, down 32 vs 34, o_proj 11 vs 14, while cuBLAS wins
q|k|v on some tiles; on the 1B shapes the winners differ again). So instead of a table per GPU, the engine times
each candidate on the model's own weights when it captures its decode graphs: every layer's weight in turn (so the
weights come from HBM, not from L2, as in a real step), inside a CUDA graph (so the Triton launch cost on the host
is not what is measured), and keeps the fastest. `choose()` is the pure part (unit-tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# (BLOCK_N, BLOCK_K, num_warps) tiles of kernels/gemv.py worth trying (the sweep's winners on H200 shapes)
CANDIDATES: tuple[tuple[int, int, int], ...] = ((4, 512, 4), (8, 1024, 8), (16, 512, 4), (8, 512, 4))
MIN_GAIN = 0.02  # the Triton GEMV must beat cuBLAS by 2 % to replace it (noise of a 10-replay median)


def choose(times_us: dict, min_gain: float = MIN_GAIN):
    """times_us {None (cuBLAS) or tile: us} -> the tile to use, or None for cuBLAS."""
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
    with torch.cuda.graph(g):
        fn()
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


def op_weights(model) -> dict:
    """{op: (weights of every layer, input width)} for the projections of one decode step."""
    layers = model.layers
    return {"qkv": ([l.wqkv.weight for l in layers], model.cfg.hidden_size),
            "wo": ([l.wo.weight for l in layers], layers[0].wo.weight.shape[1]),
            "w13": ([l.w13.weight for l in layers], model.cfg.hidden_size),
            "w2": ([l.w2.weight for l in layers], layers[0].w2.weight.shape[1]),
            "head": ([model.head_weight()], model.cfg.hidden_size)}


@torch.inference_mode()
def tune_decode_gemv(model, candidates=CANDIDATES, log=None) -> dict:
    """Time cuBLAS and each Triton tile per op on the model's weights; set and return model.decode_gemv
    ({op: tile} for the ops where the Triton GEMV won) and model.decode_gemv_times ({op: {label: us per layer}})."""
    from kernels import gemv as G

    chosen, report = {}, {}
    for op, (ws, k) in op_weights(model).items():
        x = torch.randn(1, k, device=ws[0].device, dtype=ws[0].dtype)
        times: dict = {None: graph_us(lambda: [F.linear(x, w) for w in ws]) / len(ws)}
        for c in candidates:
            try:
                times[c] = graph_us(lambda c=c: [G.gemv(x, w, config=c) for w in ws]) / len(ws)
            except Exception:  # noqa: BLE001 - a tile this GPU/Triton cannot run is simply not a candidate
                times[c] = None
        pick = choose(times)
        if pick is not None:
            chosen[op] = pick
        report[op] = {("cublas" if c is None else str(c)): (None if t is None else round(t, 2))
                      for c, t in times.items()}
        if log:
            log(f"decode GEMV {op}: {'cuBLAS' if pick is None else f'Triton {pick}'} {report[op]}")
    model.decode_gemv, model.decode_gemv_times = chosen, report
    return chosen
