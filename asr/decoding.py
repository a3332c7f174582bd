"""Batched greedy decoding for asr/whisper.py: tokenizer, encoder input policy, prefill + KV-cached steps,
optional CUDA graphs for the decoder step, no-speech probability.

Decoding settings follow faster-whisper's greedy path without timestamps (beam 1, temperature 0, no
fallback): prompt = sot sequence (+ language, task for multilingual models) + <|notimestamps|> (+ forced
prefix tokens), `suppress_ids` from config.json at every step, `suppress_ids_begin` at the first sampled step,
special tokens other than <|endoftext|> never sampled, no-speech probability = P(<|nocaptions|>) after <|sot|>.
A hypothesis is treated as silence when no_speech_prob > 0.6 and avg_logprob < -1 (faster-whisper's rule).
"""

from __future__ import annotations

import time

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .whisper import KVCache, Whisper

FRAMES_30S = 3000


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


def capture(fn, share_pool_with=None, warmups: int = 1):
    """Run fn `warmups` times on a side stream (kernel loading, cuBLAS/cuDNN algorithm choice), then capture it in a
    CUDA graph, in the memory pool of graph `share_pool_with` if given -> (graph, fn's output, static)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        for _ in range(warmups):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    pool = share_pool_with.pool() if share_pool_with is not None else None
    with torch.cuda.graph(graph, pool=pool), torch.no_grad():
        out = fn()
    return graph, out


class GreedyDecoder:
    """Greedy decoding of up to `max_batch` rows at once. The per-token step can be captured in CUDA graphs
    (one per batch bucket, sharing one memory pool) — the model itself knows nothing about graphs."""

    BUCKETS = (1, 2, 4, 8, 16, 32, 64)

    def __init__(self, model: Whisper, tokenizer: WhisperTokenizer, opts: DecodeOptions, max_batch: int = 1,
                 cuda_graphs: bool = False):
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
        self.use_graphs = cuda_graphs and self.device.type == "cuda"

    # ---- the hot step: a pure function of (tokens, pos) over the rows' cache ----
    def _step(self, cache: KVCache, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.model.decoder(tokens, pos, cache)[:, -1].float()  # (B, V)

    def _graphed_step(self, b: int):
        bucket = self._bucket(b)
        if bucket not in self.graphs:
            cache = self.cache.narrow(bucket)
            tokens = torch.zeros(bucket, 1, dtype=torch.long, device=self.device)
            pos = torch.zeros(bucket, 1, dtype=torch.long, device=self.device)
            graph, logits = capture(lambda: self._step(cache, tokens, pos),
                                    next(iter(self.graphs.values()))[4] if self.graphs else None, warmups=2)
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
            graph, audio = capture(lambda: self._encode(cache, mel),
                                   next(iter(self.enc_graphs.values()))[2] if self.enc_graphs else None)
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
        prompt = self.tok.prompt
        seqs = [prompt + list(p) for p in prefixes]
        # prefill width rounded up to a multiple of 16: few distinct shapes, so warm-up covers them all
        # (padding positions are written to the cache but masked, and overwritten by the following steps)
        width = min(-(-max(len(s) for s in seqs) // 16) * 16, self.model.dims.n_text_ctx - 1)
        tokens = torch.tensor([s + [self.tok.eot] * (width - len(s)) for s in seqs]).to(self.device)  # (n, width)
        lens = torch.tensor([len(s) for s in seqs]).to(self.device)
        pos = torch.arange(width, device=self.device).expand(n, width).contiguous()
        cache = self.cache.narrow(n)
        logits = self.model.decoder(tokens, pos, cache).float()  # prefill (n, width, V)
        sot_at = self.tok.sot_sequence.index(self.tok.sot)
        no_speech = logits[:, sot_at].softmax(-1)[:, self.tok.no_speech]
        last = logits[torch.arange(n, device=self.device), lens - 1]  # (n, V)
        out = torch.empty(n, max_new, dtype=torch.long, device=self.device)
        sum_lp = torch.zeros(n, device=self.device)
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        cur = lens.clone()
        cap = torch.tensor(limits if limits else [max_new] * n, device=self.device)
        steps = 0
        limit = min(max_new, self.model.dims.n_text_ctx - width)
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
        self.launched_at = time.perf_counter()  # every step is queued; the read-back below waits for them
        out, sum_lp, no_speech = out[:, :steps].tolist(), sum_lp.tolist(), no_speech.tolist()
        hyps = []
        for i in range(n):
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
