"""Mouth-to-ear latency at the client, over the WebSocket, in real time — and what each pause-time mechanism buys.

A client streams real speech to `quickturn serve` (in-process, loopback): multi-turn sessions built from
../shared/speech clips separated by the agent's replies, plus single clips with a silence spliced in mid-sentence
at a word gap. Measured at the client: from the true end of speech in the audio (Silero VAD on the clip) to the
first non-silent reply sample (its chunk's arrival + its offset in the reply audio). The same scenario set runs
under each configuration in one run: full, no pause prefill, no drafting, fixed-silence endpointing, no transcript
check of a pending endpoint ([turn] confirm_endpoint), no audio judge.

    python bench/voice_to_voice.py [--sessions 4] [--turns 3] [--spliced 8] [--config cpu]

Writes bench/results/v2v_<device>.json, v2v_<device>_waterfall.png and v2v_<device>_cdf.png.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.common import (answered, first_audible_ms, gpu_tag, percentile, reply_chunks,  # noqa: E402
                          result_header, result_path, write_result)
from agent import models  # noqa: E402
from agent.audio import INTERNAL_RATE, float_to_pcm16, load_audio  # noqa: E402
from agent.config import Config  # noqa: E402
from agent.runtime import Runtime  # noqa: E402
from agent.server import start_server  # noqa: E402
from agent.vad import SileroVAD, speech_bounds  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from speechdata import SPEECH, UNFINISHED, finished  # noqa: E402  ($QUICKTURN_SPEECH, default ../shared/speech)

SPLICE_POINTS = REPO / "bench" / "splice_points.json"  # word-gap cuts found by faster-whisper, for GPU runs
FRAME_S = 0.02
SPLICE_S = 0.6  # a mid-sentence hesitation: longer than a 500 ms fixed endpoint, shorter than our max delay
AUDIBLE = 0.02  # |sample| above this is "non-silent"


@dataclass
class Segment:
    audio: np.ndarray  # 16 kHz
    speech_end: float  # true end of speech within the segment (s)
    splice: tuple[float, float] | None = None  # spliced silence [start, end) within the segment (s)
    name: str = ""  # the clip (../shared/speech path)


@dataclass
class Turn:
    kind: str  # "turn" (a clip in a multi-turn session) or "spliced"
    latency_ms: float | None = None
    endpoint_ms: float | None = None  # server: end of speech -> endpoint decision
    stages: dict = field(default_factory=dict)
    false_cutoff: bool = False
    info: dict = field(default_factory=dict)
    answered: bool = False  # a reply came after the end of speech (latency_ms None with it: no audible sample)


async def run_script(url: str, segments: list[Segment], kind: str, out_rate_hint: int = 22050,
                     reply_timeout: float = 60.0) -> list[Turn]:
    """Speak each segment, then stay silent until the reply has finished playing (+0.7 s), like a caller."""
    turns: list[Turn] = []
    frame = int(INTERNAL_RATE * FRAME_S)
    silence = np.zeros(frame, np.float32)
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": INTERNAL_RATE}))
        ready = json.loads(await ws.recv())
        rate = ready.get("output_sample_rate", out_rate_hint)
        state = {"chunks": [], "events": [], "latency": [], "stopped": []}

        async def receive():
            async for msg in ws:
                now = time.monotonic()
                if isinstance(msg, bytes):
                    state["chunks"].append((now, msg))
                    continue
                e = json.loads(msg)
                if e["type"] == "speech_stopped":
                    state["stopped"].append(e["t"])
                elif e["type"] == "latency":
                    state["latency"].append(e)
                elif e["type"] == "reply_done":
                    state["events"].append(("reply_done", e.get("turn"), bool(e.get("interrupted")), now))
                elif e["type"] == "flush":
                    state["events"].append(("flush", e.get("turn"), None, now))

        rx = asyncio.create_task(receive())
        t0 = time.monotonic()
        sent = 0  # samples sent so far (stream position)

        async def send(chunk):
            nonlocal sent
            await ws.send(float_to_pcm16(chunk))
            sent += len(chunk)
            await asyncio.sleep(max(0.0, t0 + sent / INTERNAL_RATE - time.monotonic()))

        for seg in segments:
            seg_start = sent / INTERNAL_RATE
            state["chunks"], state["events"] = [], []
            for i in range(0, len(seg.audio), frame):
                await send(seg.audio[i:i + frame])
            t_speech_end = t0 + seg_start + seg.speech_end
            deadline = time.monotonic() + reply_timeout
            # the answer is a reply completed after the true end of speech: one that came earlier (a false cut-off)
            # was interrupted by the rest of the words, and its audio is not the answer (bench/common.py)
            while answered(state["events"], t_speech_end) is None and time.monotonic() < deadline:
                await send(silence)
            turn = answered(state["events"], t_speech_end)
            chunks = reply_chunks(state["chunks"], state["events"], t_speech_end)
            # let the reply play out (the agent's audio arrives faster than real time)
            n_bytes = sum(len(c) for _, c in chunks)
            played_until = (chunks[0][0] if chunks else time.monotonic()) + n_bytes / 2 / rate + 0.7
            while time.monotonic() < played_until:
                await send(silence)
            t = Turn(kind)
            t.answered = turn is not None
            t.latency_ms = first_audible_ms(chunks, rate, t_speech_end, AUDIBLE) if turn is not None else None
            lat = [e for e in state["latency"] if e["turn"] == turn]
            if lat:
                t.endpoint_ms = lat[-1]["ms"].get("endpoint")
                t.stages = lat[-1]["ms"]
                t.info = lat[-1].get("info", {})
            if seg.splice:
                a, b = seg_start + seg.splice[0], seg_start + seg.splice[1]
                t.false_cutoff = any(a - 0.05 <= x <= b + 0.05 for x in state["stopped"])
            turns.append(t)
        rx.cancel()
    return turns


def build_segments(rt: Runtime, n_sessions: int, n_turns: int, n_spliced: int):
    from speechdata import dev_set

    vad = SileroVAD(models.require("silero-vad"))
    # a turn is a finished utterance: clips whose reference stops at a comma, semicolon or colon are LJSpeech
    # fragments cut mid-sentence (e.g. "... the true printed book,"), the case the spliced clips test
    rows = [r for r in dev_set() if 1.5 <= float(r["duration_s"]) <= 6.5 and finished(r)]
    sessions = []
    for s in range(n_sessions):
        segs = []
        for k in range(n_turns):
            r = rows[(s * n_turns + k) % len(rows)]
            audio = load_audio(SPEECH / r["file"])
            segs.append(Segment(audio, speech_bounds(vad, audio)[1], name=r["file"]))
        sessions.append(segs)
    spliced = []
    long_rows = [r for r in dev_set() if len(r["reference"].split()) >= 7 and float(r["duration_s"]) <= 10]
    known = json.loads(SPLICE_POINTS.read_text()) if SPLICE_POINTS.exists() else {}
    found = {}
    for r in long_rows:
        if len(spliced) >= n_spliced:
            break
        audio = load_audio(SPEECH / r["file"])
        cut_s = known.get(r["file"], -1.0) if not hasattr(getattr(rt.asr, "model", None), "transcribe") else \
            word_gap(rt.asr, audio)
        found[r["file"]] = cut_s
        if cut_s is None or cut_s < 0:
            continue
        cut = int(cut_s * INTERNAL_RATE)
        gap = np.zeros(int(SPLICE_S * INTERNAL_RATE), np.float32)
        joined = np.concatenate([audio[:cut], gap, audio[cut:]])
        end = speech_bounds(vad, joined)[1]
        spliced.append(Segment(joined, end, (cut / INTERNAL_RATE, cut / INTERNAL_RATE + SPLICE_S), name=r["file"]))
    if found and not known:
        SPLICE_POINTS.write_text(json.dumps(found, indent=1) + "\n")
    return sessions, spliced


def word_gap(asr, audio) -> float | None:
    """A word gap in the middle third of the clip, after a word that does not end a sentence (faster-whisper word
    timestamps), in seconds; None when the clip has too few words."""
    segs, _ = asr.model.transcribe(audio, language=asr.language, word_timestamps=True,
                                   condition_on_previous_text=False)
    words = [w for seg in segs for w in (seg.words or [])]
    if len(words) < 6:
        return None
    mid = [i for i in range(len(words) // 3, 2 * len(words) // 3)
           if not words[i].word.strip().endswith((".", "?", "!", ","))]
    if not mid:
        return None
    i = mid[len(mid) // 2]
    return round((words[i].end + words[i + 1].start) / 2, 3)


async def run_all(rt, sessions, spliced) -> list[Turn]:
    server, _ = await start_server(rt, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{list(server.sockets)[0].getsockname()[1]}"
    turns: list[Turn] = []
    try:
        for segs in sessions:
            turns += await run_script(url, segs, "turn")
        for seg in spliced:
            turns += await run_script(url, [seg], "spliced")
    finally:
        server.close()
        await server.wait_closed()
    return turns


def _inf(x):
    """JSON has no infinity: a latency that falls on a turn without a reply is "inf"."""
    return "inf" if isinstance(x, float) and x == float("inf") else x


def summarize(turns: list[Turn]) -> dict:
    # a turn without an (audible) reply waits forever: it counts, as an infinite latency
    lat = [t.latency_ms if t.latency_ms is not None else float("inf") for t in turns]
    ended = [t for t in turns if t.endpoint_ms is not None and t.kind == "turn"]
    ends = [t.endpoint_ms for t in ended]
    # a pending endpoint ([turn] confirm_endpoint) holds once the transcript is in: when that was
    held = [t.stages.get("endpoint_confirmed", t.endpoint_ms) for t in ended]
    spl = [t for t in turns if t.kind == "spliced"]
    return {"turns": len(turns), "turns_without_reply": sum(t.latency_ms is None for t in turns),
            "v2v_p50_ms": _inf(percentile(lat, 50)), "v2v_p95_ms": _inf(percentile(lat, 95)),
            "max_wait_ms": _inf(max(lat)) if lat else None,
            "false_cutoff_rate": (sum(t.false_cutoff for t in spl) / len(spl)) if spl else None,
            "mean_endpoint_delay_ms": float(np.mean(ends)) if ends else None,
            "mean_endpoint_confirmed_ms": float(np.mean(held)) if held else None,
            "stage_p50_ms": {s: percentile([t.stages[s] for t in turns if s in t.stages], 50)
                             for s in ("endpoint", "endpoint_confirmed", "transcript", "llm_first_token",
                                       "first_phrase", "tts_first_audio", "audio_sent")}}


def plots(results: dict, tag: str, out_dir: Path | None = None) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plots: matplotlib is not installed (pip install -e '.[bench]')", flush=True)
        return []
    out = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, res in results.items():
        lat = sorted(t["latency_ms"] for t in res["per_turn"] if t["latency_ms"] is not None)
        if lat:  # over every turn: one without a reply keeps the curve below 1
            ax.plot(lat, np.arange(1, len(lat) + 1) / len(res["per_turn"]), label=name)
    ax.set_xlabel("voice-to-voice latency at the client (ms)")
    ax.set_ylabel("fraction of turns")
    ax.grid(alpha=0.3)
    ax.legend()
    p = result_path(f"v2v_{tag}_cdf.png", out_dir)
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    out.append(str(p))
    stages = ["endpoint", "transcript", "llm_first_token", "first_phrase", "tts_first_audio", "audio_sent"]
    turns = [t for t in results["full"]["per_turn"] if t["stages"]]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(turns) + 1.2))
    colors = plt.cm.viridis(np.linspace(0, 1, len(stages)))
    for i, t in enumerate(turns):
        prev = 0.0
        for s, c in zip(stages, colors):
            if s in t["stages"]:
                ax.barh(i, t["stages"][s] - prev, left=prev, color=c, label=s if i == 0 else None)
                prev = t["stages"][s]
    ax.set_xlabel("ms after the end of speech (server side)")
    ax.set_ylabel("turn")
    ax.legend(fontsize=7, loc="lower right")
    p = result_path(f"v2v_{tag}_waterfall.png", out_dir)
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    out.append(str(p))
    return out


def _ms(x) -> str:
    return f"{x:.0f}" if isinstance(x, (int, float)) else str(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="cpu")
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--spliced", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--ablation-sessions", type=int, default=None,
                    help="sessions for each ablation (default: --sessions); the first ones of the full set")
    ap.add_argument("--ablation-spliced", type=int, default=None, help="spliced clips for each ablation")
    ap.add_argument("--variants", default="all",
                    help="comma-separated subset of full,no_pause_prefill,no_drafting,fixed_silence_500ms,"
                         "no_transcript_check,no_asr_end_check,no_audio_judge (tuning runs; the recorded run uses all)")
    ap.add_argument("--out", default=None, help="result file name (default v2v_<device>.json)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value (tuning), e.g. --set turn.judge_p_high=0.9")
    args = ap.parse_args()
    cfg = Config.load(args.config)
    cfg.llm.max_new_tokens = args.max_new_tokens
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        old = getattr(getattr(cfg, section), name)
        setattr(getattr(cfg, section), name, type(old)(json.loads(value)) if not isinstance(old, str) else value)
    trace_log = Path(os.environ.get("TMPDIR", "/tmp")) / f"v2v_traces_{os.getpid()}.jsonl"
    cfg.pipeline.trace_log = str(trace_log)
    rt = Runtime.load(cfg)
    rt.warmup()
    sessions, spliced = build_segments(rt, args.sessions, args.turns, args.spliced)
    print(f"{sum(map(len, sessions))} turns in {len(sessions)} sessions + {len(spliced)} spliced clips, real time")
    variants = {
        "full": {},
        "no_pause_prefill": {"pause_prefill": False},
        "no_drafting": {"draft": False},
        "fixed_silence_500ms": {"adaptive": False, "endpoint_silence_ms": 500},
    }
    if cfg.turn.confirm_endpoint:
        variants["no_transcript_check"] = {"confirm_endpoint": False}
        if cfg.turn.asr_end_min_p > 0:  # the words' check without Whisper's P(end of text)
            variants["no_asr_end_check"] = {"asr_end_min_p": 0.0}
    judge = rt.judge
    if judge is not None:
        variants["no_audio_judge"] = {}  # rt.judge is set aside for this one: the LLM's P(end) and silence only
    if args.variants != "all":
        variants = {k: v for k, v in variants.items() if k in args.variants.split(",")}
    base = {k: getattr(cfg.turn, k) for over in variants.values() for k in over}  # what the variants change
    results = {}
    for name, over in variants.items():
        for k, v in {**base, **over}.items():
            setattr(cfg.turn, k, v)
        rt.judge = None if name == "no_audio_judge" else judge
        trace_log.unlink(missing_ok=True)
        load_before = os.getloadavg()
        if name == "full":
            turns = asyncio.run(run_all(rt, sessions, spliced))
        else:  # a time-limited run (GPU machine): the ablations may use a prefix of the scenario set
            turns = asyncio.run(run_all(rt, sessions[:args.ablation_sessions or len(sessions)],
                                        spliced[:len(spliced) if args.ablation_spliced is None
                                                else args.ablation_spliced]))
        rt.judge = judge
        server = [json.loads(ln) for ln in trace_log.read_text().splitlines()] if trace_log.exists() else []
        results[name] = {**summarize(turns), "load_average_before": load_before, "load_average_after": os.getloadavg(),
                         "per_turn": [t.__dict__ for t in turns], "server_traces": server}
        s = results[name]
        print(f"  {name:<22} p50 {_ms(s['v2v_p50_ms'])} ms  p95 {_ms(s['v2v_p95_ms'])}  max {_ms(s['max_wait_ms'])}  "
              f"no reply {s['turns_without_reply']}  false cut-offs {s['false_cutoff_rate']}  "
              f"endpoint {s['mean_endpoint_delay_ms']}", flush=True)
    for k, v in base.items():
        setattr(cfg.turn, k, v)
    # plots are named after the result file: a tuning run (--out) must not overwrite the recorded run's
    tag = Path(args.out).stem.removeprefix("v2v_") if args.out else gpu_tag()
    trace_log.unlink(missing_ok=True)
    out = result_header(config=cfg.source, models={"asr": cfg.asr.model, "llm": cfg.llm.model, "tts": cfg.tts.voice,
                                                   "turn_judge": cfg.turn.judge or None},
                        components={"asr": f"{cfg.asr.backend} on {cfg.asr.device}",
                                    "llm": f"quickturn engine on {cfg.llm.device} ({cfg.llm.dtype})",
                                    "tts": f"{cfg.tts.backend} on {cfg.tts.device}"},
                        splice_s=SPLICE_S, max_new_tokens=args.max_new_tokens,
                        turn_config=dataclasses.asdict(cfg.turn), overrides=args.set,
                        scenario={"sessions": args.sessions, "turns": args.turns, "spliced": len(spliced),
                                  "turn_clips": [g.name for segs in sessions for g in segs],
                                  "spliced_clips": [g.name for g in spliced],
                                  "turn_selection": "dev clips of 1.5-6.5 s whose reference does not end with "
                                                    + " ".join(UNFINISHED) + " (fragments cut mid-sentence)",
                                  "ablation_sessions": args.ablation_sessions or args.sessions,
                                  "ablation_spliced": len(spliced) if args.ablation_spliced is None
                                  else args.ablation_spliced,
                                  "asr_script": cfg.asr.script or None, "llm_script_reply": cfg.llm.script_reply or None},
                        measured_at="client, loopback WebSocket, real-time streaming")
    skip = ("per_turn", "server_traces")
    first = "full" if "full" in results else next(iter(results))
    out["metrics"] = {k: v for k, v in results[first].items() if k not in skip}
    out["ablations"] = {k: {kk: vv for kk, vv in v.items() if kk not in skip} for k, v in results.items()
                        if k != first}
    out["per_turn"] = {k: v["per_turn"] for k, v in results.items()}
    out["server_traces"] = {k: v["server_traces"] for k, v in results.items()}  # trace info: p_end, p_audio, ...
    out_path = result_path(args.out or f"v2v_{gpu_tag()}.json")  # the plots go beside it (an absolute --out too)
    out["plots"] = [Path(p).name for p in plots(results, tag, out_path.parent)] if first == "full" else []
    print("->", write_result(out_path.name, out, out_path.parent))
    rt.close()


if __name__ == "__main__":
    main()
