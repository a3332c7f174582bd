"""Which TTS model calls of a reply would run from the CUDA graphs that warm-up captures, and which eagerly.

tts/cuda_graphs.py keys its graphs by shape: the front stage (encoder, durations) by (rows, id bucket), the back
stage (expand, flow) by (rows, id bucket, frame bucket), the decoder by its window's shape. Only shapes seen during
`TorchPiperTTS.warmup` have graphs; anything else runs eagerly on the TTS thread (~10x its host time under load).
The frame counts are random (the voice's noise_w), so this replays the key logic on the CPU, no GPU needed:
- `warm-up texts`: the keys the warm-up phrases themselves make, frames bucketed by 32 (warm-up before 9f81554);
- `with back range`: those plus `capture_back_range` (`tts.cuda_graphs.range_keys`);
then counts, over `--repeats` syntheses of the gpu-bench config's scripted reply (cut into phrases as the session
cuts them), the calls whose key was not captured.

    python bench/tts_graph_keys.py [--repeats 20] [--seeds 4]

Result: bench/results/tts_graph_keys_cpu.json."""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from agent import models  # noqa: E402
from agent.phrases import PhraseChunker  # noqa: E402
from bench.common import result_header, write_result  # noqa: E402
from tts.cuda_graphs import range_keys  # noqa: E402
from tts.torch_backend import TorchPiperTTS  # noqa: E402

STEP, FRAME_STEP, MAX_GRAPHS = 32, 64, 256


def reply_phrases(config: Path) -> list[str]:
    reply = tomllib.loads(config.read_text())["llm"]["script_reply"]
    ch, out = PhraseChunker(), []
    for i, w in enumerate(reply.split(" ")):
        p = ch.push((" " if i else "") + w)
        if p is not None:
            out.append(p.text)
    last = ch.flush()
    return out + ([last.text] if last is not None else [])


def simulate(tts: TorchPiperTTS, phrases: list[str], seed: int, repeats: int, back_range: bool) -> dict:
    """Keys made by warm-up (as GraphedTTS would capture them, up to MAX_GRAPHS), then the serving calls' misses."""
    torch.manual_seed(seed)
    fs = FRAME_STEP if back_range else STEP  # before 9f81554 the frames shared the ids' bucket of 32
    tts.bucket_frames = lambda n: -(-n // fs) * fs
    keys: dict[str, set] = {"front": set(), "back": set(), "decode": set()}
    state = {"frozen": False}
    calls = {k: 0 for k in keys}
    misses = {k: 0 for k in keys}

    def see(kind, key):
        if state["frozen"]:
            calls[kind] += 1
            misses[kind] += key not in keys[kind]
        elif sum(map(len, keys.values())) < MAX_GRAPHS:
            keys[kind].add(key)

    front, back, decode = tts.front, tts.back, tts.decode_fn
    tts.front = lambda ids, lengths: (see("front", tuple(ids.shape)), front(ids, lengths))[1]
    tts.back = lambda stats, dur, n: (see("back", (*dur.shape, n)), back(stats, dur, n))[1]
    tts.decode_fn = lambda z: (see("decode", tuple(z.shape)), decode(z))[1]
    try:
        for _ in range(2):
            for text in tts.WARMUP_TEXTS:
                for _chunk in tts.synthesize(text):
                    pass
        if back_range:  # what GraphedTTS.capture_back_range adds
            fronts, backs = range_keys(keys["front"], STEP, FRAME_STEP)
            keys["front"] |= set(fronts)
            keys["back"] |= set(backs)
        state["frozen"] = True
        for _ in range(repeats):
            for p in phrases:
                for _chunk in tts.synthesize(p):
                    pass
    finally:
        tts.front, tts.back, tts.decode_fn = front, back, decode
    return {"graphs": {k: len(v) for k, v in keys.items()}, "calls": calls, "eager": misses}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "gpu-bench.toml")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--out", default="tts_graph_keys_cpu.json")
    args = ap.parse_args(argv)
    phrases = reply_phrases(args.config)
    tts = TorchPiperTTS(models.require("piper-joe-medium"))  # the voice's own noise: random frame counts
    tts.bucket = lambda n: -(-n // STEP) * STEP
    rows = []
    for back_range in (False, True):
        for seed in range(args.seeds):
            r = simulate(tts, phrases, seed, args.repeats, back_range)
            rows.append({"warm_up": "with back range" if back_range else "warm-up texts", "seed": seed, **r})
            print(f"  {rows[-1]['warm_up']:16s} seed {seed}: graphs {r['graphs']}  eager {r['eager']} of {r['calls']}")
    path = write_result(args.out, result_header(phrases=phrases, repeats=args.repeats, step=STEP,
                                                frame_step=FRAME_STEP, rows=rows))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
