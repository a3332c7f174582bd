"""Batched greedy decoding for asr/whisper.py: tokenizer, encoder input policy, prefill + KV-cached steps,
optional CUDA graphs for the decoder step, no-speech probability.

Decoding settings follow faster-whisper's greedy path without timestamps (beam 1, temperature 0, no
fallback): prompt = sot sequence (+ language, task for multilingual models) + <|notimestamps|> (+ forced
prefix tokens), `suppress_ids` from config.json at every step, `suppress_ids_begin` at the first sampled step,
special tokens other than <|endoftext|> never sampled, no-speech probability = P(<|nocaptions|>) after <|sot|>.
A hypothesis is treated as silence when no_speech_prob > 0.6 and avg_logprob < -1 (faster-whisper's rule).
"""

from __future__ import annotations

import logging
import time

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .whisper import KVCache, Whisper

log = logging.getLogger(__name__)

FRAMES_30S = 3000


def small_to_device(data, device: torch.device) -> torch.Tensor:
    """A small host list (token ids, lengths) as a tensor on `device`, without stalling the calling thread. A copy
    from ordinary host memory makes the thread wait until everything already queued on its stream has run (CUDA
    synchronizes the stream before a pageable copy; torch's blocking copy waits for it): in recognize() that was the
    encoder's kernels before the prefill could be queued, and the prefill's before the decode loop. From pinned
    memory the copy is queued in stream order like a kernel (torch's pinned-memory cache keeps the buffer until the
    copy has run)."""
    t = torch.tensor(data)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class WhisperTokenizer:
    def __init__(self, model_dir: str | Path | None = None, n_vocab: int = 51865, multilingual: bool = True):
        self.tok = None
        if model_dir is not None:
            from tokenizers import Tokenizer

            self.tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
            tid = self.tok.token_to_id
            self.eot = tid("<|endoftext|>")
            self.sot = tid("<|startoftranscript|>")
            self.no_timestamps = tid("<|notimestamps|>")
            self.no_speech = tid("<|nospeech|>") or tid("<|nocaptions|>")
            self.multilingual = n_vocab >= 51865
            lang, task = tid("<|en|>"), tid("<|transcribe|>")
        else:  # synthetic models: the standard layout of the published vocabularies
            self.multilingual = multilingual
            self.eot = 50257 if multilingual else 50256
            self.sot = self.eot + 1
            lang, task = self.sot + 1, self.eot + 102
            self.no_timestamps = self.eot + 106
            self.no_speech = self.eot + 105
            if n_vocab == 51866:  # large-v3: one more language shifts the task/special tokens by one
                task, self.no_timestamps, self.no_speech = task + 1, self.no_timestamps + 1, self.no_speech + 1
        self.sot_sequence = [self.sot, lang, task] if self.multilingual else [self.sot]
        self.n_vocab = n_vocab

    @property
    def prompt(self) -> list[int]:
        return self.sot_sequence + [self.no_timestamps]

    def decode(self, ids: list[int]) -> str:
        ids = [i for i in ids if i < self.eot]
        return self.tok.decode(ids).strip() if self.tok else " ".join(map(str, ids))

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids


@dataclass
class DecodeOptions:
    max_new_tokens: int = 128
    suppress_ids: list[int] = field(default_factory=list)
    suppress_ids_begin: list[int] = field(default_factory=list)
    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    # encoder input: "pad30" pads features with zeros to 3000 frames (what faster-whisper does);
    # "trunc" feeds only the utterance's frames (+ pad_frames of zeros, rounded up to bucket_frames)
    window: str = "pad30"
    pad_frames: int = 100
    bucket_frames: int = 100


@dataclass
class Hypothesis:
    tokens: list[int]  # sampled tokens after the prompt (forced prefix included), no <|endoftext|>
    avg_logprob: float
    no_speech_prob: float

    @property
    def is_silence(self) -> bool:
        return self.no_speech_prob > 0.6 and self.avg_logprob < -1.0


def encoder_frames(n_frames: int, opts: DecodeOptions, window: str | None = None) -> int:
    """Number of mel frames the encoder is fed for an utterance of n_frames (even, <= 3000)."""
    if (window or opts.window) == "pad30":
        return FRAMES_30S
    n = n_frames + opts.pad_frames
    n = -(-n // opts.bucket_frames) * opts.bucket_frames
    return min(FRAMES_30S, n + (n % 2))


def batch_features(mels: list[torch.Tensor], opts: DecodeOptions, window: str | None = None) -> torch.Tensor:
    """Pad/trim a list of (n_mels, F_i) to one (B, n_mels, F) batch with zero frames, as pad_or_trim does."""
    f = max(encoder_frames(m.shape[-1], opts, window) for m in mels)
    out = mels[0].new_zeros(len(mels), mels[0].shape[0], f)
    for i, m in enumerate(mels):
        n = min(m.shape[-1], f)
        out[i, :, :n] = m[:, :n]
    return out


def capture(fn, share_pool_with=None, warmups: int = 1, stream=None):
    """Run fn `warmups` times on a side stream (kernel loading, cuBLAS/cuDNN algorithm choice), then capture it in a
    CUDA graph on that stream, in the memory pool of graph `share_pool_with` if given -> (graph, fn's output).

    `stream` should be the caller's own: torch keys the cuBLAS workspace by stream, and a graph keeps the workspace
    of the stream it was captured on. Graphs of two components captured on one stream (torch.cuda.graph's default
    capture stream is one per process) share one workspace: replayed at once from two threads their GEMMs corrupt
    each other's results (measured: bench/graph_streams.py), and that is the likely cause of the GPU that stopped
    finishing its work under load (docs/perf-notes.md, eleventh session)."""
    s = torch.cuda.Stream() if stream is None else stream
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        for _ in range(warmups):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    pool = share_pool_with.pool() if share_pool_with is not None else None
    with torch.cuda.graph(graph, pool=pool, stream=s), torch.no_grad():
        out = fn()
    return graph, out


def first_graph(*groups: dict):
    """The CUDA graph of the first entry of the first non-empty group ({bucket: (..., graph)}), whose memory pool a
    new capture shares; None when every group is empty."""
    for g in groups:
        if g:
            return next(iter(g.values()))[-1]
    return None


class GreedyDecoder:
    """Greedy decoding of up to `max_batch` rows at once. The per-token step can be captured in CUDA graphs
    (one per batch bucket, sharing one memory pool) — the model itself knows nothing about graphs."""

    BUCKETS = (1, 2, 4, 8, 16, 32, 64)

    def __init__(self, model: Whisper, tokenizer: WhisperTokenizer, opts: DecodeOptions, max_batch: int = 1,
                 cuda_graphs: bool = False, chunked: bool = False):
        self.model, self.tok, self.opts = model, tokenizer, opts
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.cache = model.new_cache(max_batch)
        v = model.dims.n_vocab
        # additive masks: every special token except <|endoftext|> is never sampled
        sup = torch.zeros(v, device=self.device)
        sup[tokenizer.eot + 1:] = float("-inf")
        sup[[i for i in opts.suppress_ids if 0 <= i < v]] = float("-inf")
        begin = sup.clone()
        begin[[i for i in opts.suppress_ids_begin if 0 <= i < v]] = float("-inf")
        self.suppress, self.suppress_begin = sup, begin
        self.graphs: dict[int, tuple] = {}
        self.enc_graphs: dict[int, tuple] = {}  # 30 s window: encoder + cross k/v projection, one graph per bucket
        self.chunk_graphs: dict[int, tuple] = {}  # CHUNK greedy tokens (choice + decoder step) per replay
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        # greedy decoding in chunks of CHUNK tokens per host round trip (see _chunk): graphed on CUDA, eager on the
        # CPU (where the tests check it against the token-at-a-time loop). Opt-in until measured on a GPU.
        self.chunked = chunked
        self.no_eot = torch.zeros(v, device=self.device)  # added to the masks: -inf at EOT when stop_at_eot=False
        # every graph of this decoder is captured on this stream: its own cuBLAS workspace (see capture)
        self.capture_stream = torch.cuda.Stream(device=self.device) if self.use_graphs else None

    # ---- the hot step: a pure function of (tokens, pos) over the rows' cache ----
    def _step(self, cache: KVCache, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.model.decoder(tokens, pos, cache)[:, -1].float()  # (B, V)

    def _graphed_step(self, b: int):
        bucket = self._bucket(b)
        if bucket not in self.graphs:
            cache = self.cache.narrow(bucket)
            tokens = torch.zeros(bucket, 1, dtype=torch.long, device=self.device)
            pos = torch.zeros(bucket, 1, dtype=torch.long, device=self.device)
            graph, logits = capture(lambda: self._step(cache, tokens, pos), first_graph(self.graphs), warmups=2,
                                   stream=self.capture_stream)
            self.graphs[bucket] = (tokens, pos, logits, bucket, graph)
        return self.graphs[bucket]

    def step(self, n: int, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits (n, V) for one new token per row; rows 0..n-1 of the cache."""
        if not self.use_graphs:
            return self._step(self.cache.narrow(n), tokens, pos)
        t, p, logits, bucket, graph = self._graphed_step(n)
        t[:n].copy_(tokens)
        p[:n].copy_(pos)
        if bucket > n:  # idle rows write harmlessly at position 0 of their own (unused) cache rows
            p[n:].zero_()
        graph.replay()
        return logits[:n]

    # ---- chunked greedy decoding: CHUNK tokens per replay, one host read per chunk ----
    CHUNK = 8

    def _chunk_state(self, b: int) -> dict:
        """Static per-bucket state of the chunked loop (the graph reads and updates these in place)."""
        dev, v, ctx = self.device, self.model.dims.n_vocab, self.model.dims.n_text_ctx
        long = dict(dtype=torch.long, device=dev)
        return {"last": torch.zeros(b, v, device=dev), "out": torch.zeros(b, ctx + self.CHUNK, **long),
                "sum_lp": torch.zeros(b, device=dev), "done": torch.ones(b, dtype=torch.bool, device=dev),
                "cur": torch.zeros(b, **long), "cap": torch.zeros(b, **long), "t": torch.zeros(1, **long)}

    def _chunk(self, cache: KVCache, st: dict) -> None:
        """CHUNK greedy tokens for every row of `st`, all on the device: the same choice as decode()'s loop (suppress
        masks, EOT, log-prob sum, per-row caps), then the decoder step for the chosen token. A row that is done keeps
        emitting EOT; a chunk may run past the last useful token (decode() reads only what it needs)."""
        eot, b = self.tok.eot, st["out"].shape[0]
        max_pos = self.model.dims.n_text_ctx - 1
        last = st["last"]
        for _ in range(self.CHUNK):
            t = st["t"]
            mask = torch.where(t == 0, self.suppress_begin, self.suppress) + self.no_eot
            masked = last + mask
            nxt = masked.argmax(-1)
            lp = masked.log_softmax(-1).gather(1, nxt[:, None])[:, 0]
            st["sum_lp"].add_(torch.where(st["done"], 0.0, lp))
            nxt = torch.where(st["done"], eot, nxt)
            st["out"].scatter_(1, t.view(1, 1).expand(b, 1), nxt[:, None])
            st["done"].logical_or_((nxt == eot) | (st["cap"] <= t + 1))
            t.add_(1)
            last = self._step(cache, nxt[:, None], st["cur"].clamp(max=max_pos)[:, None])
            st["cur"].add_(1)
        st["last"].copy_(last)

    def _graphed_chunk(self, b: int):
        bucket = self._bucket(b)
        if bucket not in self.chunk_graphs:
            cache, st = self.cache.narrow(bucket), self._chunk_state(bucket)
            graph, _ = capture(lambda: self._chunk(cache, st), first_graph(self.chunk_graphs, self.graphs),
                               stream=self.capture_stream)
            self.chunk_graphs[bucket] = (st, graph)
        return self.chunk_graphs[bucket]

    def _decode_chunked(self, n: int, last: torch.Tensor, lens: torch.Tensor, cap: torch.Tensor, limit: int,
                        stop_at_eot: bool):
        """Greedy tokens for rows 0..n-1 from the prefill's last logits, CHUNK per replay (graphed on CUDA) with one
        host read of `done` per chunk -> (tokens (n, steps), sum_lp (n,)) on the device."""
        self.no_eot.zero_()
        if not stop_at_eot:
            self.no_eot[self.tok.eot] = float("-inf")
        if self.use_graphs:
            st, graph = self._graphed_chunk(n)
            run = graph.replay
        else:
            st, cache = self._chunk_state(n), self.cache.narrow(n)

            def run():
                self._chunk(cache, st)
        st["last"][:n].copy_(last)
        st["sum_lp"].zero_()
        st["done"].fill_(True)  # rows n..bucket-1 are idle: done from the start
        st["done"][:n] = False
        st["cur"].zero_()
        st["cur"][:n].copy_(lens)
        st["cap"][:n].copy_(cap)
        st["t"].zero_()
        steps = 0
        while steps < limit:
            run()
            steps += self.CHUNK
            if stop_at_eot and bool(st["done"][:n].all()):
                break
        steps = min(steps, limit)
        return st["out"][:n, :steps], st["sum_lp"][:n]

    def _bucket(self, b: int) -> int:
        return min(next(x for x in self.BUCKETS if x >= b), self.cache.batch)

    def _encode(self, cache: KVCache, mel: torch.Tensor) -> torch.Tensor:
        audio = self.model.encoder(mel)
        valid = torch.ones(audio.shape[:2], dtype=torch.bool, device=self.device)
        self.model.decoder.set_cross(cache, audio, valid)
        return audio

    def _graphed_encoder(self, b: int):
        """The encoder over the 30 s window (fixed shape) as one CUDA graph per batch bucket: one replay instead of
        ~150 kernel launches from Python, which under load (other threads busy in Python and in CUDA calls) cost
        ~50 ms of host time per call on the H200 against ~6 ms of GPU work (bench/results/sessions_probe32_*)."""
        bucket = self._bucket(b)
        if bucket not in self.enc_graphs:
            cache = self.cache.narrow(bucket)
            mel = torch.zeros(bucket, self.model.dims.n_mels, FRAMES_30S, dtype=self.dtype, device=self.device)
            graph, audio = capture(lambda: self._encode(cache, mel), first_graph(self.enc_graphs),
                                   stream=self.capture_stream)
            self.enc_graphs[bucket] = (mel, audio, graph)
        return self.enc_graphs[bucket]

    @torch.no_grad()
    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, F) features -> encoder output, stored as the cross k/v of cache rows 0..B-1. The 30 s window
        runs as a CUDA graph when graphs are on (rows B..bucket-1 are encoded too, into unused cache rows)."""
        b = mel.shape[0]
        if self.use_graphs and mel.shape[-1] == FRAMES_30S:
            buf, audio, graph = self._graphed_encoder(b)
            buf[:b].copy_(mel)
            graph.replay()
            return audio[:b]
        return self._encode(self.cache.narrow(b), mel.to(self.dtype))

    @torch.no_grad()
    def decode(self, prefixes: list[list[int]] | None = None, n: int | None = None, max_new: int | None = None,
               stop_at_eot: bool = True, limits: list[int] | None = None) -> list[Hypothesis]:
        """Greedy-decode rows 0..n-1 (after encode()). prefixes[i]: forced text tokens after the prompt;
        limits[i]: at most this many sampled tokens for row i (a row that reaches it ends as if by EOT).
        With stop_at_eot=False every row generates exactly max_new tokens (benchmarks on random weights)."""
        prefixes = prefixes or [[] for _ in range(n or 1)]
        n = len(prefixes)
        max_new = max_new or self.opts.max_new_tokens
        if self.chunked and self.use_graphs:
            try:  # a first capture runs the chunk once: before the prefill writes these cache rows
                self._graphed_chunk(n)
            except Exception as e:  # noqa: BLE001 - an optimisation: fall back to one graphed step per token
                log.warning("chunked ASR decode could not be captured (%s: %s); decoding one token per step",
                            type(e).__name__, e)
                self.chunked = False
        logits, lens, width = self._prefill(prefixes)  # (n, width, V)
        sot_at = self.tok.sot_sequence.index(self.tok.sot)
        no_speech = logits[:, sot_at].softmax(-1)[:, self.tok.no_speech]
        last = logits[torch.arange(n, device=self.device), lens - 1]  # (n, V)
        cap = small_to_device(limits if limits else [max_new] * n, self.device)
        limit = min(max_new, self.model.dims.n_text_ctx - width)
        if self.chunked:
            out, sum_lp = self._decode_chunked(n, last, lens, cap, limit, stop_at_eot)
            return self._hypotheses(prefixes, out, sum_lp, no_speech)
        out = torch.empty(n, max_new, dtype=torch.long, device=self.device)
        sum_lp = torch.zeros(n, device=self.device)
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        cur = lens.clone()
        steps = 0
        for t in range(limit):
            masked = last + (self.suppress_begin if t == 0 else self.suppress)
            if not stop_at_eot:
                masked[:, self.tok.eot] = float("-inf")
            nxt = masked.argmax(-1)
            lp = masked.log_softmax(-1).gather(1, nxt[:, None])[:, 0]
            sum_lp += torch.where(done, 0.0, lp)
            nxt = torch.where(done, self.tok.eot, nxt)
            out[:, t] = nxt
            done |= (nxt == self.tok.eot) | (cap <= t + 1)
            steps = t + 1
            if stop_at_eot and bool(done.all()):
                break
            if t + 1 < limit:
                last = self.step(n, nxt[:, None], cur[:, None])
                cur = cur + 1
        return self._hypotheses(prefixes, out[:, :steps], sum_lp, no_speech)

    @torch.no_grad()
    def end_probability(self, texts: list[list[int]]) -> list[float]:
        """P(<|endoftext|>) right after each row's text tokens (rows 0..n-1, after encode()): how sure the model is
        that the words stop there. One decoder prefill of prompt + text (the rows' self-attention cache is
        overwritten, the encoder's cross-attention is kept)."""
        logits, lens, _ = self._prefill(texts)
        last = logits[torch.arange(len(texts), device=self.device), lens - 1] + self.suppress
        return last.softmax(-1)[:, self.tok.eot].tolist()

    def _prefill(self, prefixes: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The decoder over prompt + prefix for rows 0..n-1 (their self-attention cache rows written) ->
        (float logits (n, width, V), lengths (n,), width). The width is rounded up to a multiple of 16: few distinct
        shapes, so warm-up covers them all (padding positions are written to the cache but masked, and overwritten
        by the following steps)."""
        n, prompt = len(prefixes), self.tok.prompt
        seqs = [prompt + list(p) for p in prefixes]
        width = min(-(-max(len(s) for s in seqs) // 16) * 16, self.model.dims.n_text_ctx - 1)
        seqs = [s[-width:] for s in seqs]  # (only a sequence longer than the context is cut)
        tokens = small_to_device([s + [self.tok.eot] * (width - len(s)) for s in seqs], self.device)  # (n, width)
        lens = small_to_device([len(s) for s in seqs], self.device)
        pos = torch.arange(width, device=self.device).expand(n, width).contiguous()
        return self.model.decoder(tokens, pos, self.cache.narrow(n)).float(), lens, width

    def _hypotheses(self, prefixes, out, sum_lp, no_speech) -> list[Hypothesis]:
        self.launched_at = time.perf_counter()  # every step is queued; the read-back below waits for them
        out, sum_lp, no_speech = out.tolist(), sum_lp.tolist(), no_speech.tolist()
        hyps = []
        for i in range(len(prefixes)):
            toks = out[i]
            k = toks.index(self.tok.eot) if self.tok.eot in toks else len(toks)
            # faster-whisper: cumulative logprob (with <|endoftext|>) / (len + 1)
            hyps.append(Hypothesis(list(prefixes[i]) + toks[:k], sum_lp[i] / (k + 1), no_speech[i]))
        return hyps


def strip_loop(tokens: list[int], min_repeats: int = 3, max_period: int = 16) -> list[int]:
    """Cut a trailing loop (the same 1..max_period tokens repeated >= min_repeats times) back to one copy:
    Whisper fed a partial utterance sometimes repeats its last phrase until the token limit."""
    n = len(tokens)
    for period in range(1, max_period + 1):
        reps = 1
        while n - (reps + 1) * period >= 0 and \
                tokens[n - (reps + 1) * period:n - reps * period] == tokens[n - period:n]:
            reps += 1
        if reps >= min_repeats:
            return tokens[:n - (reps - 1) * period]
    return tokens
