"""The torch Whisper ASR backend (GPU; CPU for tests): same interface as asr/fw.py's FasterWhisperASR.

    asr = TorchWhisperASR(require("whisper-tiny.en"), device="cuda")     # real CT2 weights
    asr = TorchWhisperASR(shape="large-v3-turbo", device="cuda")         # synthetic weights (benchmarks)
    text = asr.transcribe(audio16k)
    s = asr.stream(); s.feed(chunk) -> Transcript | None ...; s.finish() -> Transcript

Batched API for a scheduler serving many sessions: `s.push(chunk)` only buffers; every tick call
`asr.update([s for s in streams if s.due], final=...)`: one mel+encoder batch and one decoder batch for all.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .base import Transcript
from .decoding import DecodeOptions, GreedyDecoder, Hypothesis, WhisperTokenizer, batch_features, strip_loop
from .features import LogMel
from .stream import EnergyGate, LocalAgreement, StreamPolicy
from .whisper import Whisper, synthetic

SAMPLE_RATE = 16_000
MAX_SAMPLES = 30 * SAMPLE_RATE  # Whisper's window: a longer utterance is cut to its first 30 s


class TorchWhisperASR:
    sample_rate = SAMPLE_RATE
    tokens_per_s = 6.0  # fast English speech is ~3-4 words (~4-5 tokens) a second

    def __init__(self, model_dir: str | Path | None = None, *, shape: str | None = None, device: str = "cpu",
                 dtype: torch.dtype | None = None, window: str = "pad30", final_window: str | None = None,
                 partial_interval_s: float = 0.2,
                 max_batch: int = 32, cuda_graphs: bool = True, energy_floor_dbfs: float = -45.0,
                 max_new_tokens: int = 128, seed: int = 0, script: str = "", chunked_decode: bool = False):
        self.device = torch.device(device)
        dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        if model_dir is not None:
            from .ct2 import load_whisper_dir

            dims, sd, cfg = load_whisper_dir(model_dir)
            model = Whisper(dims)
            model.load_state_dict(sd, strict=True)
            self.model = model.to(device=self.device, dtype=dtype).eval()
            self.tokenizer = WhisperTokenizer(model_dir, dims.n_vocab)
            sup, sup_begin = cfg.get("suppress_ids", []), cfg.get("suppress_ids_begin", [])
        else:
            if shape is None:
                raise ValueError("give model_dir (CTranslate2 Whisper directory) or shape (synthetic weights)")
            self.model = synthetic(shape, seed=seed, dtype=dtype, device=self.device)
            self.tokenizer = WhisperTokenizer(None, self.model.dims.n_vocab, multilingual=shape != "tiny.en")
            sup, sup_begin = [], [220, self.tokenizer.eot]
        self.opts = DecodeOptions(max_new_tokens=max_new_tokens, suppress_ids=sup, suppress_ids_begin=sup_begin,
                                  window=window)
        self.final_window = final_window or window  # encoder input at the endpoint (partials use `window`)
        self.decoder = GreedyDecoder(self.model, self.tokenizer, self.opts, max_batch=max_batch,
                                     cuda_graphs=cuda_graphs, chunked=chunked_decode)
        # on CUDA the STFT lengths are bucketed to 1 s (at most 31 cuFFT plans, made by warmup; see LogMel)
        self.mel = LogMel(self.model.dims.n_mels, device=self.device,
                          bucket_frames=100 if self.device.type == "cuda" else 0)
        self.gate = EnergyGate(energy_floor_dbfs)
        self.policy = StreamPolicy(partial_interval_s, SAMPLE_RATE)
        self.max_batch = max_batch
        self.timing = False  # per-phase host/GPU times of recognize() into phase_stats (benchmarks)
        self.phase_stats = dict.fromkeys(("calls", "items", "encode_host_s", "encode_gpu_s", "decode_launch_s",
                                          "decode_wall_s", "decode_gpu_s"), 0)
        # benchmarks on synthetic weights: the words of the transcript come from this passage (see _scripted)
        self.script = script.split()
        if self.script and model_dir is not None:
            raise ValueError("a scripted transcript is for synthetic weights only")

    # ---- batched core ----
    @torch.no_grad()
    def recognize(self, audios: list[np.ndarray], prefixes: list[list[int]] | None = None,
                  max_new: int | None = None, stop_at_eot: bool = True, window: str | None = None
                  ) -> list[Hypothesis]:
        """One encoder batch + one greedy decoder batch for several utterances (each <= max_batch)."""
        out: list[Hypothesis] = []
        prefixes = prefixes or [[] for _ in audios]
        for i in range(0, len(audios), self.max_batch):
            chunk, pre = audios[i:i + self.max_batch], prefixes[i:i + self.max_batch]
            marks = self._marks()
            mels = [self.mel(torch.as_tensor(a[:MAX_SAMPLES])) for a in chunk]
            self.decoder.encode(batch_features(mels, self.opts, window))
            self._mark(marks)
            # a loop cannot run longer than speech could: <= tokens_per_s per second of audio (+ slack)
            limits = [max(4, int(self.tokens_per_s * len(a) / SAMPLE_RATE) + 8 - len(p)) for a, p in zip(chunk, pre)]
            hyps = self.decoder.decode(pre, max_new=max_new, stop_at_eot=stop_at_eot,
                                       limits=None if max_new else limits)
            self._mark(marks)
            self._account(marks, len(chunk))
            for h, p in zip(hyps, pre):
                h.tokens = list(p) + strip_loop(h.tokens[len(p):])
            out += hyps
        return out

    # ---- where a recognize() call's time goes (bench/sessions.py reports it): host time to queue each phase vs
    # the GPU time between its CUDA events. Host launch time ~ GPU time: launch-bound; GPU time >> launch time: the
    # kernels themselves (or the device) are slow; wall >> both: the thread waited (GIL, CPU) between launches.
    def _marks(self):
        if not self.timing:
            return None
        m = {"t": [time.perf_counter()], "e": []}
        if self.device.type == "cuda":
            m["e"].append(torch.cuda.Event(enable_timing=True))
            m["e"][-1].record()
        return m

    def _mark(self, m) -> None:
        if m is None:
            return
        m["t"].append(time.perf_counter())
        if m["e"]:
            m["e"].append(torch.cuda.Event(enable_timing=True))
            m["e"][-1].record()

    def _account(self, m, items: int) -> None:
        if m is None:
            return
        t0, t_enc, t_end = m["t"]
        st = self.phase_stats
        st["calls"] += 1
        st["items"] += items
        st["encode_host_s"] += t_enc - t0  # mel + encoder queued (no sync in between)
        st["decode_launch_s"] += getattr(self.decoder, "launched_at", t_end) - t_enc  # greedy steps queued
        st["decode_wall_s"] += t_end - t_enc  # ... and read back
        if m["e"]:
            e0, e1, e2 = m["e"]
            e2.synchronize()
            st["encode_gpu_s"] += e0.elapsed_time(e1) / 1000
            st["decode_gpu_s"] += e1.elapsed_time(e2) / 1000

    def reset_phase_stats(self) -> dict:
        """The accumulated phase times since the last reset (seconds; `timing` must be on), then zero them."""
        old = dict(self.phase_stats)
        self.phase_stats = dict.fromkeys(old, 0)
        return old

    def warmup(self, batches: tuple[int, ...] = (1,), max_prefix: int = 96, seconds: float = 5.0) -> None:
        """Run every prefill width (multiples of 16 up to max_prefix) and decoder-graph bucket once, so the
        first real request does not pay for kernel loading, cuBLAS heuristics or graph capture."""
        audio = (np.random.default_rng(0).standard_normal(int(seconds * SAMPLE_RATE)) * 0.1).astype(np.float32)
        self.mel.warm(MAX_SAMPLES)
        for b in batches:
            for width in range(0, max_prefix + 1, 16):
                self.recognize([audio] * b, [[0] * width] * b, max_new=2, stop_at_eot=False)
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def text(self, hyp: Hypothesis, forced: bool = False) -> str:
        if hyp.is_silence and not forced:
            return ""
        return self.tokenizer.decode(hyp.tokens)

    def _live(self, audios: list[np.ndarray]) -> list[int]:
        """The audios worth recognising: at least 0.1 s and above the energy gate (the rest transcribe as "")."""
        return [i for i, a in enumerate(audios) if len(a) >= SAMPLE_RATE // 10 and not self.gate.is_silent(a)]

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[str]:
        texts = [""] * len(audios)
        live = self._live(audios)
        if self.script:
            return self._scripted(audios, live, texts)
        for i, h in zip(live, self.recognize([audios[i] for i in live], window=self.final_window)):
            texts[i] = self.text(h)
        return texts

    def transcribe(self, audio: np.ndarray) -> str:
        return self.transcribe_batch([np.asarray(audio, dtype=np.float32)])[0]

    def transcribe_with_end_batch(self, audios: list[np.ndarray]) -> list[tuple[str, float | None]]:
        """Transcripts, each with Whisper's P(end of text) right after its last token (see asr/base.py and
        FasterWhisperASR.transcribe_with_end): one more decoder prefill per batch. None for silence, and for
        scripted transcripts (synthetic weights: the words are not the model's)."""
        out: list[tuple[str, float | None]] = [("", None)] * len(audios)
        live = self._live(audios)
        if self.script:
            return [(t, None) for t in self._scripted(audios, live, [""] * len(audios))]
        for k in range(0, len(live), self.max_batch):
            rows = live[k:k + self.max_batch]
            hyps = self.recognize([audios[i] for i in rows], window=self.final_window)  # encoder rows 0..n-1
            ends = self.decoder.end_probability([h.tokens for h in hyps])  # row j is hyps[j]'s audio
            for i, h, p in zip(rows, hyps, ends):
                text = self.text(h)
                out[i] = (text, float(p)) if text else ("", None)
        return out

    def transcribe_with_end(self, audio: np.ndarray) -> tuple[str, float | None]:
        return self.transcribe_with_end_batch([np.asarray(audio, dtype=np.float32)])[0]

    WORDS_PER_S = 2.5  # conversational English
    TOKENS_PER_WORD = 1.3

    def speech_seconds(self, audio: np.ndarray, frame: int = 320) -> float:
        """Up to the end of the last 20 ms frame above the energy floor: trailing silence adds no words."""
        n = len(audio) // frame
        if n == 0:
            return 0.0
        rms = np.sqrt(np.mean(np.square(audio[: n * frame].reshape(n, frame), dtype=np.float64), axis=1) + 1e-12)
        loud = np.nonzero(20 * np.log10(rms) > self.gate.floor_dbfs)[0]
        return 0.0 if len(loud) == 0 else (loud[-1] + 1) * frame / SAMPLE_RATE

    def _scripted(self, audios: list[np.ndarray], live: list[int], texts: list[str]) -> list[str]:
        """Synthetic weights decode nonsense, so the words are scripted: the first N words of the passage, N from
        the speech duration (the same N in a pause and at the endpoint that follows it, as real ASR would give).
        The compute is real: mel + encoder of the whole audio, and ~1.3 decoder steps per word."""
        if not live:
            return texts
        n_words = [max(1, round(self.WORDS_PER_S * self.speech_seconds(audios[i]))) for i in live]
        n_tok = max(2, round(self.TOKENS_PER_WORD * max(n_words)))
        self.recognize([audios[i] for i in live], max_new=min(n_tok, self.opts.max_new_tokens), stop_at_eot=False,
                       window=self.final_window)
        for i, n in zip(live, n_words):
            texts[i] = " ".join(self.script[k % len(self.script)] for k in range(n))
        return texts

    def stream(self) -> "TorchStream":
        return TorchStream(self)

    def update(self, streams: list["TorchStream"], final: bool | list[bool] = False) -> list[Transcript]:
        """Run the recogniser for several streams at once (partials, or finals at their endpoints)."""
        finals = final if isinstance(final, list) else [final] * len(streams)
        results: list[Transcript | None] = [None] * len(streams)
        live = []
        for i, s in enumerate(streams):
            audio = s.audio()
            s.last_run = s.n
            if len(audio) < SAMPLE_RATE // 10 or self.gate.is_silent(audio):
                results[i] = Transcript("", finals[i], "")
            else:
                live.append((i, audio))
        # one batch for the finals (final_window) and one for the partials (window)
        for want_final in (True, False):
            group = [(i, a) for i, a in live if finals[i] == want_final]
            if not group:
                continue
            hyps = self.recognize([a for _, a in group], [streams[i].agreement.committed for i, _ in group],
                                  window=self.final_window if want_final else self.opts.window)
            for (i, _), h in zip(group, hyps):
                s = streams[i]
                forced = bool(s.agreement.committed)
                text = self.text(h, forced)
                if finals[i]:
                    s.final_increment = len(h.tokens) - len(s.agreement.committed)  # tokens decoded at the end
                    results[i] = Transcript(text, True, text)
                else:
                    committed = s.agreement.update(h.tokens if text else s.agreement.committed)
                    results[i] = Transcript(text, False, self.tokenizer.decode(committed))
        return results  # type: ignore[return-value]


class TorchStream:
    """One utterance. feed() runs the model itself when due; a scheduler uses push()/due and asr.update()."""

    def __init__(self, asr: TorchWhisperASR):
        self.asr = asr
        self.chunks: list[np.ndarray] = []
        self.n = 0
        self.last_run = 0
        self.agreement = LocalAgreement()
        self.final_increment = 0
        self._audio: np.ndarray | None = None

    def push(self, audio: np.ndarray) -> None:
        self.chunks.append(np.asarray(audio, dtype=np.float32))
        self.n += len(audio)
        self._audio = None

    def audio(self) -> np.ndarray:
        if self._audio is None:
            self._audio = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
            self.chunks = [self._audio]
        return self._audio

    @property
    def due(self) -> bool:
        return self.asr.policy.due(self.n, self.last_run)

    @property
    def stable(self) -> str:
        return self.asr.tokenizer.decode(self.agreement.committed)

    def feed(self, audio: np.ndarray) -> Transcript | None:
        self.push(audio)
        return self.asr.update([self])[0] if self.due else None

    def finish(self) -> Transcript:
        return self.asr.update([self], final=True)[0]
