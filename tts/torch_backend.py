"""The torch VITS as a `tts.base.TTS` backend: phrase in, audio chunks out, with word timings; CPU or GPU.

Per phrase: phonemize (CPU, espeak) -> one batched pass of the frame-rate stages over all of the phrase's
sentences (encoder, durations -> word timings, flow) -> the decoder on latent windows (tts/stream.py), first a
small one. `synthesize_batch` does the same for phrases of several sessions at once: the frame-rate stages run
as one padded batch, then each decoder call takes the next window of every unfinished phrase.

The encoder, duration predictor and flow always run in float32 (durations are ceil()ed, so low precision could
move a phoneme by a frame); `dtype` applies to the decoder only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from tts.base import TTSChunk, WordTiming
from tts.phonemize import Phonemized, Phonemizer
from tts.stream import Window, decode_window, decode_windows_batched, plan_windows
from tts.timing import PhonemeTiming, phoneme_timings, word_timings
from tts.vits import Generator, Vits


@dataclass
class PhraseStream:
    """One phrase synthesized window by window: made by `TorchPiperTTS.stream` (nothing runs then), advanced by
    `step` / `step_batch` (on the TTS thread). Several sessions' streams advance together in `step_batch`."""

    text: str | Phonemized
    prepared: PreparedPhrase | None = None
    pos: int = 0  # index into prepared._next of the next window
    done: bool = False


@dataclass
class PreparedPhrase:
    """A phrase after the frame-rate stages: everything but the waveform."""

    phonemized: Phonemized
    words: list[WordTiming]
    phonemes: list[PhonemeTiming]
    latents: list[torch.Tensor]  # per sentence, [C, F_i], masked, decoder dtype
    windows: list[list[Window]]  # per sentence
    offsets: list[int]  # per sentence: first sample within the phrase
    n_samples: int
    _next: list[tuple[int, int]] = field(default_factory=list)  # (sentence, window) still to decode


class TorchPiperTTS:
    def __init__(self, voice: str | Path | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, chunk_frames: int = 64, first_chunk_frames: int = 16,
                 context_frames: int | None = None, noise_scale: float | None = None,
                 length_scale: float | None = None, noise_w: float | None = None, seed: int | None = None,
                 model: Vits | None = None, voice_json: dict | None = None):
        """voice: a Piper voice dir or .onnx (default: the fetched piper-joe-medium). Or pass `model` (e.g.
        tts.piper_weights.synthetic_vits()) and `voice_json` (None: inputs must come pre-phonemized)."""
        if model is None:
            from tts.piper_weights import load_piper_vits

            if voice is None:
                from agent import models

                voice = models.require("piper-joe-medium")
            model, voice_json = load_piper_vits(voice)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.dec = self.model.dec if dtype == torch.float32 else copy.deepcopy(self.model.dec).to(dtype)
        self.dtype = dtype
        self.config = model.config
        self.sample_rate = self.config.sample_rate
        self.hop = self.config.hop
        inference = (voice_json or {}).get("inference", {})
        self.noise_scale = inference.get("noise_scale", 0.667) if noise_scale is None else noise_scale
        self.length_scale = inference.get("length_scale", 1.0) if length_scale is None else length_scale
        self.noise_w = inference.get("noise_w", 0.8) if noise_w is None else noise_w
        self.chunk_frames, self.first_chunk_frames = chunk_frames, first_chunk_frames
        self.context = Generator.context_frames(self.config) if context_frames is None else context_frames
        self.phonemizer = Phonemizer.from_json(voice_json) if voice_json and "phoneme_id_map" in voice_json else None
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator(device=self.device).manual_seed(seed)
        # The three model calls, replaceable from outside (CUDA graphs: tts/cuda_graphs.py). `bucket` rounds the
        # id and frame counts up (padding is masked, so results do not change) to let graphs be reused.
        self.decode_fn = self.dec  # z [B, C, W] -> audio [B, W*hop]
        # step_batch: windows of one width from several streams go through the decoder as one batch, padded with
        # zero rows to one of these sizes (a CUDA graph each, captured in warmup)
        self.decode_buckets = (1, 2, 4, 8, 16)
        self.batch_steps = False  # warmup captures step_batch's batched decoder graphs only when it is used
        self.bucket = lambda n: n
        self.bucket_frames = lambda n: n  # the latent's frame count, rounded up (graphs: fewer back shapes)
        self.graphs = None  # tts.cuda_graphs.GraphedTTS, when installed (use_cuda_graphs)

    WARMUP_TEXTS = (
        "Hi.", "Sure, let me check.", "Sure, I can help you with that today.",
        "Your table for four is booked at seven, and I sent you a confirmation.",
        "Our main branch is open from nine in the morning until eight in the evening, Monday through Saturday.",
        "If you would like to renew a book, please have your card number ready, and I will take care of it right "
        "away, so you do not have to come in.",
    )

    def use_cuda_graphs(self, max_graphs: int = 256) -> None:
        """Replay the three model calls from CUDA graphs (captured per bucketed shape in `warmup`)."""
        from .cuda_graphs import GraphedTTS

        self.graphs = GraphedTTS(self, max_graphs=max_graphs)

    def warmup(self) -> None:
        """Phrases of every usual length once (graph capture happens here, single-threaded), then no more
        captures while serving: an unseen shape runs eagerly."""
        if self.graphs is None:
            for _chunk in self.synthesize("Hello."):
                pass
            return
        for _ in range(2):
            for text in self.WARMUP_TEXTS:
                for _chunk in self.synthesize(text):
                    pass
            for b in self.decode_buckets[1:] if self.batch_steps else ():  # step_batch's batches, usual widths
                streams = [self.stream(self.WARMUP_TEXTS[-2]) for _ in range(b)]
                while not all(st.done for st in streams):
                    self.step_batch(streams)
        self.graphs.capture_back_range()
        self.graphs.freeze()

    def front(self, ids, lengths):
        """ids [B, T], lengths [B] -> (TextStats, durations [B, T])."""
        stats = self.model.encode(ids, lengths)
        return stats, self.model.durations(stats, self.noise_w, self.length_scale, self.generator)

    def back(self, stats, dur, n_frames: int):
        """-> latent z [B, C, n_frames] in the decoder's dtype, zero past each row's length."""
        z_p, y_mask = self.model.expand(stats, dur, self.noise_scale, n_frames=n_frames, generator=self.generator)
        return (self.model.flow_reverse(z_p, y_mask) * y_mask).to(self.dtype)

    # ---------------------------------------------------------------------------------------------- stages

    def phonemize(self, text: str) -> Phonemized:
        if self.phonemizer is None:
            raise RuntimeError("no phonemizer (model given without voice_json): pass Phonemized inputs")
        return self.phonemizer(text)

    @torch.inference_mode()
    def prepare(self, items: Sequence[str | Phonemized]) -> list[PreparedPhrase]:
        """Frame-rate stages for several phrases in one padded batch (one host sync, for the durations)."""
        phs = [self.phonemize(x) if isinstance(x, str) else x for x in items]
        rows = [ids for ph in phs for ids in ph.ids]
        if not rows:
            return [PreparedPhrase(ph, [WordTiming(w, 0, 0) for w in ph.words], [], [], [], [], 0) for ph in phs]
        T = self.bucket(max(len(r) for r in rows))
        ids = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
        lengths = torch.tensor([len(r) for r in rows])
        ids, lengths = ids.to(self.device, non_blocking=True), lengths.to(self.device, non_blocking=True)
        stats, dur = self.front(ids, lengths)
        dur_cpu = dur.cpu().numpy()  # the one sync: timings and frame counts
        n_frames = np.maximum(dur_cpu.sum(1), 1)
        z = self.back(stats, dur, self.bucket_frames(int(n_frames.max())))
        out, row = [], 0
        for ph in phs:
            n = len(ph.ids)
            samples = [dur_cpu[row + i, :len(ph.ids[i])] * self.hop for i in range(n)]
            frames = [int(n_frames[row + i]) for i in range(n)]
            offsets = list(np.concatenate([[0], np.cumsum(frames)[:-1]]) * self.hop) if n else []
            windows = [plan_windows(f, self.chunk_frames, self.context, self.first_chunk_frames) for f in frames]
            p = PreparedPhrase(ph, word_timings(ph.words, ph.id_word, samples),
                               phoneme_timings(ph.phonemes, ph.id_phone, samples),
                               [z[row + i, :, :frames[i]] for i in range(n)], windows, [int(o) for o in offsets],
                               sum(frames) * self.hop)
            p._next = [(i, k) for i in range(n) for k in range(len(windows[i]))]
            out.append(p)
            row += n
        return out

    def _chunk(self, p: PreparedPhrase, sent: int, k: int, audio: torch.Tensor) -> TTSChunk:
        w = p.windows[sent][k]
        return TTSChunk(audio.float().cpu().numpy().reshape(-1), p.offsets[sent] + w.start * self.hop,
                        last=(sent, k) == (len(p.windows) - 1, len(p.windows[-1]) - 1), words=p.words)

    # -------------------------------------------------------------------------------------------- interface

    @torch.inference_mode()
    def synthesize(self, text: str | Phonemized) -> Iterator[TTSChunk]:
        """Audio for one phrase in chunks; every chunk carries the phrase's word timings."""
        (p,) = self.prepare([text])
        if not p._next:
            yield TTSChunk(np.zeros(0, np.float32), 0, True, p.words)
            return
        for sent, k in p._next:
            audio = decode_window(self.decode_fn, p.latents[sent][None], p.windows[sent][k], self.hop)
            yield self._chunk(p, sent, k, audio[0])

    @torch.inference_mode()
    def synthesize_batch(self, items: Sequence[str | Phonemized]) -> Iterator[tuple[int, TTSChunk]]:
        """Several sessions' phrases together: yields (index into items, chunk), first chunks of all phrases
        first. Per phrase, chunks come in order."""
        phrases = self.prepare(items)
        queues = [list(p._next) for p in phrases]
        for i, p in enumerate(phrases):
            if not queues[i]:
                yield i, TTSChunk(np.zeros(0, np.float32), 0, True, p.words)
        while any(queues):
            live = [i for i, q in enumerate(queues) if q]
            todo = [(i, *queues[i].pop(0)) for i in live]
            if len(todo) == 1:
                i, sent, k = todo[0]
                p = phrases[i]
                audios = [decode_window(self.decode_fn, p.latents[sent][None], p.windows[sent][k], self.hop)[0]]
            else:
                audios = decode_windows_batched(self.decode_fn, [phrases[i].latents[s] for i, s, _ in todo],
                                                [phrases[i].windows[s][k] for i, s, k in todo], self.hop)
            for (i, sent, k), audio in zip(todo, audios):
                yield i, self._chunk(phrases[i], sent, k, audio)

    def stream(self, text: str | Phonemized) -> PhraseStream:
        """A phrase to synthesize with `step` / `step_batch`; runs nothing (cheap on any thread)."""
        return PhraseStream(text)

    def step(self, stream: PhraseStream) -> TTSChunk | None:
        """The stream's next chunk; None once it is done."""
        return self.step_batch([stream])[0]

    @torch.inference_mode()
    def step_batch(self, streams: Sequence[PhraseStream]) -> list[TTSChunk | None]:
        """The next chunk of each stream (None for one that is done), as `synthesize` would yield them. A stream's
        first call prepares it (its frame-rate stages, alone). Then the streams' next windows that have the same
        width are decoded as one batch, padded with zero rows to a size of `decode_buckets`: every row is its own
        window (no padding inside a row), so each chunk is what that window decodes to alone, up to the float
        rounding of another batch size. One device-to-host copy per batch."""
        out: list[TTSChunk | None] = [None] * len(streams)
        groups: dict[int, list] = {}
        for i, st in enumerate(streams):
            if st.done:
                continue
            if st.prepared is None:
                (st.prepared,) = self.prepare([st.text])
                if not st.prepared._next:
                    st.done = True
                    out[i] = TTSChunk(np.zeros(0, np.float32), 0, True, st.prepared.words)
                    continue
            sent, k = st.prepared._next[st.pos]
            w = st.prepared.windows[sent][k]
            groups.setdefault(w.hi - w.lo, []).append((i, st, sent, w))
        top = self.decode_buckets[-1]
        for width, members in groups.items():
            for j in range(0, len(members), top):
                part = members[j:j + top]
                z = torch.stack([st.prepared.latents[sent][:, w.lo:w.hi] for _, st, sent, w in part])
                b = next(x for x in self.decode_buckets if x >= len(part))
                if b > len(part):
                    z = torch.cat([z, z.new_zeros(b - len(part), *z.shape[1:])])
                audio = self.decode_fn(z)[:len(part)].float().cpu().numpy()
                for row, (i, st, sent, w) in enumerate(part):
                    drop, keep = w.trim
                    p = st.prepared
                    out[i] = TTSChunk(audio[row, drop * self.hop:(drop + keep) * self.hop].copy(),
                                      p.offsets[sent] + w.start * self.hop,
                                      last=st.pos == len(p._next) - 1, words=p.words)
                    st.pos += 1
                    st.done = st.pos == len(p._next)
        return out

    def synthesize_full(self, text: str | Phonemized) -> tuple[np.ndarray, list[WordTiming]]:
        """Whole phrase, concatenated (tests, offline use)."""
        chunks = list(self.synthesize(text))
        audio = np.concatenate([c.audio for c in chunks]) if chunks else np.zeros(0, np.float32)
        return audio, (chunks[0].words if chunks else [])
