"""The process-wide runtime: every model loaded once, shared by all sessions, each behind its own worker thread.

Model calls block, so they run in single-thread executors: the LLM's thread is the only one that touches the
LLM engine (its KV pool is not thread-safe), ASR and TTS each have theirs so a phrase can be synthesized while
the next one is generated.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import sys
import time
from dataclasses import dataclass, field

from . import models
from .config import Config, resolve_model
from .memory import MemoryPlanError, MiB, Plan, admission, kv_bytes_per_token, make_plan
from .worker import CriticalPath, PriorityWorker

log = logging.getLogger("quickturn")


@dataclass
class Runtime:
    config: Config
    vad: object
    asr: object
    llm: object  # agent.llm_adapter.ChatLLM
    tts: object
    startup_s: dict = field(default_factory=dict)  # component -> seconds to load
    # the ASR thread: transcriptions queued together run as one batch (edf) when the backend has transcribe_batch
    asr_pool: PriorityWorker = field(default_factory=lambda: PriorityWorker("qt-asr"))
    # the LLM engine's one thread, ordered by priority (pause-time work yields to urgent work between chunks)
    llm_pool: PriorityWorker = field(default_factory=lambda: PriorityWorker("qt-llm"))
    # the TTS thread, ordered the same way (first phrase urgent, later phrases paced by playback)
    tts_pool: PriorityWorker = field(default_factory=lambda: PriorityWorker("qt-tts"))
    vad_batcher: object = None  # agent.vad.VADBatcher when [vad] batch
    cuda_sync: str = ""  # how threads wait for the GPU, as the driver reports it (agent/cuda_sync.py)
    streams: dict = field(default_factory=dict)  # GPU worker -> priority of its own CUDA stream (own_streams)
    judge: object = None  # agent.turn_judge.SmartTurn, the audio end-of-turn judge; None when [turn] judge = ""
    # its own thread(s): a pause's verdict never queues behind the ASR (or the LLM). onnxruntime: judge_workers
    # threads; the GPU judge (TorchSmartTurn): one PriorityWorker batching the pauses waiting at once
    judge_pool: cf.Executor = field(default_factory=lambda: cf.ThreadPoolExecutor(1, "qt-judge"))
    plan: Plan | None = None  # the device memory plan (agent/memory.py), made at load
    meter: "MemoryMeter | None" = None  # what was measured for it
    refusals: dict = field(default_factory=dict)  # admission refusals by reason kind
    trimmer: object = None  # agent.heap.HeapTrimmer: freed heap memory back to the OS every [memory] trim_s

    def __post_init__(self):
        self.set_scheduler(self.config.pipeline.scheduler)
        self.set_paced_yield(self.config.pipeline.paced_yield_s)

    def worker_pools(self) -> tuple:
        """(name, executor) of every worker thread the sessions share: admission reads their load, /healthz their
        snapshots (a stuck one), the benchmarks their statistics."""
        return (("llm", self.llm_pool), ("asr", self.asr_pool), ("tts", self.tts_pool), ("judge", self.judge_pool))

    def set_scheduler(self, policy: str) -> None:
        """The order of the LLM, ASR and TTS workers ([pipeline] scheduler, agent/worker.py); may change while
        serving. "deadline" hands ready tokens over by their deadlines, so it lets generations run ahead of their
        consumers in the engine's batched steps (llm/engine.py `Engine.run_ahead`); the others keep 1."""
        for pool in (self.asr_pool, self.llm_pool, self.tts_pool):
            if isinstance(pool, PriorityWorker):
                pool.policy = policy
        eng = getattr(self.llm, "engine", None)
        if eng is not None and hasattr(eng, "run_ahead"):
            from llm.engine import RUN_AHEAD

            eng.run_ahead = RUN_AHEAD if policy == "deadline" else 1
        self.config.pipeline.scheduler = policy

    def set_paced_yield(self, slack_s: float) -> None:
        """[pipeline] paced_yield_s (agent/worker.py `paced_hold`): while one worker runs urgent work, the others'
        paced items wait until this long before their deadlines (0: off). May change while serving."""
        pools = [p for p in (self.asr_pool, self.llm_pool, self.tts_pool, self.judge_pool)
                 if isinstance(p, PriorityWorker)]
        cp = next((p.critical for p in pools if p.critical is not None), None) or CriticalPath()
        cp.attach(*pools)
        cp.slack_s = slack_s
        self.config.pipeline.paced_yield_s = slack_s

    @classmethod
    def load(cls, config: Config, log_fn=None) -> "Runtime":
        """Load every model the config names. Raises ModelError (naming the file) when one is missing."""
        say = log_fn or (lambda m: log.info(m))
        for ref, role in ((config.vad.model, "VAD"), (config.asr.model, "ASR"), (config.llm.model, "LLM"),
                          (config.tts.voice, "TTS")) + (((config.turn.judge, "turn judge"),) if config.turn.judge
                                                        else ()):
            resolve_model(ref, role)  # every file is there before anything slow starts
        times: dict[str, float] = {}
        if config.pipeline.gil_switch_ms > 0:  # process-wide: the runtime owns the process's threads' pacing
            sys.setswitchinterval(config.pipeline.gil_switch_ms / 1000)

        def timed(name, fn):
            t0 = time.perf_counter()
            role, ref = {"vad": ("VAD", config.vad.model), "asr": ("ASR", config.asr.model),
                         "llm": ("LLM", config.llm.model), "tts": ("TTS", config.tts.voice),
                         "judge": ("turn judge", config.turn.judge)}[name]
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

        meter = MemoryMeter(config)
        vad = timed("vad", lambda: meter.load("VAD", "cpu", lambda: load_vad(config), config.vad.model))
        asr = timed("asr", lambda: meter.load("ASR", _asr_device(config), lambda: load_asr(config), config.asr.model))
        tts = timed("tts", lambda: meter.load("TTS", _tts_device(config), lambda: load_tts(config), config.tts.voice))
        if meter.cuda:  # workspaces and CUDA graphs of ASR/TTS exist after their warm-up: measure them
            meter.workspace("ASR", _asr_device(config), lambda: _warm_asr(asr))
            meter.workspace("TTS", _tts_device(config), lambda: _warm_tts(tts))
            if hasattr(getattr(tts, "graphs", None), "memory_line"):  # the torch Piper on CUDA: what its graphs hold
                meter.notes.append(tts.graphs.memory_line())
        judge = None
        if config.turn.judge and config.turn.judge_device != "cpu":  # on the GPU: in the plan, before the KV pool
            dev = config.turn.judge_device
            judge = timed("judge", lambda: meter.load("turn judge", dev, lambda: load_judge(config, capture=False),
                                                      config.turn.judge))
            if meter.cuda:
                meter.workspace("turn judge", dev, judge.capture)
            else:  # the LLM (and the plan) on the CPU
                judge.capture()
        llm = timed("llm", lambda: load_llm(config, plan_pages=meter.plan_pages))
        meter.after_llm(llm)
        say(meter.plan.table())
        if log_fn is not None:  # the server log has it too
            log.info("memory plan:\n%s", meter.plan.table())
        if config.turn.judge and judge is None:
            judge = timed("judge", lambda: load_judge(config))
        from .vad import VADBatcher

        batcher = VADBatcher(vad, max_batch=max(1, config.server.max_sessions)) if config.vad.batch else None
        workers = max(1, config.turn.judge_workers)
        if hasattr(judge, "p_end_batch"):
            judge_pool = PriorityWorker("qt-judge")
            judge_pool.max_batch = workers
        else:
            judge_pool = cf.ThreadPoolExecutor(workers, "qt-judge")
        rt = cls(config=config, vad=vad, asr=asr, llm=llm, tts=tts, judge=judge, startup_s=times, plan=meter.plan,
                 meter=meter, vad_batcher=batcher, judge_pool=judge_pool)
        rt._warm = meter.cuda
        from .heap import HeapTrimmer

        rt.trimmer = HeapTrimmer.start(config.memory.trim_s)
        if meter.cuda:
            rt.streams = rt.own_streams()
            from .cuda_sync import set_cuda_sync

            try:
                rt.cuda_sync = set_cuda_sync(config.pipeline.cuda_sync)
            except (OSError, AttributeError, RuntimeError) as e:  # no libcuda symbol / driver refused: keep the default
                rt.cuda_sync = f"unchanged ({type(e).__name__}: {e})"
                log.warning("could not set cuda_sync=%s: %s", config.pipeline.cuda_sync, e)
            say(f"GPU waits: {rt.cuda_sync}")
        return rt

    def own_streams(self) -> dict[str, int]:
        """Give each GPU worker thread a CUDA stream of its own (torch's current stream is per thread).

        Otherwise the LLM, ASR and TTS threads all launch onto the device's legacy default stream: their kernels
        run strictly one after another, and every read-back of one thread (the TTS's audio, the ASR's tokens)
        also waits for whatever the others queued before it — with the LLM's decode step always queued one
        ahead, each ASR token and TTS window waited for an 8B decode step. On streams of their own the three
        overlap on the GPU and a thread's sync waits only for its own work. The ASR and TTS streams get the
        higher priority: their kernels are small and on the caller's critical path, and the block scheduler
        then slots them in between the LLM's. Returns {pool name: stream priority}."""
        import torch

        torch.cuda.synchronize()  # what loading and warm-up queued on the default stream is done
        lo, hi = torch.cuda.Stream.priority_range()  # (lowest, highest): e.g. (0, -5)
        out = {}
        for name, pool, device, prio in (("asr", self.asr_pool, _asr_device(self.config), hi),
                                         ("llm", self.llm_pool, self.config.llm.device, lo),
                                         ("tts", self.tts_pool, _tts_device(self.config), hi)):
            if not str(device).startswith("cuda") or not isinstance(pool, cf.Executor):
                continue

            def use(prio=prio, device=device):
                torch.cuda.set_stream(torch.cuda.Stream(device=torch.device(device), priority=prio))
                _init_thread_blas(device)
                return torch.cuda.current_stream().priority

            out[name] = pool.submit(use).result()
        if self.judge is not None and str(getattr(self.judge, "device", "cpu")).startswith("cuda"):
            self.judge_pool.submit(_init_thread_blas, str(self.judge.device),
                                   getattr(self.judge, "stream", None)).result()
        return out

    def warmup(self) -> None:
        """One tiny pass through each model so the first caller does not pay for lazy initialisation."""
        t0 = time.perf_counter()
        if not getattr(self, "_warm", False):  # (on CUDA, Runtime.load warmed ASR/TTS to measure their memory)
            _warm_asr(self.asr)
            _warm_tts(self.tts)
        self._warm = True
        s = self.llm.new_session()
        s.add_user("Hi")
        g = s.generate_reply()
        next(g, None)
        g.close()
        s.free()
        self.startup_s["warmup"] = time.perf_counter() - t0

    def memory_report(self) -> dict:
        """The start-up plan next to what is measured now: planned vs measured bytes, per item and in total
        (CUDA: torch.cuda.memory_allocated since before the first model loaded; CPU: tensor and file sizes)."""
        return self.meter.report(self.llm) if self.meter is not None else {}

    def admit(self, live: int) -> tuple[bool, str, str]:
        """Admission control for a new session (agent/memory.py `admission`): (admit, code, reason). Counted."""
        m, eng = self.config.memory, self.llm.engine
        free = eng.free_pages * eng.page_size
        evictable = sum(c.own_pages() for c in list(self.llm.conversations) if c.idle) * eng.page_size
        if not self.llm.evict_idle:
            evictable = 0
        loads = {}  # every worker the sessions share, not only the LLM's (see admission)
        if m.admit_load if m.admit_load is not None else (self.meter is not None and self.meter.cuda):
            loads = {name: pool.load() for name, pool in self.worker_pools() if hasattr(pool, "load")}
        ok, code, why = admission(live, self.config.server.max_sessions, free_kv_tokens=free,
                                  evictable_kv_tokens=evictable, session_tokens=self.llm.quota_tokens or
                                  self.config.llm.max_context_tokens,
                                  loads=loads, wait_target_ms=m.admit_wait_p95_ms, busy_limit=m.admit_busy)
        if not ok:
            kind = "kv" if "KV" in why else "load" if code == "server_busy" else "cap"
            self.refusals[kind] = self.refusals.get(kind, 0) + 1
            log.warning("session refused (%s): %s", code, why)
        return ok, code, why

    async def transcribe(self, audio) -> str:
        """On the ASR thread; several sessions' transcriptions waiting together become one batch (edf)."""
        return await self._urgent(self.asr_pool, self.asr.transcribe, getattr(self.asr, "transcribe_batch", None),
                                  audio)

    async def transcribe_with_end(self, audio) -> tuple[str, float | None]:
        """The transcript and the recogniser's P(end of text) after its last word, where the ASR reports one (see
        asr/base.py); otherwise the batched transcribe() and None."""
        fn = getattr(self.asr, "transcribe_with_end", None)
        if fn is None:
            return await self.transcribe(audio), None
        return await self._urgent(self.asr_pool, fn, getattr(self.asr, "transcribe_with_end_batch", None), audio)

    async def judge_p_end(self, audio) -> float:
        """The audio judge's P(complete), on its thread; the GPU judge's pauses waiting together are one batch."""
        return await self._urgent(self.judge_pool, self.judge.p_end, getattr(self.judge, "p_end_batch", None),
                                  audio)

    async def _urgent(self, pool, fn, batch_fn, arg):
        """fn(arg) on pool; on a PriorityWorker with a batch function: urgent, and batched with the same calls."""
        if isinstance(pool, PriorityWorker) and batch_fn is not None:
            from .worker import Priority

            return await pool.run(Priority.URGENT, fn, arg, batch=(fn.__name__, batch_fn))
        return await self.run(pool, fn, arg)

    async def run(self, pool: cf.Executor, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the worker threads: queued work is cancelled, and the item each thread is running is waited for
        (up to timeout_s in all). A worker thread still inside onnxruntime, CTranslate2 or torch when the interpreter
        exits is ended by pthread_exit, whose forced unwind through their C++ frames aborts the process
        ("terminate called without an active exception": `quickturn demo` exited with SIGABRT now and then)."""
        if self.trimmer is not None:
            self.trimmer.close()
        pools = (self.asr_pool, self.llm_pool, self.tts_pool, self.judge_pool)
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        if self.vad_batcher is not None:
            self.vad_batcher.close()
        end = time.monotonic() + timeout_s
        for pool in pools + ((self.vad_batcher.pool,) if self.vad_batcher is not None else ()):
            # a ThreadPoolExecutor's threads (judge, VAD) have no public join of their own
            for t in [pool] if isinstance(pool, PriorityWorker) else list(getattr(pool, "_threads", ())):
                t.join(max(0.0, end - time.monotonic()))


def load_vad(config: Config):
    from .vad import SileroVAD

    return SileroVAD(resolve_model(config.vad.model, "VAD"))


def load_asr(config: Config):
    c = config.asr
    path = resolve_model(c.model, "ASR")
    if c.backend == "faster-whisper":
        from asr.fw import FasterWhisperASR

        return FasterWhisperASR(path, compute_type=c.compute_type, beam_size=c.beam_size, language=c.language,
                                cpu_threads=c.threads, partial_interval_s=c.partial_interval_ms / 1000,
                                window=c.window)
    if c.backend == "torch":
        from asr.torch_backend import TorchWhisperASR

        if c.model.startswith("synthetic:"):  # benchmarks: random weights of a real shape, scripted text
            return TorchWhisperASR(shape=c.model.removeprefix("synthetic:"), device=c.device, script=c.script,
                                   partial_interval_s=(c.partial_interval_ms or 200) / 1000,
                                   chunked_decode=c.chunked_decode)
        return TorchWhisperASR(path, device=c.device, partial_interval_s=(c.partial_interval_ms or 200) / 1000,
                               chunked_decode=c.chunked_decode)
    raise models.ModelError(f"unknown ASR backend {c.backend!r} (faster-whisper, torch)")


def load_judge(config: Config, capture: bool = True):
    from .turn_judge import SmartTurn, TorchSmartTurn

    t = config.turn
    if t.judge_device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise models.ModelError(f"[turn] judge_device = {t.judge_device!r}, but no CUDA device is available "
                                    f"(judge_device = \"cpu\" runs the judge with onnxruntime)")
        return TorchSmartTurn(resolve_model(t.judge, "turn judge"), device=t.judge_device,
                              max_batch=max(1, t.judge_workers), capture=capture)
    return SmartTurn(resolve_model(t.judge, "turn judge"), threads=t.judge_threads, concurrency=t.judge_workers)


def load_tts(config: Config):
    c = config.tts
    path = resolve_model(c.voice, "TTS")
    if c.backend == "piper":
        from tts.piper_onnx import PiperOnnxTTS

        return PiperOnnxTTS(path, noise_scale=c.noise_scale, length_scale=c.length_scale, noise_w=c.noise_w,
                            threads=c.threads)
    if c.backend == "torch":
        from tts.torch_backend import TorchPiperTTS

        import torch

        tts = TorchPiperTTS(path, device=c.device, dtype=getattr(torch, c.dtype))
        tts.batch_steps = c.batch_steps
        if c.cuda_graphs and tts.device.type == "cuda":
            tts.use_cuda_graphs()
        return tts
    raise models.ModelError(f"unknown TTS backend {c.backend!r} (piper, torch)")


def load_llm(config: Config, plan_pages=None):
    from .llm_adapter import ChatLLM

    llm = ChatLLM.load(config.llm, resolve_model(config.llm.model, "LLM"), config.server.max_sessions,
                       plan_pages=plan_pages)
    llm.quota_tokens = config.memory.session_tokens or config.llm.max_context_tokens
    llm.evict_idle = config.memory.evict_idle
    return llm


def _asr_device(config: Config) -> str:
    return config.asr.device if config.asr.backend == "torch" else "cpu"


def _tts_device(config: Config) -> str:
    return config.tts.device if config.tts.backend == "torch" else "cpu"


def _init_thread_blas(device: str, stream=None) -> None:
    """Make this thread's cuBLAS and cuBLASLt handles, and their workspaces on its current stream, now. Torch makes
    them lazily, per thread and stream, at the first matmul; in the middle of serving, cublasCreate allocates outside
    torch's pool, and once the KV pool and the graph pools have taken the device it fails
    (CUBLAS_STATUS_ALLOC_FAILED: the judge's and the ASR's first calls at 64 callers, H100, d9c0ad7)."""
    import contextlib

    import torch

    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        a = torch.ones(16, 16, device=device, dtype=torch.float16)
        torch.nn.functional.linear(a, a, a[0])  # addmm with a bias: the cuBLASLt path
        torch.mm(a, a)  # the cuBLAS handle
        torch.mm(a.float(), a.float())
        torch.cuda.current_stream().synchronize()


def _warm_asr(asr) -> None:
    import numpy as np

    if hasattr(asr, "warmup"):  # the torch Whisper captures its CUDA graphs per batch size here
        on_gpu = getattr(getattr(asr, "device", None), "type", "cpu") == "cuda"
        # on a GPU, every decoder batch bucket that Runtime.transcribe's batching can reach (capture at start-up,
        # not in the middle of a call, and inside the memory plan)
        asr.warmup(batches=tuple(b for b in (1, 2, 4, 8, 16, 32) if b <= getattr(asr, "max_batch", 1))
                   if on_gpu else (1,))
    asr.transcribe(np.zeros(16_000, np.float32))


def _warm_tts(tts) -> None:
    if hasattr(tts, "warmup"):  # the torch Piper: phrases of every usual length, capturing its CUDA graphs
        tts.warmup()
    for _ in tts.synthesize("Hello."):
        pass


def _module_bytes(obj, depth: int = 2) -> int:
    """Bytes of the distinct tensors (parameters and buffers) of the torch modules `obj` holds (or is)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    seen: set = set()
    total = 0

    def visit(o, d):
        nonlocal total
        if isinstance(o, torch.nn.Module):
            for t in list(o.parameters()) + list(o.buffers()):
                key = (t.untyped_storage().data_ptr(), t.device)
                if key not in seen:
                    seen.add(key)
                    total += t.untyped_storage().nbytes()
        elif d > 0 and hasattr(o, "__dict__"):
            for v in vars(o).values():
                visit(v, d - 1)

    visit(obj, depth)
    return total


def _file_bytes(ref: str, role: str) -> int:
    """Model file sizes (onnxruntime / CTranslate2 models keep roughly their file's size in memory)."""
    try:
        p = resolve_model(ref, role)
    except models.ModelError:
        return 0
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and f.suffix in
                   (".onnx", ".bin", ".gguf", ".safetensors", ".pt"))
    return 0


class MemoryMeter:
    """Measures each model's memory on the plan device (the LLM's) as it loads, and makes the plan.
    CUDA: torch.cuda.memory_allocated before/after each load and warm-up. CPU: parameter+buffer bytes of torch
    models, file size of onnxruntime/CTranslate2 ones. Components on another device are named in the notes."""

    def __init__(self, config: Config):
        import torch

        self.config = config
        self.device = torch.device(config.llm.device)
        self.cuda = self.device.type == "cuda"
        m = config.memory
        if self.cuda:
            torch.cuda.init()
            self.base = torch.cuda.memory_allocated(self.device)
            dev_total = torch.cuda.get_device_properties(self.device).total_memory
        else:
            import psutil

            self.base = 0
            dev_total = psutil.virtual_memory().total
        self.total = int(m.total * dev_total) if 0 < m.total < 1 else int(m.total or dev_total)
        self.fixed: dict[str, int] = {}  # planned sizes (measured, or the graph estimate)
        self.measured: dict[str, int] = {}  # measured sizes
        self.notes: list[str] = []
        self.plan: Plan | None = None
        self.kv_measured = 0

    def _alloc(self) -> int:
        import torch

        torch.cuda.synchronize(self.device)
        return torch.cuda.memory_allocated(self.device)

    def _on_plan_device(self, device: str) -> bool:
        import torch

        return torch.device(device).type == self.device.type

    def load(self, role: str, device: str, fn, ref: str):
        before = self._alloc() if self.cuda else 0
        obj = fn()
        if not self._on_plan_device(device):
            self.notes.append(f"{role} runs on {device}: not in this plan")
            return obj
        size = (self._alloc() - before) if self.cuda else (_module_bytes(obj) or _file_bytes(ref, role))
        self.fixed[f"{role} weights"] = self.measured[f"{role} weights"] = size
        return obj

    def workspace(self, role: str, device: str, fn) -> None:
        """Warm-up / CUDA-graph capture: measured as allocated memory, planned as the larger of that and the memory
        the allocator holds for it afterwards: a captured graph's private pool keeps the blocks of its freed
        intermediates, which memory_allocated does not count and nothing else can use (the KV pool must not
        be planned into them)."""
        import torch

        if not self._on_plan_device(device):
            return
        before = self._alloc()
        torch.cuda.empty_cache()
        reserved = torch.cuda.memory_reserved(self.device)
        fn()
        grown = self._alloc() - before
        torch.cuda.empty_cache()  # what the regular pool cached and can give back; graph pools stay
        held = torch.cuda.memory_reserved(self.device) - reserved
        key = f"{role} workspaces + graphs"
        self.measured[key] = max(0, grown)
        self.fixed[key] = max(0, grown, held)

    def graph_estimate(self, model, max_batch: int = 64) -> int:
        """LLM decode graphs (agent/memory.py plan item): static inputs, and per batch bucket its logits [b, vocab]
        and ids, which stay allocated in the graphs' pool; plus cuBLAS workspaces (~2 x 8 MiB)."""
        m = self.config.memory.graph_pool
        if m:
            return int(m * self.total) if m < 1 else int(m)
        if not self.cuda:
            return 0
        from llm.engine import DecodeGraphs

        cfg = model.cfg
        buckets = [b for b in DecodeGraphs.BUCKETS if b < max_batch] + [max_batch]
        rows = sum(buckets)
        max_pages = -(-model.max_seq_len // 16)
        elem = model.embed.weight.element_size()
        return rows * cfg.vocab_size * elem + rows * 8 + 4 * (4 * max_batch + max_batch * max_pages) + 16 * MiB

    def plan_pages(self, model, page_size: int) -> int:
        """Called by ChatLLM.load once the weights are in memory: measure them, make the plan, give the KV pages."""
        cfg, m = self.config, self.config.memory
        w = (self._alloc() - self.base - sum(self.measured.values())) if self.cuda else _module_bytes(model)
        self.fixed["LLM weights"] = self.measured["LLM weights"] = w
        if self.cuda:
            self.fixed["LLM decode graphs (estimate)"] = self.graph_estimate(model, max(64, cfg.server.max_sessions))
        mc = model.cfg
        per_tok = kv_bytes_per_token(mc.n_layers, mc.n_kv_heads, mc.head_dim, model.embed.weight.element_size())
        quota = m.session_tokens or cfg.llm.max_context_tokens
        kv_limit = m.kv or None
        if not self.cuda and not m.kv:  # CPU: RAM is shared with everything else; a full quota per allowed session
            kv_limit = max(64 * page_size, quota * cfg.server.max_sessions) * per_tok
        self.plan = make_plan(self.total, self.fixed, m.reserve, per_tok, page_tokens=page_size,
                              session_tokens=quota, kv_limit=kv_limit, min_sessions=m.min_sessions)
        self.plan.notes.extend(self.notes)
        self._before_kv = self._alloc() if self.cuda else 0
        return self.plan.kv_pages

    def after_llm(self, llm) -> None:
        """The KV pool is allocated: measure it; on CUDA capture the decode graphs now and measure them."""
        eng = self.plan and llm.engine
        if self.plan is None:
            raise MemoryPlanError("the LLM was loaded without asking the memory plan")
        if self.cuda:
            self.kv_measured = self._alloc() - self._before_kv
            before = self._alloc()
            eng.capture()
            self.measured["LLM decode graphs (estimate)"] = self._alloc() - before
            self.plan.notes.append(f"LLM decode graphs measured after capture: "
                                   f"{self.measured['LLM decode graphs (estimate)'] / MiB:.1f} MiB")
        else:
            self.kv_measured = eng.kv_pool.numel() * eng.kv_pool.element_size()

    def report(self, llm) -> dict:
        p = self.plan
        planned = p.planned
        if self.cuda:
            import torch

            now = self._alloc()
            measured = now - self.base
            free, _ = torch.cuda.mem_get_info(self.device)
            # device_free: what the driver has left outside torch's pool (cuBLAS handles, cuFFT plans, Triton
            # modules are made there); memory_reserved - memory_allocated: what torch's pool holds unused
            extra = {"memory_allocated": now, "memory_reserved": torch.cuda.memory_reserved(self.device),
                     "device_free": free}
        else:
            measured = sum(self.measured.values()) + self.kv_measured
            extra = {}
        items = {k: {"planned": v, "measured": self.measured.get(k)} for k, v in p.fixed.items()}
        items["LLM KV pool"] = {"planned": p.kv_bytes, "measured": self.kv_measured}
        eng = llm.engine
        return {"device": str(self.device), "total": p.total, "reserve": p.reserve, "planned_bytes": planned,
                "measured_bytes": measured, "error_pct": round(100 * (measured - planned) / max(planned, 1), 3),
                "items": items, "kv_pages": p.kv_pages, "page_tokens": p.page_tokens, "page_bytes": p.page_bytes,
                "kv_pages_free": eng.free_pages, "session_tokens": p.session_tokens,
                "max_sessions_full_quota": p.max_sessions, "table": p.table(), **extra}
