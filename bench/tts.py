"""TTS latency and throughput: torch VITS on the GPU vs Piper's onnxruntime graph on the same machine's CPU.

    python -m bench.tts                      # GPU machine (see below for what it needs), writes tts_<gpu>.json
    python -m bench.tts --device cpu --quick # smoke test here

Metrics (all phonemization included: espeak on the CPU, timed inside every TTFA):
  ttfa_p50_ms  first phrase of ~8 words: text in -> first audio chunk in host memory (p50 over 20 sentences,
               3 rounds). For onnxruntime (no streaming inside a sentence) the first sentence's whole audio.
  rtf          synthesis wall time / audio duration, one session, a 3-sentence paragraph, all chunks.
  throughput   32 sessions' phrases synthesized together (TorchPiperTTS.synthesize_batch): seconds of audio
               per wall second, and when the last session's first chunk was out. onnxruntime: the same 32
               phrases one after another on all CPU cores.

Weights. The voice file (63 MB) cannot travel with the tree, so scripts/ makes `.tts_carry/`: the ONNX graph
without initializers + the initializers as float16 (31 MB), and espeak-ng's bridge with only the English data.
Here the graph is rebuilt with float32 weights (rounded through fp16): onnxruntime runs the real Piper graph, and
the torch model loads the same weights through the normal loader, so both sides compute the same voice. Without
`.tts_carry/`, the fetched voice is used (CPU machines).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CARRY = REPO / ".tts_carry"
if (CARRY / "piper").exists():
    sys.path.insert(0, str(CARRY))  # minimal `piper` package: espeakbridge.so + English espeak-ng data

from bench.common import gpu_tag, percentile, result_header, write_result  # noqa: E402

TTFA_SENTENCES = [
    "Sure, I can help you with that today.",
    "Your table for four is booked at seven.",
    "The next train to Boston leaves in ten minutes.",
    "I found three flights that match your dates.",
    "Could you tell me your account number, please?",
    "The weather tomorrow looks sunny and quite warm.",
    "Your package should arrive on Thursday afternoon.",
    "Let me check that for you right now.",
    "The meeting has been moved to half past two.",
    "Please hold on while I transfer your call.",
    "We have two rooms available for that weekend.",
    "Your balance is forty two dollars and ten cents.",
    "Do you want me to send a confirmation email?",
    "I am sorry, that store closes at nine.",
    "Turn left at the second light, then continue straight.",
    "The doctor can see you on Monday morning.",
    "Your order number is five eight three one.",
    "Would you like to hear the daily specials?",
    "That sounds great, I will add it now.",
    "Thanks for waiting, I have your answer here.",
]

PARAGRAPH = ("Thanks for calling the city library. Our main branch is open from nine in the morning until eight "
             "in the evening, Monday through Saturday. If you would like to renew a book, please have your card "
             "number ready and I will take care of it.")


def session_phrases(n: int) -> list[str]:
    """n different phrases of one or two sentences, as 32 callers' next replies would be."""
    extra = ["It usually takes about five minutes.", "Is there anything else I can do?", "Have a nice day!",
             "I have noted that down."]
    return [TTFA_SENTENCES[i % len(TTFA_SENTENCES)] + ("" if i % 3 == 0 else " " + extra[i % len(extra)])
            for i in range(n)]


def prepare_voice(workdir: Path) -> Path:
    """-> a voice dir with <name>.onnx + .onnx.json (rebuilt from .tts_carry when present)."""
    if not (CARRY / "voice" / "graph.onnx").exists():
        from agent import models

        return models.require("piper-joe-medium")
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(CARRY / "voice" / "graph.onnx"))
    weights = np.load(CARRY / "voice" / "weights.npz")
    names = json.loads((CARRY / "voice" / "names.json").read_text())
    for key, name in names.items():
        arr = weights[key]
        model.graph.initializer.append(numpy_helper.from_array(arr.astype(np.float32) if arr.dtype == np.float16
                                                               else arr, name))
    out = workdir / "voice"
    out.mkdir(exist_ok=True)
    onnx.save(model, str(out / "voice.onnx"))
    (out / "voice.onnx.json").write_text((CARRY / "voice" / "voice.onnx.json").read_text())
    return out


def make_carry() -> None:
    """Here (CPU machine with the fetched voice and piper-tts): write .tts_carry/ for the GPU run."""
    import shutil

    import onnx
    from onnx import numpy_helper
    from piper import espeakbridge

    from agent import models
    from tts.piper_weights import VoiceFiles

    files = VoiceFiles.find(models.require("piper-joe-medium"))
    (CARRY / "voice").mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(files.onnx))
    arrays, names = {}, {}
    for i, init in enumerate(model.graph.initializer):
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.size > 8:
            assert np.abs(arr).max() < 6e4
            arr = arr.astype(np.float16)
        arrays[f"w{i}"], names[f"w{i}"] = arr, init.name
    del model.graph.initializer[:]
    onnx.save(model, str(CARRY / "voice" / "graph.onnx"))
    np.savez_compressed(CARRY / "voice" / "weights.npz", **arrays)  # ~2 MB less to carry (np.load reads both)
    (CARRY / "voice" / "names.json").write_text(json.dumps(names))
    shutil.copy(files.config, CARRY / "voice" / "voice.onnx.json")
    src = Path(espeakbridge.__file__).parent
    dst = CARRY / "piper"
    (dst / "espeak-ng-data").mkdir(parents=True, exist_ok=True)
    (dst / "__init__.py").write_text("")
    shutil.copy(espeakbridge.__file__, dst / Path(espeakbridge.__file__).name)
    for name in ("en_dict", "intonations", "phondata", "phondata-manifest", "phonindex", "phontab"):
        shutil.copy(src / "espeak-ng-data" / name, dst / "espeak-ng-data" / name)
    for name in ("lang", "voices"):
        shutil.copytree(src / "espeak-ng-data" / name, dst / "espeak-ng-data" / name, dirs_exist_ok=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_torch(tts, device, rounds: int, n_sessions: int) -> dict:
    ttfa = []
    for _ in range(rounds):
        for text in TTFA_SENTENCES:
            sync(device)
            t0 = time.perf_counter()
            it = tts.synthesize(text)
            next(it)  # audio of the first chunk is on the host now
            ttfa.append((time.perf_counter() - t0) * 1e3)
            for _ in it:
                pass
    rtfs = []
    for _ in range(max(rounds, 3)):
        sync(device)
        t0 = time.perf_counter()
        n = sum(len(c.audio) for c in tts.synthesize(PARAGRAPH))
        rtfs.append((time.perf_counter() - t0) / (n / tts.sample_rate))
    phrases = session_phrases(n_sessions)
    t0 = time.perf_counter()
    for text in phrases:
        tts.phonemize(text)
    phonemize_all_ms = (time.perf_counter() - t0) * 1e3  # CPU work inside the batch's first-chunk time
    best = None
    for _ in range(2):
        sync(device)
        t0 = time.perf_counter()
        first, samples = {}, 0
        for i, chunk in tts.synthesize_batch(phrases):
            first.setdefault(i, time.perf_counter() - t0)
            samples += len(chunk.audio)
        wall = time.perf_counter() - t0
        run = {"sessions": n_sessions, "audio_s": samples / tts.sample_rate, "wall_s": wall,
               "audio_s_per_s": samples / tts.sample_rate / wall,
               "first_chunk_p50_ms": percentile([v * 1e3 for v in first.values()], 50),
               "first_chunk_max_ms": max(first.values()) * 1e3, "phonemize_all_ms": phonemize_all_ms}
        best = run if best is None or run["wall_s"] < best["wall_s"] else best
    return {"ttfa_p50_ms": percentile(ttfa, 50), "ttfa_p90_ms": percentile(ttfa, 90), "rtf": statistics.median(rtfs),
            "throughput": best}


def time_onnx(session, phonemizer, scales, rounds: int, n_sessions: int, rate: int) -> dict:
    def run(ids):
        return session.run(None, {"input": np.array([ids], np.int64), "input_lengths": np.array([len(ids)], np.int64),
                                  "scales": scales})[0].reshape(-1)

    ttfa = []
    for _ in range(rounds):
        for text in TTFA_SENTENCES:
            t0 = time.perf_counter()
            ph = phonemizer(text)
            run(ph.ids[0])
            ttfa.append((time.perf_counter() - t0) * 1e3)
    rtfs = []
    for _ in range(3):
        t0 = time.perf_counter()
        n = sum(len(run(ids)) for ids in phonemizer(PARAGRAPH).ids)
        rtfs.append((time.perf_counter() - t0) / (n / rate))
    t0 = time.perf_counter()
    samples = 0
    for text in session_phrases(n_sessions):
        samples += sum(len(run(ids)) for ids in phonemizer(text).ids)
    wall = time.perf_counter() - t0
    return {"ttfa_p50_ms": percentile(ttfa, 50), "ttfa_p90_ms": percentile(ttfa, 90), "rtf": statistics.median(rtfs),
            "throughput": {"sessions": n_sessions, "audio_s": samples / rate, "wall_s": wall,
                           "audio_s_per_s": samples / rate / wall}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="few rounds, no graphs (CPU smoke test)")
    ap.add_argument("--sessions", type=int, default=32)
    ap.add_argument("--out", default=None, help="results dir (default bench/results or $QUICKTURN_RESULTS)")
    ap.add_argument("--make-carry", action="store_true", help="write .tts_carry/ (here, before the GPU run)")
    args = ap.parse_args()
    if args.make_carry:
        return make_carry()
    device = torch.device(args.device)
    rounds = 1 if args.quick else 3
    n_sessions = 4 if args.quick else args.sessions

    import onnxruntime as ort

    from tts.phonemize import Phonemizer
    from tts.piper_weights import load_piper_vits
    from tts.torch_backend import TorchPiperTTS

    workdir = Path(tempfile.mkdtemp())
    voice = prepare_voice(workdir)
    model, cfg = load_piper_vits(voice)
    phonemizer = Phonemizer.from_json(cfg)
    t0 = time.perf_counter()
    for text in TTFA_SENTENCES * 3:
        phonemizer(text)
    phonemize_ms = (time.perf_counter() - t0) * 1e3 / (3 * len(TTFA_SENTENCES))

    # correctness on this device: torch (fp32, noise 0) vs onnxruntime CPU on the same weights
    onnx_path = next(Path(voice).glob("*.onnx"))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    exact = TorchPiperTTS(model=model, voice_json=cfg, device=device, noise_scale=0.0, noise_w=0.0)
    checks = {}
    for tf32 in (True, False):  # cuDNN convolutions use TF32 by default on this GPU: the timed runs do
        torch.backends.cudnn.allow_tf32 = tf32
        parity = 0.0
        for text in TTFA_SENTENCES[:3]:
            ph = phonemizer(text)
            audio, _ = exact.synthesize_full(ph)
            ref = np.concatenate([sess.run(None, {"input": np.array([ids]), "input_lengths": np.array([len(ids)]),
                                                  "scales": np.array([0, 1, 0], np.float32)})[0].reshape(-1)
                                  for ids in ph.ids])
            parity = max(parity, float(np.abs(audio - ref).max()) if audio.shape == ref.shape else float("inf"))
        checks["parity_max_abs_vs_onnxruntime" + ("_tf32_convs" if tf32 else "_fp32")] = parity
    torch.backends.cudnn.allow_tf32 = True

    variants = {"eager_fp32": dict(dtype=torch.float32, graphs=False)}
    if device.type == "cuda" and not args.quick:
        variants["graphs_fp32"] = dict(dtype=torch.float32, graphs=True)
        variants["graphs_fp16"] = dict(dtype=torch.float16, graphs=True)
    results = {}
    for name, v in variants.items():
        tts = TorchPiperTTS(model=model, voice_json=cfg, device=device, dtype=v["dtype"])
        if v["graphs"]:
            from tts.cuda_graphs import GraphedTTS

            g = GraphedTTS(tts, max_graphs=256)
            # graphs replay the same computation: graphed (noise 0) vs eager fp32, same sentences
            gq = TorchPiperTTS(model=model, voice_json=cfg, device=device, dtype=v["dtype"], noise_scale=0.0,
                               noise_w=0.0)
            GraphedTTS(gq)
            snrs = []
            for text in TTFA_SENTENCES[:3] + [PARAGRAPH]:
                a, _ = exact.synthesize_full(text)
                b, _ = gq.synthesize_full(text)
                snrs.append(10 * np.log10(np.sum(a.astype(np.float64) ** 2) / max(np.sum((a - b) ** 2.0), 1e-30))
                            if a.shape == b.shape else float("-inf"))
            checks[f"{name}_graphed_snr_db_vs_eager_fp32"] = float(min(snrs))
            if v["dtype"] != torch.float32:  # quality of the low-precision decoder vs fp32, same latents
                lo = TorchPiperTTS(model=model, voice_json=cfg, device=device, dtype=v["dtype"], noise_scale=0.0,
                                   noise_w=0.0)
                snrs = []
                for text in TTFA_SENTENCES[:5]:
                    a, _ = exact.synthesize_full(text)
                    b, _ = lo.synthesize_full(text)
                    snrs.append(10 * np.log10(np.sum(a.astype(np.float64) ** 2) / np.sum((a - b) ** 2.0)))
                checks[f"{name}_snr_db_vs_fp32"] = float(min(snrs))
        # warm-up: every bucket the timed runs will see (graph capture happens here)
        for text in TTFA_SENTENCES + [PARAGRAPH]:
            list(tts.synthesize(text))
        for _ in tts.synthesize_batch(session_phrases(n_sessions)):
            pass
        results[name] = time_torch(tts, device, rounds, n_sessions)
        if v["graphs"]:
            results[name]["graphs_captured"] = len(g.front_graphs) + len(g.back_graphs) + len(g.dec_graphs)
        print(name, json.dumps(results[name]), flush=True)

    scales = np.array([cfg["inference"]["noise_scale"], cfg["inference"]["length_scale"], cfg["inference"]["noise_w"]],
                      np.float32)
    run = lambda ids: sess.run(None, {"input": np.array([ids]), "input_lengths": np.array([len(ids)]), "scales": scales})
    for text in TTFA_SENTENCES[:3]:
        run(phonemizer(text).ids[0])
    baseline = time_onnx(sess, phonemizer, scales, rounds, n_sessions, cfg["audio"]["sample_rate"])
    print("onnxruntime_cpu", json.dumps(baseline), flush=True)

    best = min(results, key=lambda k: results[k]["ttfa_p50_ms"])
    payload = result_header(
        cpu_threads=os.cpu_count(),
        weights=("Piper en_US-joe-medium, initializers carried as float16 and widened back to float32"
                 if (CARRY / "voice").exists() else "Piper en_US-joe-medium (fetched voice)"),
        phonemization="espeak-ng (piper-tts bridge) on this machine's CPU, inside every TTFA",
        metrics={"ttfa_p50_ms": results[best]["ttfa_p50_ms"], "rtf": results[best]["rtf"],
                 "throughput_audio_s_per_s_32": results[best]["throughput"]["audio_s_per_s"],
                 "variant": best, "phonemize_ms_mean": phonemize_ms},
        torch=results, baseline_onnxruntime_cpu=baseline, checks=checks,
        config={"first_chunk_frames": 16, "chunk_frames": 64, "context_frames": exact.context,
                "sessions": n_sessions, "rounds": rounds, "torch": torch.__version__, "onnxruntime": ort.__version__},
    )
    path = write_result(f"tts_{gpu_tag()}.json" if device.type == "cuda" else "tts_cpu_smoke.json", payload,
                        Path(args.out) if args.out else None)
    print(json.dumps(payload["metrics"]), "->", path)


if __name__ == "__main__":
    main()
