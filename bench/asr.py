"""GPU streaming-ASR benchmark: final latency, partial cost, concurrent streams; faster-whisper CPU baseline.

Synthetic weights with the real shapes (`base`, `large-v3-turbo`; fp16, CUDA-graphed decoder step). With
random weights the hypotheses are meaningless, so the token counts are fixed instead of emergent:
an utterance of D seconds carries round(tokens_per_s * D) text tokens; at the endpoint the streaming path has
committed all but the last `--increment` tokens (LocalAgreement), so the final = mel + encoder (30 s window)
+ one prefill of prompt+committed tokens + (increment + 1) greedy steps (the +1 is <|endoftext|>).
`final_latency_p50_ms` is timed from the endpoint (utterance audio in host memory) to the final text string,
over D = 5..15 s. Partials: one stream's re-run (same work, partial window) every `partial_interval_ms` of
audio. Concurrency: N streams all due in the same tick (the worst case), one batched update; real time when
the tick takes <= partial_interval_ms.

Baseline in the same run: faster-whisper (CTranslate2 int8, this machine's CPU) on a CTranslate2 model.bin
written from the same synthetic weights (asr.ct2.save_whisper_dir), whole-utterance transcription after the
endpoint (what the CPU backend does), max_new_tokens fixed to the same count.

    python bench/asr.py [--tokenizer-dir DIR] [--shapes base large-v3-turbo] [--streams 8 16 32 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asr.decoding import batch_features  # noqa: E402
from asr.torch_backend import TorchWhisperASR  # noqa: E402
from bench.common import gpu_tag, percentile, result_header, write_result  # noqa: E402

SR = 16_000


def utterance(seconds: float, seed: int) -> np.ndarray:
    """Noise at about -20 dBFS: passes the energy gate; the content does not matter to random weights."""
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3


def committed(n: int, vocab_text: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, min(vocab_text, 50000), n).tolist()


def bench_shape(shape: str, args, device) -> dict:
    out: dict = {}
    asr = TorchWhisperASR(shape=shape, device=str(device), max_batch=max(args.streams), cuda_graphs=True,
                          partial_interval_s=args.interval)
    eot, k = asr.tokenizer.eot, args.increment

    def final(audio, n_tokens, seed, streamed=True):
        pre = committed(max(0, n_tokens - k), eot, seed) if streamed else []
        h = asr.recognize([audio], [pre], max_new=(k if streamed else n_tokens) + 1, stop_at_eot=False)[0]
        return asr.tokenizer.decode(h.tokens)

    a = utterance(10.0, 7)
    out["cold_first_final_ms"] = round(timed(lambda: final(a, 30, 7), device), 1)  # before any warm-up
    t = time.perf_counter()
    asr.warmup(batches=(1,))
    out["warmup_s"] = round(time.perf_counter() - t, 2)
    for window in ("pad30", "trunc"):
        asr.opts.window = asr.final_window = window
        key = "" if window == "pad30" else "_trunc"
        for d in args.durations:  # each duration once: trunc windows have a shape per second of audio
            final(utterance(d, 0), round(args.tokens_per_s * d), 0)
        lat, full = [], []
        for rep in range(args.reps):
            for d in args.durations:
                a, n = utterance(d, rep), round(args.tokens_per_s * d)
                lat.append(timed(lambda: final(a, n, rep), device))
                if rep == 0:
                    full.append(timed(lambda: final(a, n, rep, streamed=False), device))
        out[f"final_latency_p50_ms{key}"] = round(percentile(lat, 50), 2)
        out[f"final_latency_p90_ms{key}"] = round(percentile(lat, 90), 2)
        out[f"final_latencies_ms{key}"] = [round(x, 1) for x in lat]  # reps x durations, in order
        if window == "pad30":  # sensitivity: a last increment of 3x the tokens
            k0, k = k, 3 * k
            lat3 = [timed(lambda: final(utterance(d, 5), round(args.tokens_per_s * d), 5), device)
                    for d in args.durations]
            k = k0
            out[f"final_latency_p50_ms_increment{3 * k}"] = round(percentile(lat3, 50), 2)
        out[f"final_latency_p50_ms_no_streaming{key}"] = round(percentile(full, 50), 2)  # decode all tokens
        # stage split of one 10 s final: mel + encoder + cross k/v
        a = utterance(10.0, 1)
        mel_enc = []
        for _ in range(5):
            def enc():
                asr.decoder.encode(batch_features([asr.mel(torch.as_tensor(a))], asr.opts, window))
            mel_enc.append(timed(enc, device))
        out[f"mel_encoder_ms_10s{key}"] = round(float(np.median(mel_enc)), 2)
        out[f"partial_compute_ms_p50{key}"] = out[f"final_latency_p50_ms{key}"]  # same work, one stream
        # concurrency: n streams of staggered lengths (1..15 s), all due in one tick
        conc = {}
        for n in args.streams:
            lens = [1.0 + 14.0 * i / max(1, n - 1) for i in range(n)]
            audios = [utterance(x, i) for i, x in enumerate(lens)]
            pres = [committed(max(0, round(args.tokens_per_s * x) - k), eot, i) for i, x in enumerate(lens)]
            asr.recognize(audios, pres, max_new=k + 1, stop_at_eot=False)  # warm-up / graph capture
            ticks = [timed(lambda: asr.recognize(audios, pres, max_new=k + 1, stop_at_eot=False), device)
                     for _ in range(3)]
            conc[str(n)] = round(float(np.median(ticks)), 1)
        out[f"tick_ms_by_streams{key}"] = conc
        out[f"realtime_streams{key}"] = max([int(n) for n, t in conc.items() if t <= args.interval * 1e3],
                                            default=0)
        out[f"streams_32_realtime{key}"] = conc.get("32", 1e9) <= args.interval * 1e3
    del asr
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def correctness(device) -> dict:
    """Same synthetic weights: CUDA fp16 graphed vs CUDA fp16 eager vs CPU fp32 (first decoded tokens)."""
    res = {}
    a = utterance(6.0, 3)
    runs = {}
    for name, dev, graphs in (("cpu_fp32", "cpu", False), ("cuda_eager", str(device), False),
                              ("cuda_graphs", str(device), True)):
        asr = TorchWhisperASR(shape="base", device=dev, cuda_graphs=graphs, max_batch=4,
                              dtype=torch.float32 if dev == "cpu" else torch.float16)
        with torch.no_grad():
            asr.decoder.encode(batch_features([asr.mel(torch.as_tensor(a))], asr.opts))
            enc = asr.model.encoder(batch_features([asr.mel(torch.as_tensor(a))], asr.opts).to(asr.decoder.dtype))
        h = asr.recognize([a, a[: 3 * SR]], max_new=12, stop_at_eot=False)
        runs[name] = ([x.tokens for x in h], enc.float().cpu(), asr.decoder.cache.cross_k[:, :2].float().cpu())
        if graphs:
            res["chunked_decode"] = chunked_vs_token_graphs(asr, a)
    res["graphs_equal_eager_tokens"] = runs["cuda_graphs"][0] == runs["cuda_eager"][0]
    # the graphed encoder (30 s window) writes the same cross-attention keys as the eager one
    res["graphed_encoder_cross_k_max_abs_diff"] = float((runs["cuda_graphs"][2] - runs["cuda_eager"][2]).abs().max())
    ref = runs["cpu_fp32"][1]
    res["encoder_rel_err_fp16_vs_cpu_fp32"] = float((runs["cuda_eager"][1] - ref).norm() / ref.norm())
    res["first_token_agrees_cpu_fp32"] = [g[0] == c[0] for g, c in zip(runs["cuda_eager"][0], runs["cpu_fp32"][0])]
    return res


def chunked_vs_token_graphs(asr, a) -> dict:
    """The greedy decode as CHUNK tokens per graph replay (one host read per chunk, `[asr] chunked_decode`) vs one
    graphed decoder step per token with the choice made eagerly between (the default loop): same tokens? ms per
    recognize() call (batch 1 and 8, 24 tokens, idle GPU: the host round trips are what differs)."""
    dec, out, was = asr.decoder, {}, asr.decoder.chunked
    for b in (1, 8):
        toks, ms = {}, {}
        for chunked in (False, True):
            dec.chunked = chunked
            asr.recognize([a] * b, max_new=24, stop_at_eot=False)  # warm-up / capture
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(5):
                h = asr.recognize([a] * b, max_new=24, stop_at_eot=False)
            ms[chunked] = (time.perf_counter() - t0) / 5 * 1e3
            toks[chunked] = [x.tokens for x in h]
        out[f"b{b}"] = {"tokens_equal": toks[True] == toks[False], "ms_token_graphs": round(ms[False], 2),
                        "ms_chunked": round(ms[True], 2)}
    dec.chunked = was
    return out


def faster_whisper_baseline(args) -> dict:
    """faster-whisper on this machine's CPU, on CT2 weights written from the same synthetic `base`."""
    import types

    try:
        sys.modules.setdefault("av", types.ModuleType("av"))  # PyAV only decodes files; we pass arrays
        from faster_whisper import WhisperModel

        from asr.ct2 import save_whisper_dir
        from asr.whisper import synthetic
    except Exception as e:  # noqa: BLE001
        return {"error": f"faster-whisper not importable: {e!r}"}
    out = {}
    for shape in args.fw_shapes:
        d = save_whisper_dir(synthetic(shape, seed=0), Path("/tmp") / f"ct2_{shape}", args.tokenizer_dir)
        m = WhisperModel(str(d), device="cpu", compute_type="int8", cpu_threads=os.cpu_count() or 0)
        lat, ntok = [], []

        def run(a, n):
            segs, _ = m.transcribe(a, beam_size=1, temperature=0.0, without_timestamps=True, vad_filter=False,
                                   condition_on_previous_text=False, language="en", max_new_tokens=n,
                                   no_speech_threshold=None, log_prob_threshold=None,
                                   compression_ratio_threshold=None)
            return sum(len(s.tokens) for s in segs)

        run(utterance(5.0, 0), 8)
        for d in ([5.0, 10.0, 15.0] if shape == "base" else [10.0]):
            a = utterance(d, 1)
            t = time.perf_counter()
            ntok.append(run(a, round(args.tokens_per_s * d)))
            lat.append((time.perf_counter() - t) * 1e3)
        out[shape] = {"final_latency_p50_ms": round(percentile(lat, 50), 1), "latencies_ms": [round(x) for x in lat],
                      "tokens_generated": ntok, "compute_type": "int8", "cpu_threads": os.cpu_count()}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["base", "large-v3-turbo"])
    ap.add_argument("--streams", nargs="+", type=int, default=[8, 16, 32, 64])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--increment", type=int, default=4, help="tokens left to decode at the endpoint")
    ap.add_argument("--tokens-per-s", type=float, default=3.0)
    ap.add_argument("--tokenizer-dir", default=str(REPO / ".asr_carry" / "base_tok"))
    ap.add_argument("--fw-shapes", nargs="*", default=["base"])
    ap.add_argument("--durations", nargs="+", type=float, default=[5.0 + i for i in range(11)])  # 5..15 s
    ap.add_argument("--skip-correctness", action="store_true")
    ap.add_argument("--correctness-only", action="store_true",
                    help="only the GPU-vs-CPU and chunked-vs-per-token checks -> asr_correctness_<gpu>.json")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = result_header(
        method=("synthetic weights, fp16, CUDA-graphed decoder step; final = mel + encoder + prefill of the "
                f"committed prefix + {args.increment}+1 greedy steps; {args.tokens_per_s} tokens/s of speech"),
        partial_interval_ms=round(args.interval * 1e3), increment_tokens=args.increment)
    t0 = time.time()
    if not args.skip_correctness:
        result["correctness"] = correctness(device)
    print("correctness", result.get("correctness"), flush=True)
    if args.correctness_only:
        print("wrote", write_result(f"asr_correctness_{gpu_tag()}.json", result))
        return
    for shape in args.shapes:
        result[shape] = bench_shape(shape, args, device)
        print(shape, result[shape], f"{time.time() - t0:.0f}s", flush=True)
    result["final_latency_p50_ms"] = {s: result[s]["final_latency_p50_ms"] for s in args.shapes}
    result["baseline_faster_whisper_cpu"] = faster_whisper_baseline(args)
    print("baseline", result["baseline_faster_whisper_cpu"], f"{time.time() - t0:.0f}s", flush=True)
    path = write_result(f"asr_{gpu_tag()}.json", result, os.environ.get("OUT"))
    print("wrote", path)


if __name__ == "__main__":
    main()
