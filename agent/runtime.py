"""The process-wide runtime: every model loaded once, shared by all sessions, each behind its own worker thread.

Model calls block, so they run in single-thread executors: the LLM's thread is the only one that touches the
LLM engine (its KV pool is not thread-safe), ASR and TTS each have theirs so a phrase can be synthesized while
the next one is generated.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import time
from dataclasses import dataclass, field

from . import models
from .config import Config, resolve_model
from .worker import PriorityWorker

log = logging.getLogger("quickturn")


@dataclass
class Runtime:
    config: Config
    vad: object
    asr: object
    llm: object  # agent.llm_adapter.ChatLLM
    tts: object
    startup_s: dict = field(default_factory=dict)  # component -> seconds to load
    asr_pool: cf.ThreadPoolExecutor = field(default_factory=lambda: cf.ThreadPoolExecutor(1, "qt-asr"))
    # the LLM engine's one thread, ordered by priority (pause-time work yields to urgent work between chunks)
    llm_pool: PriorityWorker = field(default_factory=lambda: PriorityWorker("qt-llm"))
    tts_pool: cf.ThreadPoolExecutor = field(default_factory=lambda: cf.ThreadPoolExecutor(1, "qt-tts"))

    @classmethod
    def load(cls, config: Config, log_fn=None) -> "Runtime":
        """Load every model the config names. Raises ModelError (naming the file) when one is missing."""
        say = log_fn or (lambda m: log.info(m))
        for ref, role in ((config.vad.model, "VAD"), (config.asr.model, "ASR"), (config.llm.model, "LLM"),
                          (config.tts.voice, "TTS")):
            resolve_model(ref, role)  # every file is there before anything slow starts
        times: dict[str, float] = {}

        def timed(name, fn):
            t0 = time.perf_counter()
            role, ref = {"vad": ("VAD", config.vad.model), "asr": ("ASR", config.asr.model),
                         "llm": ("LLM", config.llm.model), "tts": ("TTS", config.tts.voice)}[name]
            try:
                out = fn()
            except models.ModelError:
                raise
            except Exception as e:  # a corrupt or incompatible file: say which one, and why
                raise models.ModelError(f"{role} model {resolve_model(ref, role)} could not be loaded: "
                                        f"{type(e).__name__}: {e}") from e
            times[name] = time.perf_counter() - t0
            say(f"loaded {name} in {times[name]:.2f} s")
            return out

        vad = timed("vad", lambda: load_vad(config))
        asr = timed("asr", lambda: load_asr(config))
        llm = timed("llm", lambda: load_llm(config))
        tts = timed("tts", lambda: load_tts(config))
        return cls(config=config, vad=vad, asr=asr, llm=llm, tts=tts, startup_s=times)

    def warmup(self) -> None:
        """One tiny pass through each model so the first caller does not pay for lazy initialisation."""
        import numpy as np

        t0 = time.perf_counter()
        if hasattr(self.asr, "warmup"):  # the torch Whisper captures its CUDA graphs per batch size here
            self.asr.warmup()
        self.asr.transcribe(np.zeros(16_000, np.float32))
        for _ in self.tts.synthesize("Hello."):
            pass
        s = self.llm.new_session()
        s.add_user("Hi")
        g = s.generate_reply()
        next(g, None)
        g.close()
        s.free()
        self.startup_s["warmup"] = time.perf_counter() - t0

    async def run(self, pool: cf.Executor, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def close(self) -> None:
        for pool in (self.asr_pool, self.llm_pool, self.tts_pool):
            pool.shutdown(wait=False, cancel_futures=True)


def load_vad(config: Config):
    from .vad import SileroVAD

    return SileroVAD(resolve_model(config.vad.model, "VAD"))


def load_asr(config: Config):
    c = config.asr
    path = resolve_model(c.model, "ASR")
    if c.backend == "faster-whisper":
        from asr.fw import FasterWhisperASR

        return FasterWhisperASR(path, compute_type=c.compute_type, beam_size=c.beam_size, language=c.language,
                                cpu_threads=c.threads, partial_interval_s=c.partial_interval_ms / 1000)
    if c.backend == "torch":
        from asr.torch_backend import TorchWhisperASR

        return TorchWhisperASR(path, device=c.device, partial_interval_s=(c.partial_interval_ms or 200) / 1000)
    raise models.ModelError(f"unknown ASR backend {c.backend!r} (faster-whisper, torch)")


def load_tts(config: Config):
    c = config.tts
    path = resolve_model(c.voice, "TTS")
    if c.backend == "piper":
        from tts.piper_onnx import PiperOnnxTTS

        return PiperOnnxTTS(path, noise_scale=c.noise_scale, length_scale=c.length_scale, noise_w=c.noise_w,
                            threads=c.threads)
    if c.backend == "torch":
        from tts.torch_backend import TorchPiperTTS

        return TorchPiperTTS(path, device=c.device)
    raise models.ModelError(f"unknown TTS backend {c.backend!r} (piper, torch)")


def load_llm(config: Config):
    from .llm_adapter import ChatLLM

    return ChatLLM.load(config.llm, resolve_model(config.llm.model, "LLM"), config.server.max_sessions)
