"""`quickturn`: models, demo, chat, serve, client."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_CLIP = ASSETS / "LJ001-0009.flac"


def _config(args):
    from .config import Config

    cfg = Config.load(args.config)
    for item in getattr(args, "set", None) or []:  # --set llm.max_new_tokens=40
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        import tomllib

        parsed = tomllib.loads(f"v = {value}")["v"] if value else ""
        cfg2 = Config.from_dict({section: {name: parsed}})
        setattr(getattr(cfg, section), name, getattr(getattr(cfg2, section), name))
    return cfg


def cmd_models(args) -> int:
    from . import models

    if args.action == "list":
        print(f"model home: {models.home()}")
        print(f"{'name':<24} {'role':<5} {'fetched':<8} {'size':>9}  default  path")
        for r in models.listing():
            size = f"{r['bytes'] / 1e6:.1f} MB" if r["bytes"] else "-"
            print(f"{r['name']:<24} {r['role']:<5} {'yes' if r['fetched'] else 'no':<8} {size:>9}  "
                  f"{'yes' if r['default'] else '':<7}  {r['path']}")
        return 0
    names = args.names or (list(models.REGISTRY) if args.all else list(models.DEFAULT_MODELS))
    for name in names:
        models.fetch(name)
    return 0


def _load_runtime(cfg):
    from .runtime import Runtime

    t0 = time.perf_counter()
    rt = Runtime.load(cfg, log_fn=lambda m: print(f"  {m}", flush=True))
    rt.warmup()
    rt.startup_s["total"] = time.perf_counter() - t0
    return rt


def cmd_demo(args) -> int:
    import numpy as np

    from .audio import INTERNAL_RATE, load_audio, resample, write_wav
    from .offline import converse
    from .trace import format_table

    t_start = time.perf_counter()
    cfg = _config(args)
    print(f"Quickturn demo — config {cfg.source}")
    rt = _load_runtime(cfg)
    startup = time.perf_counter() - t_start
    if args.say:
        pieces = [c.audio for c in rt.tts.synthesize(args.say)]
        question = resample(np.concatenate(pieces), rt.tts.sample_rate, INTERNAL_RATE)
        question = np.concatenate([np.zeros(INTERNAL_RATE // 2, np.float32), question])
        print(f"input: --say {args.say!r} (synthesized by Quickturn's own TTS, not a recording)")
    else:
        path = Path(args.input) if args.input else DEFAULT_CLIP
        question = load_audio(path)
        print(f"input: {path} ({len(question) / INTERNAL_RATE:.1f} s)")
    print("streaming it in real time ..." if not args.fast else "feeding it as fast as possible ...")
    conv = asyncio.run(converse(rt, [question], realtime=not args.fast))
    if not conv.turns:
        print("no speech was detected in the input", file=sys.stderr)
        return 1
    turn = conv.turns[0]
    audio = turn.reply_audio
    out = Path(args.output)
    write_wav(out, audio, rt.tts.sample_rate)
    print()
    print(f"transcript : {turn.transcript}")
    print(f"reply      : {turn.reply}")
    print(f"reply audio: {out} ({len(audio) / rt.tts.sample_rate:.1f} s)")
    if turn.latency:
        from .trace import TurnTrace

        tr = TurnTrace(turn.latency.turn)
        tr.t = {k: v / 1000 for k, v in turn.latency.ms.items()}
        tr.t["speech_end"] = 0.0
        print()
        print("latency (ms after the end of speech)")
        print(format_table(tr))
        print(f"{'voice-to-voice':<18} {turn.latency.v2v_ms or float('nan'):>8.0f}")
    print()
    print("start-up (s): " + ", ".join(f"{k} {v:.2f}" for k, v in rt.startup_s.items()) +
          f" | to first turn {startup:.2f}")
    if not args.no_check and len(audio):
        from asr.wer import word_match

        heard = rt.asr.transcribe(resample(audio, rt.tts.sample_rate, INTERNAL_RATE))
        print(f"check: ASR hears the reply as {heard!r} — {100 * word_match(turn.reply, heard):.0f}% of words match")
    rt.close()
    return 0


def cmd_chat(args) -> int:
    from .mic import list_devices, run_chat

    if args.list_devices:
        return list_devices()
    cfg = _config(args)
    return run_chat(cfg, _load_runtime, barge_in=args.barge_in, input_device=args.input_device,
                    output_device=args.output_device)


def cmd_serve(args) -> int:
    from .server import serve

    cfg = _config(args)
    if args.host:
        cfg.server.host = args.host
    if args.port is not None:
        cfg.server.port = args.port
    if args.max_sessions is not None:
        cfg.server.max_sessions = args.max_sessions
    if args.log_json:  # one JSON object per line (sessions, turn latencies, errors) for log pipelines
        from .transports.hub import use_json_logs

        use_json_logs()
    from .limits import check_bind, effective_token

    check_bind(cfg.server.host, effective_token(cfg.server.api_key))  # refuse before the models load
    from .limits import parse_networks, tls_context

    tls_context(cfg.server.tls_cert, cfg.server.tls_key)  # half a TLS config or a missing file: refuse now
    parse_networks(cfg.server.per_address_exempt)
    parse_networks(cfg.server.trusted_proxies)
    rt = _load_runtime(cfg)
    return asyncio.run(serve(rt))


def cmd_client(args) -> int:
    from .client import run_client

    return asyncio.run(run_client(args.url, args.input, args.output, realtime=not args.fast))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="quickturn", description="A latency-first voice agent.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    def with_config(sp):
        sp.add_argument("--config", help="TOML file or a name in configs/ (default: cpu)")
        sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
        return sp

    m = sub.add_parser("models", help="fetch or list model files")
    m.add_argument("action", choices=["fetch", "list"])
    m.add_argument("names", nargs="*")
    m.add_argument("--all", action="store_true", help="fetch every known model, not only the defaults")
    m.set_defaults(fn=cmd_models)

    d = with_config(sub.add_parser("demo", help="answer a recorded question, print latencies"))
    d.add_argument("--input", help="audio file (WAV/FLAC); default: an LJSpeech recording shipped with Quickturn")
    d.add_argument("--say", help="synthesize this question with Quickturn's TTS instead")
    d.add_argument("--output", default="reply.wav")
    d.add_argument("--fast", action="store_true", help="feed audio faster than real time")
    d.add_argument("--no-check", action="store_true", help="skip transcribing the reply audio")
    d.set_defaults(fn=cmd_demo)

    c = with_config(sub.add_parser("chat", help="talk through the microphone and speaker"))
    c.add_argument("--list-devices", action="store_true")
    c.add_argument("--barge-in", action="store_true", help="listen while speaking (use headphones)")
    c.add_argument("--input-device")
    c.add_argument("--output-device")
    c.set_defaults(fn=cmd_chat)

    s = with_config(sub.add_parser("serve", help="WebSocket server (docs/protocol.md)"))
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--max-sessions", type=int, help="sessions served at once (/readyz reports what is left)")
    s.add_argument("--log-json", action="store_true", help="structured JSON logs on stderr")
    s.set_defaults(fn=cmd_serve)

    cl = sub.add_parser("client", help="stream a file to a server in real time, save the reply")
    cl.add_argument("--input", required=True)
    cl.add_argument("--url", default="ws://127.0.0.1:8765")
    cl.add_argument("--output", default="reply.wav")
    cl.add_argument("--fast", action="store_true", help="send faster than real time")
    cl.set_defaults(fn=cmd_client)

    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .audio import AudioError
    from .config import ConfigError
    from .limits import LimitsError
    from .mic import AudioDeviceError
    from .models import ModelError

    try:
        return args.fn(args) or 0
    except (ModelError, ConfigError, AudioError, AudioDeviceError, LimitsError, FileNotFoundError) as e:
        print(f"quickturn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
