"""Typed configuration, read from TOML (configs/*.toml). Every field has a default; a file overrides any subset."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import models

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    pass


@dataclass
class VADConfig:
    model: str = "silero-vad"  # registry name, or a path to a Silero .onnx
    threshold: float = 0.5  # speech when P(speech) >= threshold ...
    neg_threshold: float = 0.35  # ... and silence again only below this (hysteresis)
    min_speech_ms: int = 96  # speech shorter than this does not start a turn
    # many callers: every session's windows in one ONNX call per round, on a thread of its own (agent/vad.py
    # VADBatcher) instead of one call per window on the event loop
    batch: bool = False


@dataclass
class TurnConfig:
    barge_in_ms: int = 200  # speech this long while the agent talks interrupts it
    barge_in: bool = True  # False: half duplex, the mic is ignored while the agent speaks
    pause_ms: int = 100  # silence inside a turn that counts as a pause: pause-time work starts
    adaptive: bool = True  # adaptive endpoint from P(end of turn); False: a fixed endpoint_silence_ms
    endpoint_silence_ms: int = 500  # fixed mode
    unknown_delay_ms: int = 800  # adaptive mode, while P(end of turn) for the words so far is not known yet
    min_delay_ms: int = 150  # adaptive: silence needed when the words are clearly finished ...
    max_delay_ms: int = 1000  # ... and mid-sentence
    p_low: float = 0.001  # P(end of turn) at or below which max_delay_ms applies (log-interpolated between)
    p_high: float = 0.05  # at or above which min_delay_ms applies
    pause_prefill: bool = True  # prefill what was said so far into the KV cache during pauses
    draft: bool = True  # draft (generate + synthesize) the first phrase during pauses
    draft_min_p: float = 0.005  # ... when P(end of turn) is at least this
    # the audio end-of-turn judge run at each pause ("smart-turn-v3.2", a path to its .onnx, or "" = off)
    judge: str = ""
    judge_threads: int = 1
    judge_workers: int = 1  # pauses of different sessions judged at once (a GPU server with many callers: > 1)
    # "cpu": onnxruntime, judge_threads cores a call. "cuda" (or "cuda:N"): the same ONNX graph in torch on the GPU
    # (agent/onnx_torch.py), the pauses waiting at once judged in one batch of up to judge_workers
    judge_device: str = "cpu"
    # silence the judge hears before it runs (once per silence inside a turn, also before the PAUSE when shorter than
    # pause_ms): its P(complete) rises with trailing silence even on a voice cut mid-sentence, so it runs early
    # (tests/test_turn_judge.py; bench/pause_judge.py replays the choice)
    judge_after_ms: int = 100
    # judge P(complete) at or below which max_delay_ms applies, at or above which min_delay_ms; in between the judge
    # alone is unsure (unknown_delay_ms); once the LLM's P(end) is known too, the less sure of the two decides
    judge_p_low: float = 0.5
    judge_p_high: float = 0.95
    # True: the judge's verdict alone sets the endpoint delay once it is in (the LLM's P(end) only without one)
    judge_alone: bool = False
    judge_draft_min_p: float = 0.5  # draft during a pause when the judge's P(complete) is at least this
    # an endpoint holds only once the transcript (which the reply waits for anyway) does not trail off ("... four of
    # cl...", "... a table for the"); one that does waits max_delay_ms. False with synthetic ASR weights
    confirm_endpoint: bool = True
    # ... and only when the recogniser's own P(end of text) after the last word is at least this (where the ASR
    # reports it: faster-whisper). Whisper writes a voice cut mid-sentence as a finished-looking sentence ("Feels
    # like these days") but doubts its end: P < 0.4 for 23 of 62 such spliced pauses, never for 36 finished turns
    # (min 0.43; bench/pause_judge.py, faster-whisper; weaker on the torch backend, see perf-notes). 0 = off
    asr_end_min_p: float = 0.4
    llm_p_end: bool = True  # also use the LLM's P(end-of-turn token) (False: synthetic weights; judge/silence only)
    # draft at every pause as soon as its transcript is in, without waiting for a verdict (a GPU with time to spare:
    # the draft is background work, thrown away if the user goes on)
    draft_early: bool = False


@dataclass
class ASRConfig:
    backend: str = "faster-whisper"  # or "torch"
    model: str = "whisper-tiny.en"  # registry name, or a CTranslate2 Whisper directory
    compute_type: str = "int8"
    beam_size: int = 1
    language: str = "en"
    threads: int = 0  # 0: the backend's default
    partial_interval_ms: int = 0  # 0: no partial transcripts while the user speaks
    device: str = "cpu"
    # faster-whisper's encoder input: "short" (the shortest of 10/15/20/30 s that holds the utterance: ~4x less
    # encoder time on CPU at the same WER, asr/fw.py) or "pad30" (faster-whisper's own transcribe)
    window: str = "short"
    # torch backend on CUDA: greedy tokens in chunks of 8 per CUDA-graph replay, one host read per chunk
    # (asr/decoding.py _chunk) instead of a graph replay, ~12 eager ops and a sync per token. Off: on an H100 its
    # tokens equal the per-token graphs' and it is 4-15 % faster alone, but under load (32 callers beside the 8B
    # LLM) the decode waits for the GPU, not the host, and it was no faster (docs/perf-notes.md, seventh session)
    chunked_decode: bool = False
    # benchmarks only, with model = "synthetic:<shape>" (random weights of a real Whisper shape): the full encoder
    # and a decoder pass of ~1.3 tokens per word still run, but the text is the first N words of this passage, N
    # from the speech duration (2.5 words/s) — stable across a pause, as a real transcript is
    script: str = ""


@dataclass
class LLMConfig:
    model: str = "smollm2-135m-instruct"  # registry name, a GGUF file, or a Hugging Face model directory
    device: str = "cpu"
    dtype: str = "float32"
    # SmolLM2 was tuned with "You are a helpful AI assistant named SmolLM..."; close to it, it answers instead
    # of echoing the user (measured on 5 dev transcripts, see docs/perf-notes.md)
    system_prompt: str = ("You are a helpful AI assistant named Quickturn. You talk with the user by voice, so keep "
                          "your answers short.")
    max_new_tokens: int = 80
    temperature: float = 0.0
    top_p: float = 1.0
    max_context_tokens: int = 2048  # KV pool size per session budget
    threads: int = 0
    tokenizer: str = ""  # registry name / path of the tokenizer (needed when model = "synthetic:<shape>")
    # benchmarks only, with synthetic weights: every reply is this text (each token still takes a full decode
    # step), so reply length and phrase boundaries are fixed
    script_reply: str = ""


@dataclass
class TTSConfig:
    backend: str = "piper"  # or "torch"
    voice: str = "piper-joe-medium"  # registry name, or a Piper .onnx (with .onnx.json beside it)
    noise_scale: float | None = None  # None: the voice's own
    length_scale: float | None = None
    noise_w: float | None = None
    threads: int = 1
    device: str = "cpu"
    dtype: str = "float32"  # torch backend: the decoder's dtype ("float16" on a GPU: 55 dB SNR vs fp32, measured)
    cuda_graphs: bool = True  # torch backend on CUDA: replay the model calls from graphs captured at warm-up
    # torch backend: the TTS thread advances the phrases of several sessions waiting at once as one batch (each
    # next window of the same width in one decoder call: tts/torch_backend.py `step_batch`), not one by one.
    # Off: at 64 callers on an H100 (ba2f4c2) a batched window cost the thread as much as a lone one (5.2-6.6 vs
    # 4.1-5.1 ms) and the after-endpoint p95 was 2.7-3.3 s vs 0.5-0.9 s without (docs/perf-notes.md)
    batch_steps: bool = False


@dataclass
class PhraseConfig:
    first_min_words: int = 3  # the first phrase may end at a comma after this many words ...
    first_max_words: int = 8  # ... and is cut at this many words in any case
    min_words: int = 12  # later phrases end at sentence punctuation, or at a comma past min_words ...
    max_words: int = 24  # ... and are cut at max_words in any case


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    max_frame_bytes: int = 65_536  # one binary audio frame (2 s of 16 kHz PCM16)
    max_message_bytes: int = 1_048_576  # anything larger closes the connection
    max_sessions: int = 8
    realtime_slack_s: float = 3.0  # audio may run ahead of real time by this much before it is refused
    output_sample_rate: int = 0  # 0: the TTS voice's own rate
    api_key: str = ""  # required whenever host is not loopback; $QUICKTURN_API_KEY overrides (keeps it out of files)
    # a client that fell behind real time (a network stall) may send this much backlog at once (agent/protocol.py)
    realtime_backlog_s: float = 10.0
    # browsers' Origin header: exact origins, "https://*.example.com" or "*"; [] = same origin as the Host only.
    # Clients without an Origin (SDKs, Twilio) are not checked (the API key guards them)
    allowed_origins: list = field(default_factory=list)
    max_sessions_per_address: int = 4  # live sessions per client IP (IPv6: per /64); 0 = no limit
    per_address_exempt: list = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])  # CIDRs not counted
    trusted_proxies: list = field(default_factory=list)  # CIDRs whose X-Forwarded-For names the client
    idle_timeout_s: float = 300.0  # no message from the client for this long closes the session; 0 = never
    max_session_s: float = 3600.0  # longest session; 0 = no limit
    send_timeout_s: float = 10.0  # a client that reads nothing for this long (send blocked) is dropped
    max_outbound_events: int = 2000  # session events waiting for a slow client before it is dropped
    write_limit: int = 65_536  # bytes buffered per connection before sends wait for the client (websockets)
    send_buffer_bytes: int = 0  # the kernel's send buffer per connection (SO_SNDBUF); 0 = the OS default (autotuned)
    tls_cert: str = ""  # PEM certificate chain; with tls_key, serve wss:// and https:// directly
    tls_key: str = ""
    log_content: bool = False  # transcripts, reply text and audio frames in DEBUG logs; $QUICKTURN_LOG_CONTENT=1
    # /healthz answers 503 "stuck" when a worker (ASR, LLM, TTS) has run one item for this long: no item of ours
    # takes more than a few seconds, so the process needs a restart (an orchestrator's liveness probe); 0 = never
    stuck_after_s: float = 60.0


@dataclass
class PipelineConfig:
    reuse_kv: bool = True  # False (baseline): re-prefill the whole history every turn
    stream_tts: bool = True  # False (baseline): synthesize only after the LLM finished
    trace_log: str = ""  # path of a JSON-lines latency log ("" = off)
    # LLM/TTS/ASR worker order: "edf" (deadlines, agent/worker.py), "fifo" (arrival order, baseline),
    # "edf-urgent" (urgent work before ready paced tokens; experimental), or "deadline" (deadlines only, a ready token
    # breaks ties; experimental, with the engine's run-ahead)
    scheduler: str = "edf"
    # Python's GIL switch interval (sys.setswitchinterval) in ms; 0 = leave Python's 5 ms. The GPU worker threads
    # give the GIL up at every CUDA sync (each ASR token, each decode step, each TTS window) and then wait for it
    # up to the interval while the event loop holds it: with many callers that wait repeats per token.
    gil_switch_ms: float = 0.0
    # how a GPU worker thread waits for the device (agent/cuda_sync.py): "auto" (CUDA's default: spin while cores
    # are free), "spin" or "yield" (CUDA's blocking sync stalled the pipeline on an H100 and is refused)
    cuda_sync: str = "auto"
    # seconds: while one worker thread runs urgent work (an ASR final, a turn verdict, a first phrase), the others'
    # paced items (a reply's later decode steps and TTS windows) wait, until this long before their deadlines, instead
    # of competing with it for the GPU and the GIL (agent/worker.py `paced_hold`); 0 = off
    paced_yield_s: float = 0.0
    # a reply's first phrase generated in one LLM worker item (agent/session.py `phrase_burst`) instead of one item
    # per token, each a round trip through the event loop. Off: at 64 callers on an H100 it changed nothing measurable
    # (other urgent work was queued nearly always, so bursts ended after ~1.3 tokens; perf-notes "Nineteenth session")
    first_phrase_burst: bool = False


@dataclass
class MemoryConfig:
    """One memory plan for the device the LLM runs on (agent/memory.py). Sizes are bytes (>= 1) or fractions of
    the device (< 1); the plan is printed at start-up and start-up fails when the models do not fit."""
    total: float = 0  # 0: the device's total memory (CUDA: the GPU's; CPU: the machine's RAM)
    reserve: float = 0.05  # kept free for fragmentation, cuBLAS/cuDNN workspaces, other processes
    kv: float = 0  # 0: everything left after the models, workspaces and the reserve
    session_tokens: int = 0  # per-session KV quota; 0: [llm] max_context_tokens. Past it, the oldest turns go
    graph_pool: float = 0  # expected LLM decode-graph memory; 0: estimated from the model's shape
    min_sessions: int = 1  # refuse to start unless this many full quotas fit
    evict_idle: bool = True  # under KV pressure, evict idle sessions' KV (LRU) and re-prefill it at their next pause
    # admission: refuse a new session when any GPU worker's (LLM, ASR, TTS, judge) recent p95 queue wait of urgent
    # items exceeds this ...
    admit_wait_p95_ms: float = 150.0
    admit_busy: float = 0.9  # ... or when it was busy more than this fraction of the last window
    admit_load: bool | None = None  # the two load rules above; None: on a GPU only (a CPU worker is always busy)
    # every this many seconds give freed heap memory back to the OS (glibc malloc_trim, agent/heap.py); 0: never.
    # Without it RSS creeps up call after call while the bytes in use stay flat (issue 9 soak)
    trim_s: float = 30.0


@dataclass
class Config:
    vad: VADConfig = field(default_factory=VADConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    asr: ASRConfig = field(default_factory=ASRConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)
    phrases: PhraseConfig = field(default_factory=PhraseConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    source: str = "<defaults>"

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Config":
        """A TOML file, or a name in configs/ ("cpu", "gpu"); None gives configs/cpu.toml."""
        path = Path(path) if path else REPO_CONFIGS / "cpu.toml"
        if not path.suffix and not path.exists():
            path = REPO_CONFIGS / f"{path}.toml"
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from None
        cfg = cls.from_dict(data)
        cfg.source = str(path)
        return cfg

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        cfg = cls()
        for section, values in data.items():
            if section not in {f.name for f in dataclasses.fields(cls)} or section == "source":
                raise ConfigError(f"unknown config section [{section}]")
            target = getattr(cfg, section)
            known = {f.name for f in dataclasses.fields(target)}
            for key, value in values.items():
                if key not in known:
                    raise ConfigError(f"unknown key {key!r} in [{section}] (known: {', '.join(sorted(known))})")
                setattr(target, key, value)
        from .cuda_sync import MODES

        if not (cfg.turn.judge_device == "cpu" or cfg.turn.judge_device.startswith("cuda")):
            raise ConfigError(f"[turn] judge_device must be \"cpu\" or \"cuda\", not {cfg.turn.judge_device!r}")
        if cfg.pipeline.paced_yield_s < 0:
            raise ConfigError(f"[pipeline] paced_yield_s must be >= 0 seconds, not {cfg.pipeline.paced_yield_s}")
        if cfg.pipeline.cuda_sync not in MODES:
            raise ConfigError(f"[pipeline] cuda_sync must be one of {', '.join(MODES)}, not {cfg.pipeline.cuda_sync!r}")
        return cfg


def resolve_model(ref: str, role: str) -> Path:
    """A registry name -> its fetched directory; anything else must be an existing local path."""
    if ref in models.REGISTRY:
        return models.require(ref)
    if ref.startswith("synthetic:"):  # random weights of a named shape: nothing to fetch
        return Path(ref)
    p = Path(ref).expanduser()
    if not p.exists():
        raise models.ModelError(f"{role} model not found: {ref} (neither a known model name nor an existing path)")
    return p
