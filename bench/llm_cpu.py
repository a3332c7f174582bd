"""CPU LLM benchmark: our engine vs transformers' generate on SmolLM2-135M-Instruct (fp32), same process.

    python bench/llm_cpu.py [--tokens 64] [--rounds 3] [--threads N]  -> bench/results/llm_cpu.json

Measures: first start (GGUF -> converted weights + tokenizer, into an empty cache dir) and second start (from
that cache); prefill time and decode tok/s for a chat prompt, ours and transformers (eager, DynamicCache,
greedy, exactly --tokens new tokens; at torch's thread count and at 1 thread; speedup is against the faster
of the two), alternating rounds so both see the same machine load; the load average is
recorded because this machine is shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import result_header, write_result  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--name", default="llm_cpu.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from agent.models import require
    from llm.chat import ChatFormat
    from llm.engine import Engine
    from llm.tokenizer import load_tokenizer
    from llm.weights import load_gguf_cached, load_model

    d = require("smollm2-135m-instruct")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        load_gguf_cached(d, cache_dir=Path(tmp))
        load_tokenizer(d, cache_dir=Path(tmp))
        first_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = load_model(d)  # the real cache ($QUICKTURN_HOME/cache/llm), filled by an earlier start
    tok = load_tokenizer(d)
    second_start = time.perf_counter() - t0
    # the second start as a fresh process sees it also includes the conversion check (sha256 of the gguf)
    chat = ChatFormat.from_tokenizer(tok)

    from transformers import LlamaForCausalLM, LlamaConfig

    hf = LlamaForCausalLM(LlamaConfig(**model.cfg.hf_dict())).eval()
    missing = hf.load_state_dict({k: v.clone() for k, v in model.hf_state_dict().items()}, strict=False)
    assert not missing.missing_keys, missing.missing_keys

    ids = chat.system_ids("You are a helpful assistant.") + chat.user_turn_ids(
        "Write a short story about a robot who learns to paint.")
    eng = Engine(model, tok, num_pages=64)
    n = args.tokens

    def ours():
        s = eng.new_session()
        t0 = time.perf_counter()
        s.append(ids)
        t1 = time.perf_counter()
        out = list(s.generate(n))
        t2 = time.perf_counter()
        s.free()
        return t1 - t0, (n - 1) / (t2 - t1), out  # first token comes from the prefill logits

    def theirs():
        torch.set_num_threads(hf_threads)
        x = torch.tensor([ids])
        with torch.inference_mode():
            t0 = time.perf_counter()
            hf(x)  # prefill alone, for the prefill time
            t1 = time.perf_counter()
            g = hf.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            t2 = time.perf_counter()
        gen_time = (t2 - t1) - (t1 - t0)  # generate() includes its own prefill
        torch.set_num_threads(threads)
        return t1 - t0, (n - 1) / gen_time, g[0, len(ids):].tolist()

    threads = torch.get_num_threads()
    hf_threads = threads
    ours()
    theirs()  # warm-up
    runs = {"ours": [], "hf": [], "hf_1thread": []}
    for _ in range(args.rounds):
        runs["ours"].append(ours())
        hf_threads = threads
        runs["hf"].append(theirs())
        hf_threads = 1
        runs["hf_1thread"].append(theirs())
    same = runs["ours"][0][2][: 32] == runs["hf"][0][2][: 32]
    med = lambda rs, i: statistics.median(r[i] for r in rs)  # noqa: E731
    result = result_header(
        model="SmolLM2-135M-Instruct Q4_1 GGUF dequantized to fp32 (real weights)",
        torch_threads=torch.get_num_threads(), loadavg_before=load_before, loadavg_after=os.getloadavg(),
        prompt_tokens=len(ids), new_tokens=n, rounds=args.rounds,
        first_start_s=round(first_start, 2), second_start_s=round(second_start, 2),
        ours={"prefill_ms": round(1000 * med(runs["ours"], 0), 1),
              "decode_tok_s": round(med(runs["ours"], 1), 2),
              "decode_tok_s_runs": [round(r[1], 2) for r in runs["ours"]]},
        hf_generate={"prefill_ms": round(1000 * med(runs["hf"], 0), 1),
                     "decode_tok_s": round(med(runs["hf"], 1), 2),
                     "decode_tok_s_runs": [round(r[1], 2) for r in runs["hf"]],
                     "how": "transformers LlamaForCausalLM eager, same fp32 weights, generate(do_sample=False); "
                            "decode time = generate time - one prefill forward"},
        hf_generate_1thread={"decode_tok_s": round(med(runs["hf_1thread"], 1), 2),
                             "decode_tok_s_runs": [round(r[1], 2) for r in runs["hf_1thread"]]},
        ours_engine_settings=f"prefill with {threads} threads, decode steps with Engine.cpu_decode_threads="
                             f"{eng.cpu_decode_threads}",
        speedup=round(med(runs["ours"], 1) / max(med(runs["hf"], 1), med(runs["hf_1thread"], 1)), 2),
        first_32_tokens_identical=same,
    )
    path = write_result(args.name, result)
    print(path.read_text())


if __name__ == "__main__":
    main()
