"""The LLM engine: a paged KV pool allocated once, sessions that own pages, and one decode step for every
generating session (continuous batching).

    engine = Engine(model, tokenizer=tok, num_pages=512, page_size=16)
    sys = engine.prefix(chat.system_ids("You are ..."))     # prefilled once, pages shared
    s = engine.new_session(prefix=sys)
    logits = s.append(chat.user_turn_ids("Hi"), return_logits=True)  # chunked prefill, cancellable
    for tok in s.generate(64, Sampling(), stop_ids=chat.stop_ids): ...
    s.append(chat.end_of_reply_ids())                       # close the assistant message
    draft = s.fork(); ...; draft.free()                     # copy-on-write branch
    s.truncate(n)                                           # roll back (barge-in), frees pages
    s.free()

Token bookkeeping: `s.tokens` is the session's history. All of it is in the KV cache except, right after
`generate`, possibly the last generated token ("pending": sampled, yielded, not yet run through the model); the
next `append` or `generate` feeds it first. A stop token is yielded but never becomes part of the history.

Pages: a session's `pages[i]` holds positions i*page_size .. (i+1)*page_size-1. Pages are refcounted; before a
session writes into a page that another session also holds (fork, shared prefix), it copies it (copy-on-write).
Everything here is synchronous and single-threaded (the pipeline calls it from one worker thread); only
`cancel` flags may be set from another thread.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from llm import ops
from llm.llama import AttnMeta, Llama

log = logging.getLogger("quickturn.llm")


class OutOfPages(RuntimeError):
    """The KV pool has no free page left."""


class Cancelled(RuntimeError):
    """append() stopped between chunks because its cancel flag was set; `n_done` tokens were appended."""

    def __init__(self, n_done: int):
        super().__init__(f"append cancelled after {n_done} tokens")
        self.n_done = n_done


@dataclass
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    # benchmarks on synthetic weights: emit these token ids instead of the sampled ones (every decode step still
    # runs the full model); the reply ends after the last one
    script: tuple[int, ...] | None = None


@dataclass
class SessionStats:
    prefill_tokens: int = 0  # cumulative tokens run through prefill
    last_append_tokens: int = 0  # tokens the last append() ran through the model (pending token included)
    decode_tokens: int = 0  # tokens produced by decode steps
    appends: int = 0


class PagePool:
    """Free list + refcounts over page ids 0..num_pages-1 (host side; the tensors live in Engine.kv)."""

    def __init__(self, num_pages: int):
        self.num_pages = num_pages
        self.refs = [0] * num_pages
        self.free_list = list(range(num_pages - 1, -1, -1))  # pop() gives the lowest id first

    @property
    def n_free(self) -> int:
        return len(self.free_list)

    def alloc(self) -> int:
        if not self.free_list:
            raise OutOfPages(f"KV pool exhausted ({self.num_pages} pages)")
        p = self.free_list.pop()
        self.refs[p] = 1
        return p

    def incref(self, p: int) -> None:
        assert self.refs[p] > 0
        self.refs[p] += 1

    def decref(self, p: int) -> None:
        assert self.refs[p] > 0, f"page {p} freed twice"
        self.refs[p] -= 1
        if self.refs[p] == 0:
            self.free_list.append(p)


class Session:
    def __init__(self, engine: "Engine"):
        self.engine = engine
        self.tokens: list[int] = []
        self.pages: list[int] = []
        self.n_cached = 0  # tokens whose K/V are in the pages
        self.last_logits: Tensor | None = None  # [vocab] logits after tokens[:n_cached] (when known)
        self.stats = SessionStats()
        self.freed = False
        self._request: "_Request | None" = None

    # ---- public API ---------------------------------------------------------------------------------------

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def append(self, ids: Sequence[int], return_logits: bool = False,
               cancel: threading.Event | Callable[[], bool] | None = None) -> Tensor | None:
        """Prefill `ids` (plus a pending generated token) in chunks. Returns the logits [vocab] (fp32) of the
        last position when asked. Raises Cancelled between chunks if `cancel` is set; what ran stays appended."""
        self._check_idle()
        self.tokens.extend(int(t) for t in ids)
        start = self.n_cached
        self.stats.appends += 1
        chunk = self.engine.prefill_chunk
        try:
            while self.n_cached < len(self.tokens):
                if cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel()):
                    del self.tokens[self.n_cached:]
                    raise Cancelled(self.n_cached - start)
                self.engine._prefill(self, min(self.n_cached + chunk, len(self.tokens)))
        finally:
            self.stats.last_append_tokens = self.n_cached - start
            self.stats.prefill_tokens += self.n_cached - start
        if return_logits and self.last_logits is None:
            self._refeed_last()
        return None if not return_logits else self.last_logits.float()

    def generate(self, max_new_tokens: int, sampling: Sampling | None = None, stop_ids: Sequence[int] = (),
                 stop_strings: Sequence[str] = ()) -> Iterator[int]:
        """Yield up to `max_new_tokens` sampled tokens. Each token joins the history when it is sampled (and is fed
        to the model on the next step); a stop token / the token completing a stop string is yielded last and not
        kept. The engine's batched steps advance this generation whether or not its consumer has taken the tokens
        before (up to `Engine.run_ahead` waiting): a slow consumer neither holds back nor leaves the batch. Closing
        the iterator early keeps the tokens yielded so far; those sampled but not yielded leave the history."""
        self._check_idle()
        if not self.tokens:
            raise ValueError("generate() needs at least one token in the session")
        if self.last_logits is None and self.n_cached == len(self.tokens):
            self._refeed_last()
        req = _Request(self, max_new_tokens, sampling or Sampling(), frozenset(int(t) for t in stop_ids),
                       tuple(stop_strings))
        self._request = req
        try:
            while True:
                if self._request is not req:  # detached: a later operation on the session ended this generation
                    return
                if not req.out:
                    if req.done:
                        return
                    self.engine.step(first=req)
                    if not req.out and not req.done:  # would spin here forever, holding the engine's thread
                        raise RuntimeError("the engine's decode step did not advance this generation")
                    continue
                tok = req.out.popleft()
                is_stop = req.done and not req.out and req.stopped
                if not is_stop:
                    req.unread -= 1  # in the history since it was sampled (_emit)
                yield tok
                if is_stop:
                    return
        finally:
            if self._request is req:  # a stale iterator closed late must not end a newer generation's request
                self._end(req)
            else:
                req.done = True
                req.out.clear()

    def truncate(self, n_tokens: int) -> None:
        """Keep the first n_tokens of the history; pages past them go back to the pool."""
        self._check_idle()
        if not 0 <= n_tokens <= len(self.tokens):
            raise ValueError(f"truncate({n_tokens}) outside 0..{len(self.tokens)}")
        self._cut(n_tokens)

    def _cut(self, n_tokens: int) -> None:
        if n_tokens == len(self.tokens):
            return
        del self.tokens[n_tokens:]
        if n_tokens < self.n_cached:  # cached positions go; last_logits were those of position n_cached - 1
            self.n_cached = n_tokens
            self.last_logits = None
        # else only tokens never fed went (a generation's unread tail): last_logits still predict what follows the
        # kept history, so the next generate() samples from them instead of running the last position again
        keep = -(-self.n_cached // self.engine.page_size)
        for p in self.pages[keep:]:
            self.engine.pool.decref(p)
        del self.pages[keep:]

    def fork(self) -> "Session":
        """A copy-on-write branch: shares every page (refcounted); the first write into a shared page copies it."""
        self._check_idle()
        s = Session(self.engine)
        s.tokens = list(self.tokens)
        s.pages = list(self.pages)
        for p in s.pages:
            self.engine.pool.incref(p)
        s.n_cached = self.n_cached
        s.last_logits = None if self.last_logits is None else self.last_logits.clone()
        self.engine.sessions.add(s)
        return s

    def free(self) -> None:
        if self.freed:
            return
        if self._request is not None:  # its generation ends now: nothing more is yielded, even tokens already made
            self._end(self._request)
        for p in self.pages:
            self.engine.pool.decref(p)
        self.pages.clear()
        self.tokens.clear()
        self.n_cached = 0
        self.freed = True
        self.engine.sessions.discard(self)

    # ---- internals ----------------------------------------------------------------------------------------

    def _check_idle(self):
        if self.freed:
            raise RuntimeError("session was freed")
        r = self._request
        if r is not None:
            if not r.done:
                raise RuntimeError("session is generating; close its iterator first")
            # a finished generation whose iterator is still open: detach it (it yields nothing more; the history
            # holds what it yielded)
            self._end(r)

    def _end(self, req: "_Request") -> None:
        """End this session's generation `req`: tokens it sampled that no consumer took leave the history."""
        req.done = True
        req.out.clear()
        n, req.unread = req.unread, 0
        self._request = None
        if n and not self.freed:
            self._cut(len(self.tokens) - n)

    def _refeed_last(self):
        """Logits of the last position are unknown (after truncate/fork of a fresh state): run it again."""
        last = self.tokens[-1]
        self.truncate(len(self.tokens) - 1)
        self.tokens.append(last)
        self.engine._prefill(self, len(self.tokens))
        self.engine.n_refeeds += 1

    def _reserve(self, n_total: int) -> None:
        """Make pages writable for positions n_cached .. n_total-1 (allocate; copy shared pages on write)."""
        eng, ps = self.engine, self.engine.page_size
        need = -(-n_total // ps)
        # (a decode step launched ahead writes at n_cached + 1, possibly into a page past the one at n_cached)
        for i in range(self.n_cached // ps, min(need, len(self.pages))):
            if eng.pool.refs[self.pages[i]] > 1:
                old = self.pages[i]
                new = eng.pool.alloc()
                eng._copy_page(old, new)
                eng.pool.decref(old)
                self.pages[i] = new
        try:
            while len(self.pages) < need:
                self.pages.append(eng.pool.alloc())
        except OutOfPages:
            keep = -(-self.n_cached // ps)
            for p in self.pages[keep:]:
                eng.pool.decref(p)
            del self.pages[keep:]
            raise


@dataclass(eq=False)
class _Ahead:
    """A decode step launched ahead: for these requests, fed the ids `fed` (known once the step before is read)."""
    reqs: list
    handle: tuple
    fed: list | None = None


@dataclass(eq=False)
class _Request:
    session: Session
    max_new: int
    sampling: Sampling
    stop_ids: frozenset
    stop_strings: tuple
    out: deque = field(default_factory=deque)
    n_generated: int = 0
    done: bool = False
    stopped: bool = False  # ended on a stop token / string
    text: str = ""
    unread: int = 0  # tokens in `out` already in the session's history (all but a final stop token)


RUN_AHEAD = 32  # tokens a generation may run ahead of its consumer when the scheduler lets consumers lag


class Engine:
    def __init__(self, model: Llama, tokenizer=None, *, num_pages: int = 1024, page_size: int = 16,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 prefill_chunk: int = 512, cuda_graphs: bool = True, max_batch: int = 64,
                 max_seq_len: int | None = None, cpu_decode_threads: int | None = 1):
        """cpu_decode_threads: intra-op threads for CPU decode steps (None = leave torch's setting). A decode step
        is ~300 tiny ops; with 2 OpenMP threads on a shared 2-core machine each costs ~0.8 ms instead of ~40 us
        (measured), so decode runs single-threaded; prefill keeps torch's setting for its larger matmuls."""
        self.model = model
        self.cpu_decode_threads = cpu_decode_threads
        self.cfg = model.cfg
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device else model.embed.weight.device
        self.dtype = dtype or model.embed.weight.dtype
        self.page_size = page_size
        self.prefill_chunk = prefill_chunk
        self.pool = PagePool(num_pages)
        cfg = self.cfg
        # the whole KV pool, allocated once: [layers, 2 (k, v), pages, page_size, Hkv, D]
        self.kv_pool = torch.zeros(cfg.n_layers, 2, num_pages, page_size, cfg.n_kv_heads, cfg.head_dim,
                                   device=self.device, dtype=self.dtype)
        self.kv = [(self.kv_pool[i, 0], self.kv_pool[i, 1]) for i in range(cfg.n_layers)]
        self.sessions: set[Session] = set()
        self._generators: dict[int, torch.Generator] = {}
        self.max_seq_len = min(max_seq_len or model.max_seq_len, model.max_seq_len)
        self.graphs: DecodeGraphs | None = None
        self._want_graphs = cuda_graphs and self.device.type == "cuda"
        self.max_batch = max_batch
        self.n_graph_steps = self.n_eager_steps = self.n_ahead_hits = self.n_ahead_misses = 0
        self.n_refeeds = 0  # last positions run again because their logits were gone (Session._refeed_last)
        # appends of at most this many tokens run as one decode step of that many rows (a CUDA graph replay when
        # the graphs exist; see _prefill_as_step); 0 = always the prefill path
        self.graph_prefill_max = 32
        self.n_graph_prefills = 0
        self.lookahead = True  # greedy graph decode runs one step ahead (see _launch_ahead)
        # a generation keeps stepping with the batch while up to this many of its tokens wait for its consumer.
        # 1 (the default): only once the consumer took the last one, so a step leaves out every generation whose
        # consumer has not taken its token yet, and a scheduler that keeps the batch full must hand ready tokens
        # over before the next step (agent/worker.py "edf"). More (the "deadline" policy sets RUN_AHEAD): consumers
        # may take their tokens at their own pace without leaving the batch
        self.run_ahead = 1
        if self.device.type == "cuda":
            # cuBLAS may otherwise add split-K partial sums in bf16/fp16 (it picks split-K for small-M GEMMs such as
            # a short prefill: the 8B warm append runs `nvjet_..._splitK` kernels), i.e. an extra rounding whose
            # position depends on the matrix shape, which differs between our fused q|k|v and transformers' three
            # projections. fp32 reductions keep every GEMM at one rounding, as the Triton kernels do. (Global flag:
            # it also applies to other models in the process, and to a transformers reference run beside us.)
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
        self._spec = None

    def capture(self) -> "DecodeGraphs | None":
        """Capture the decode CUDA graphs now (otherwise done on the first decode step). Before the first capture
        the one-token projections pick cuBLAS or a Triton GEMV tile by timing both on this GPU (llm/tune.py)."""
        if self._want_graphs and self.graphs is None:
            if self.model.decode_gemv is None and ops.HAVE_FUSED_DECODE:
                from .tune import tune_decode_gemv

                try:
                    tune_decode_gemv(self.model, log=log.info)
                except Exception as e:  # noqa: BLE001 - tuning is an optimisation: never a reason not to start
                    log.warning("decode GEMV tuning failed (%s: %s); every projection stays on cuBLAS",
                                type(e).__name__, e)
                    self.model.decode_gemv = {}
            self.graphs = DecodeGraphs(self, self.max_batch, -(-self.max_seq_len // self.page_size))
        return self.graphs

    # ---- sessions -----------------------------------------------------------------------------------------

    def new_session(self, prefix: Session | None = None) -> Session:
        if prefix is not None:
            return prefix.fork()
        s = Session(self)
        self.sessions.add(s)
        return s

    def prefix(self, ids: Sequence[int]) -> Session:
        """Prefill a shared prefix (a system prompt) once; new_session(prefix=p) shares its pages."""
        p = self.new_session()
        p.append(ids)
        return p

    @property
    def free_pages(self) -> int:
        return self.pool.n_free

    # ---- model calls --------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _prefill(self, s: Session, end: int) -> None:
        """Run s.tokens[s.n_cached:end] through the model (one sequence, one chunk); sets s.last_logits."""
        start = s.n_cached
        if 1 < end - start <= self.graph_prefill_max and self._prefill_as_step(s, end):
            return
        s._reserve(end)
        ps, dev = self.page_size, self.device
        pos = torch.arange(start, end)
        pages = torch.tensor(s.pages, dtype=torch.int64)
        # positions and slots in int32, as the decode graphs stage them: the Triton RoPE/KV kernel is specialized on
        # their dtype, and an int64 variant that no warm-up made compiled on the LLM thread while serving (183 ms,
        # the first 64-caller run on a fresh H100, sessions_fresh64_5d5764b_h100.json)
        slots = (pages[pos // ps] * ps + pos % ps).to(torch.int32)
        pos = pos.to(torch.int32)
        meta = AttnMeta(slot_mapping=slots.to(dev), block_table=pages.to(torch.int32)[None].to(dev),
                        seq_lens=torch.tensor([end], dtype=torch.int32, device=dev), prefill=[(end - start, end)],
                        logits_idx=torch.tensor([end - start - 1], device=dev))
        toks = torch.tensor(s.tokens[start:end], dtype=torch.int64, device=dev)
        logits = self.model(toks, pos.to(dev), meta, self.kv)
        s.n_cached = end
        s.last_logits = logits[0]

    def _prefill_as_step(self, s: Session, end: int) -> bool:
        """A short append (the words of a pause, the tokens that close a user message) as one decode step of
        T = end - start rows of the same sequence: row i feeds token start+i at its position, writes its K/V and
        attends over the first start+i+1 positions (seq_len), so the rows are causal among themselves as in a
        prefill — and the step is the CUDA graph already captured for batch bucket T. Eager prefill of a few
        tokens costs ~30 ms of host time on 8B (hundreds of launches) for ~6 ms of GPU work. The attention reads
        the context once per row: fine for tens of rows. False when the graphs do not apply."""
        graphs = self.capture()
        start, T = s.n_cached, end - s.n_cached
        if graphs is None or T > graphs.buckets[-1] or end > self.max_seq_len:
            return False
        if self._spec is not None:  # a decode step queued ahead is fed from the ids this step would overwrite
            graphs.harvest(self._spec.handle)
            self._spec = None
            self.n_ahead_misses += 1
        s._reserve(end)
        logits, _ = graphs.harvest(graphs.launch([s.pages] * T, list(range(start, end)), s.tokens[start:end]))
        s.n_cached = end
        s.last_logits = logits[T - 1]
        self.n_graph_prefills += 1
        return True

    @torch.inference_mode()
    def step(self, first: "_Request | None" = None) -> int:
        """One decode step for every generating session with fewer than `run_ahead` tokens waiting for their
        consumer: feed its pending token, sample the next one. `first`: the request whose consumer waits for this
        step (always in it). Returns how many sessions advanced."""
        reqs: list[_Request] = []
        for s in list(self.sessions):
            r = s._request
            if r is None or r.done or len(r.out) >= max(1, self.run_ahead):
                continue
            if s.n_cached == len(s.tokens):  # nothing pending: sample from the logits the prompt left
                self._emit(r, self._sample(s.last_logits[None], [r])[0])
                continue
            reqs.append(r)
        cap = self.graphs.buckets[-1] if self.graphs is not None else self.max_batch
        if len(reqs) > cap:  # the rest step next time (a graph step, not one eager step of the whole batch):
            # `first`, then the consumers with nothing to take, then those with tokens waiting (same order kept
            # otherwise: a step launched ahead is only used for the same requests in the same order)
            reqs.sort(key=lambda r: (r is not first, bool(r.out)))
            reqs = reqs[:cap]
        if reqs:
            self._decode(reqs)
        return len(reqs)

    def _decode(self, reqs: list[_Request]) -> None:
        dev = self.device
        ss = [r.session for r in reqs]
        graphs = self.capture()
        spec, self._spec = self._spec, None
        if spec is not None:
            # the step launched ahead (see _launch_ahead) is valid if the same requests are stepping and each fed
            # token is the one its consumer took
            if spec.reqs == reqs and all(len(s.tokens) == s.n_cached + 1 and s.tokens[-1] == t
                                         for s, t in zip(ss, spec.fed)):
                self.n_graph_steps += 1
                self.n_ahead_hits += 1
                # queue the step after it before reading it back: the GPU never waits for the host
                nxt = self._launch_ahead(reqs, offset=1)
                logits, ids = graphs.harvest(spec.handle)
                if nxt is not None and nxt.fed is None:
                    nxt.fed = ids
                self._finish_decode(reqs, ss, logits, ids)
                return
            self.n_ahead_misses += 1  # its KV writes sit past each session's n_cached: harmless
        for s in ss:
            s._reserve(s.n_cached + 1)
        pos = [s.n_cached for s in ss]
        if graphs is not None and len(ss) <= graphs.buckets[-1] and max(pos) < self.max_seq_len:
            greedy = all(r.sampling.temperature == 0 for r in reqs)
            logits, ids = graphs.harvest(graphs.launch([s.pages for s in ss], pos,
                                                       [s.tokens[s.n_cached] for s in ss]))
            if not greedy:
                ids = self._sample(logits, reqs)
            self.n_graph_steps += 1
            self._finish_decode(reqs, ss, logits, ids)
            if greedy:
                nxt = self._launch_ahead(reqs, offset=0)
                if nxt is not None and nxt.fed is None:
                    nxt.fed = ids
            return
        self.n_eager_steps += 1
        threads = torch.get_num_threads()
        if dev.type == "cpu" and self.cpu_decode_threads and self.cpu_decode_threads != threads:
            torch.set_num_threads(self.cpu_decode_threads)
            try:
                return self._decode_eager(reqs, ss, pos)
            finally:
                torch.set_num_threads(threads)
        self._decode_eager(reqs, ss, pos)

    def _decode_eager(self, reqs, ss, pos) -> None:
        ps, dev = self.page_size, self.device
        slots = [s.pages[p // ps] * ps + p % ps for s, p in zip(ss, pos)]
        width = max(len(s.pages) for s in ss)
        table = [s.pages + [0] * (width - len(s.pages)) for s in ss]
        meta = AttnMeta(slot_mapping=torch.tensor(slots, dtype=torch.int32, device=dev),  # int32: see _prefill
                        block_table=torch.tensor(table, dtype=torch.int32, device=dev),
                        seq_lens=torch.tensor([p + 1 for p in pos], dtype=torch.int32, device=dev))
        toks = torch.tensor([s.tokens[s.n_cached] for s in ss], device=dev)
        logits = self.model(toks, torch.tensor(pos, dtype=torch.int32, device=dev), meta, self.kv)  # [B, vocab]
        ids = self._sample(logits, reqs)
        self._finish_decode(reqs, ss, logits, ids)

    def _launch_ahead(self, reqs: list[_Request], offset: int) -> "_Ahead | None":
        """Greedy CUDA-graph decode: launch a step fed by the argmax ids the previous graph step left on the GPU,
        so that the GPU computes it while the host hands tokens to their consumers. offset=1: the previous step
        is still in flight (not yet harvested: each session's n_cached is one short), so two steps are queued and
        the GPU does not wait for the host between steps; offset=0: the previous step was harvested. The next
        step() uses the result if nothing changed (same requests, each consumer took its token); otherwise it is
        dropped (its KV writes sit past n_cached and are overwritten). Not launched when a request is (or, after
        the step in flight, will be) done. A scripted request is fed its script's next token instead of the argmax."""
        if not self.lookahead or any(r.done or r.n_generated + offset >= r.max_new for r in reqs):
            return None
        fed = None  # greedy: fed by the argmax ids on the GPU
        scripted = [r.sampling.script for r in reqs]
        if any(scripted):
            # a scripted reply (benchmarks) feeds its next token, known in advance: the token the step before
            # emits (offset 1: still in flight) or emitted (offset 0)
            k = [r.n_generated - 1 + offset for r in reqs]
            if not all(scripted) or any(not 0 <= i < len(sc) for i, sc in zip(k, scripted)):
                return None
            fed = [sc[i] for i, sc in zip(k, scripted)]
        ss = [r.session for r in reqs]
        if max(s.n_cached for s in ss) + offset + 1 >= self.max_seq_len:
            return None
        try:
            for s in ss:
                s._reserve(s.n_cached + offset + 1)
        except OutOfPages:
            return None
        handle = self.graphs.launch([s.pages for s in ss], [s.n_cached + offset for s in ss], fed)
        self._spec = _Ahead(list(reqs), handle, fed)
        return self._spec

    def _finish_decode(self, reqs, ss, logits, ids) -> None:
        for i, (r, s, tok) in enumerate(zip(reqs, ss, ids)):
            s.n_cached += 1
            s.last_logits = logits[i]  # for a later append(return_logits=True) / generate
            s.stats.decode_tokens += 1
            self._emit(r, tok)

    def _sample(self, logits: Tensor, reqs: list[_Request]) -> list[int]:
        if all(r.sampling.temperature == 0 for r in reqs):
            return logits.argmax(-1).tolist()
        dev = logits.device
        temp = torch.tensor([r.sampling.temperature for r in reqs], device=dev)
        top_p = torch.tensor([r.sampling.top_p for r in reqs], device=dev)
        seed = reqs[0].sampling.seed
        gen = None
        if seed is not None:
            gen = self._generators.get(seed)
            if gen is None:
                gen = self._generators[seed] = torch.Generator(device=dev).manual_seed(seed)
        return ops.sample(logits.float(), temp, top_p, gen).tolist()

    def _emit(self, r: _Request, tok: int) -> None:
        script = r.sampling.script
        if script:
            tok = script[min(r.n_generated, len(script) - 1)]
            if r.n_generated + 1 >= len(script):
                r.done = True
        r.n_generated += 1
        r.out.append(tok)
        if tok in r.stop_ids:
            r.done = r.stopped = True
        elif r.stop_strings:
            if self.tokenizer is None:
                raise ValueError("stop_strings need an Engine(tokenizer=...)")
            r.text += self.tokenizer.decode([tok])
            if any(x in r.text for x in r.stop_strings):
                r.done = r.stopped = True
        if r.n_generated >= r.max_new:
            r.done = True
        if not r.stopped:  # joins the history now (fed on the next step); a stop token is yielded, never kept
            r.session.tokens.append(tok)
            r.unread += 1

    @torch.inference_mode()
    def _copy_page(self, src: int, dst: int) -> None:
        self.kv_pool[:, :, dst].copy_(self.kv_pool[:, :, src])


class DecodeGraphs:
    """CUDA graphs of one decode step (forward + greedy argmax), one per batch-size bucket, sharing one memory
    pool and one set of static input buffers. Rows past the live batch are padding: slot -1 (no KV write) and
    seq_len 0 (attention output 0). Per step the host fills a pinned staging buffer, uploads it with one
    non-blocking copy and replays; right after the replay the logits are copied out and the token ids copied to
    pinned host memory behind an event, so a second step can be queued before the first is read back (`launch`,
    then `harvest`). Two staging / read-back buffers alternate: a buffer is refilled only after a later launch
    was harvested, which orders its earlier upload and read-back before the refill."""

    BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

    @torch.inference_mode()
    def __init__(self, engine: Engine, max_batch: int, max_pages: int, capture: bool = True):
        """capture=False runs the same static-buffer step eagerly (tests the padding logic on CPU)."""
        dev, model = engine.device, engine.model
        self.buckets = [b for b in self.BUCKETS if b < max_batch] + [max_batch]
        B, self.max_pages, self._page_size = max_batch, max_pages, engine.page_size
        # staging: rows 0..3 = tokens, positions, slots, seq_lens; then the block table [B, max_pages]
        # (all int32: the kernels and the embedding take int32 indices, so no conversion runs in the graph)
        pin = dev.type == "cuda"
        self.hosts = [torch.zeros(4 * B + B * max_pages, dtype=torch.int32, pin_memory=pin) for _ in range(2)]
        self.ids_host = [torch.zeros(B, dtype=torch.int64, pin_memory=pin) for _ in range(2)]
        self.events = [torch.cuda.Event() for _ in range(2)] if pin else [None, None]
        self._slot = 0
        self.dev = torch.zeros_like(self.hosts[0], device=dev)
        self.tokens, self.positions, self.slots, self.seq_lens = self.dev[: 4 * B].view(4, B)
        self.block_table = self.dev[4 * B:].view(B, max_pages)
        self._fill(self.hosts[0], [], [], [])
        self.dev.copy_(self.hosts[0])
        self.graphs, self.logits, self.ids = {}, {}, {}
        pool = None
        self.eager = {} if capture else {b: self._forward_fn(model, engine.kv, b) for b in self.buckets}
        # one stream of our own for the warm-ups and the captures: a graph keeps the cuBLAS workspace of the stream
        # it was captured on, and torch.cuda.graph's default capture stream is one per process. The ASR's graphs
        # captured there too shared this workspace; replayed at once from two threads under load, their GEMMs
        # corrupted each other's results (bench/graph_streams.py), the likely cause of the GPU that stopped
        # finishing its work at 64-96 callers (perf-notes, eleventh session)
        side = torch.cuda.Stream() if capture else None
        for b in reversed(self.buckets if capture else []):  # largest first; the smaller ones reuse its pool
            fwd = self._forward_fn(model, engine.kv, b)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    fwd()  # compiles the Triton kernels, warms cuBLAS
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool, stream=side):
                self.logits[b], self.ids[b] = fwd()
            pool = g.pool()
            self.graphs[b] = g
        if capture:
            torch.cuda.synchronize()

    def _forward_fn(self, model, kv, b):
        def fwd():
            meta = AttnMeta(slot_mapping=self.slots[:b], block_table=self.block_table[:b],
                            seq_lens=self.seq_lens[:b])
            logits = model(self.tokens[:b], self.positions[:b], meta, kv)  # [b, vocab]
            ids = ops.argmax(logits, logits.is_cuda and "argmax" in model.decode_fusions)
            self.tokens[:b].copy_(ids)  # the greedy tokens feed the next step without a host round trip
            return logits, ids

        return fwd

    def _fill(self, host, pages_list, positions, tokens, ps: int = 0):
        """Write one step's inputs into a staging buffer; rows past the batch become padding (tokens=None leaves
        the token row alone: the step is fed by the ids already on the GPU)."""
        B, n = self.buckets[-1], len(positions)
        h = host.numpy()
        rows = h[: 4 * B].reshape(4, B)
        table = h[4 * B:].reshape(B, self.max_pages)
        if tokens is not None:
            rows[0, :n] = tokens
            rows[0, n:] = 0
        rows[1, :n] = positions
        rows[2, :n] = [pages[p // ps] * ps + p % ps for pages, p in zip(pages_list, positions)] if n else []
        rows[3, :n] = [p + 1 for p in positions]
        rows[1, n:] = 0
        rows[2, n:] = -1
        rows[3, n:] = 0
        for i, pages in enumerate(pages_list):
            table[i, : len(pages)] = pages

    def launch(self, pages_list, positions, tokens=None) -> tuple:
        """Queue one step (tokens None: fed by the last step's argmax, still on the GPU). -> handle for harvest."""
        n, B = len(positions), self.buckets[-1]
        b = next(x for x in self.buckets if x >= n)
        slot = self._slot
        self._slot ^= 1
        host = self.hosts[slot]
        self._fill(host, pages_list, positions, tokens, self._page_size)
        first = 0 if tokens is not None else B
        width = max(len(p) for p in pages_list)
        # upload the 4 rows (3 when the tokens stay) and only the used part of the block table
        self.dev[first: 4 * B].copy_(host[first: 4 * B], non_blocking=True)
        self.block_table[:n, :width].copy_(host[4 * B:].view(-1, self.max_pages)[:n, :width], non_blocking=True)
        if self.eager:
            self.logits[b], self.ids[b] = self.eager[b]()
        else:
            self.graphs[b].replay()
        logits = self.logits[b][:n].clone()  # the next replay overwrites the static outputs
        self.ids_host[slot][:n].copy_(self.ids[b][:n], non_blocking=True)
        if self.events[slot] is not None:
            self.events[slot].record()
        return slot, n, logits

    def harvest(self, handle):
        """Wait for a launched step: -> (logits [n, vocab], greedy ids list)."""
        slot, n, logits = handle
        if self.events[slot] is not None:
            self.events[slot].synchronize()
        return logits, self.ids_host[slot][:n].tolist()
