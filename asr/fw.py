"""The CPU ASR backend: faster-whisper (CTranslate2, int8) on a CTranslate2 Whisper directory.

Whisper's encoder is trained on 30 s windows, and faster-whisper always pads an utterance to 30 s: on a 2-core CPU
that encoder pass is ~330-530 ms of the ~460-700 ms a short utterance takes, whatever its length. CTranslate2 runs
the encoder on a shorter input too, and tiny.en stays as accurate when the window is at least 10 s: on the 45 dev
clips (1-11 s; `bench/asr_window.py`, `bench/results/asr_window_cpu.json`) WER 6.5 % at 10 s and 6.3 % at 15 s vs
7.1 % at 30 s, while shorter windows break down (8 s: loops; utterance + 2 s: 299 %). So `window="short"` (default)
feeds the encoder the smallest of 10/15/20/30 s that holds the utterance + 1 s, and decodes it directly
(greedy, no temperature fallback, a token cap proportional to the duration, trailing loops cut); `"pad30"` is
faster-whisper's own `transcribe`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Transcript

SAMPLE_RATE = 16_000
WINDOWS_S = (10, 15, 20, 30)  # encoder input lengths tried in order (the shortest that holds the utterance + 1 s)
TOKENS_PER_S = 6  # token cap per second of speech (English speech is ~3)


def window_frames(n_frames: int) -> int | None:
    """Mel frames fed to the encoder for an utterance of n_frames (100 a second); None beyond 29 s."""
    for w in WINDOWS_S:
        if n_frames + 100 <= w * 100:
            return w * 100
    return None


class FasterWhisperASR:
    sample_rate = SAMPLE_RATE

    def __init__(self, model_dir: str | Path, compute_type: str = "int8", beam_size: int = 1,
                 language: str | None = "en", cpu_threads: int = 0, partial_interval_s: float = 1.0,
                 window: str = "short"):
        from faster_whisper import WhisperModel  # heavy import, kept out of module import time
        from faster_whisper.tokenizer import Tokenizer

        if window not in ("short", "pad30"):
            raise ValueError(f"window must be 'short' or 'pad30', not {window!r}")
        self.model = WhisperModel(str(model_dir), device="cpu", compute_type=compute_type,
                                  cpu_threads=cpu_threads)
        multilingual = self.model.model.is_multilingual
        self.language = language if multilingual else None
        self.beam_size = beam_size
        self.partial_interval_s = partial_interval_s
        self.window = window
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, multilingual, task="transcribe",
                                   language=self.language or "en")
        self.prompt = self.model.get_prompt(self.tokenizer, previous_tokens=[], without_timestamps=True)

    def transcribe(self, audio: np.ndarray) -> str:
        return self.transcribe_with_end(audio, want_end=False)[0]

    def transcribe_with_end(self, audio: np.ndarray, want_end: bool = True) -> tuple[str, float | None]:
        """The transcript, and Whisper's own P(end of text) right after its last token: how sure the recogniser is
        that the words stop there. A voice cut mid-sentence often gets a finished-looking transcript ("Feels like
        these days") but a low P here (bench/results/pause_judge_cpu.json: < 0.4 for 23 of 62 spliced pauses whose
        words do not trail off, never for the 36 finished turns). None where it is not known (the 30 s path, or the
        text ran into the length cap)."""
        if audio.size < SAMPLE_RATE // 10:
            return "", None
        audio = audio.astype(np.float32, copy=False)
        if self.window == "short":
            out = self._transcribe_short(audio, want_end)
            if out is not None:
                return out
        segments, _ = self.model.transcribe(
            audio, language=self.language, beam_size=self.beam_size,
            vad_filter=True,  # Silero gate: silence and noise give no segments instead of hallucinations
            condition_on_previous_text=False, without_timestamps=True,
        )
        return " ".join(s.text.strip() for s in segments if s.no_speech_prob < 0.8).strip(), None

    def _transcribe_short(self, audio: np.ndarray, want_end: bool = False) -> tuple[str, float | None] | None:
        """The same steps as faster-whisper's transcribe (Silero VAD filter, greedy, its no-speech rule) on a short
        encoder window; None when the speech is longer than 29 s (then the 30 s path runs)."""
        import ctranslate2
        from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

        from .decoding import strip_loop

        chunks = get_speech_timestamps(audio, VadOptions())
        if not chunks:
            return "", None
        audio = np.concatenate(collect_chunks(audio, chunks)[0])
        features = self.model.feature_extractor(audio)[:, :-1]  # content frames, as transcribe's
        n = features.shape[-1]
        frames = window_frames(n)
        if frames is None:
            return None
        x = np.zeros((1, features.shape[0], frames), np.float32)
        x[0, :, :n] = features
        enc = self.model.model.encode(ctranslate2.StorageView.from_array(x), to_cpu=False)
        seconds = len(audio) / SAMPLE_RATE
        cap = min(448, len(self.prompt) + int(TOKENS_PER_S * seconds) + 8)  # no loop runs longer than speech could
        r = self.model.model.generate(enc, [self.prompt], beam_size=self.beam_size, max_length=cap,
                                      return_scores=True, return_no_speech_prob=True, suppress_blank=True,
                                      suppress_tokens=[-1], return_logits_vocab=want_end)[0]
        tokens = [t for t in r.sequences_ids[0] if t < self.tokenizer.eot]
        avg_logprob = r.scores[0] * len(tokens) / (len(tokens) + 1)  # faster-whisper's (length penalty 1)
        if r.no_speech_prob >= 0.8 or (r.no_speech_prob > 0.6 and avg_logprob < -1.0):
            return "", None
        p_end = None
        steps = r.logits[0] if want_end and r.logits else []
        if len(steps) > len(tokens):  # the step after the last token (the one that chose <|endoftext|>)
            x = np.asarray(steps[len(tokens)], dtype=np.float64).ravel()
            e = np.exp(x - x.max())
            p_end = float(e[self.tokenizer.eot] / e.sum())
        return self.tokenizer.decode(strip_loop(tokens)).strip(), p_end

    def stream(self) -> "RetranscribeStream":
        return RetranscribeStream(self, self.partial_interval_s)


class RetranscribeStream:
    """Partials by re-transcribing the utterance every `interval_s` of new audio (cheap enough for tiny.en);
    the stable prefix is the words two consecutive hypotheses agree on (LocalAgreement-2)."""

    def __init__(self, asr: FasterWhisperASR, interval_s: float):
        self.asr = asr
        self.interval = int(interval_s * SAMPLE_RATE) if interval_s > 0 else 0
        self.chunks: list[np.ndarray] = []
        self.n = 0
        self.last_at = 0
        self.prev_words: list[str] = []
        self.stable: list[str] = []

    def feed(self, audio: np.ndarray) -> Transcript | None:
        self.chunks.append(audio)
        self.n += len(audio)
        if not self.interval or self.n - self.last_at < self.interval:
            return None
        self.last_at = self.n
        text = self.asr.transcribe(np.concatenate(self.chunks))
        words = text.split()
        agree = 0
        while agree < min(len(words), len(self.prev_words)) and words[agree] == self.prev_words[agree]:
            agree += 1
        if agree > len(self.stable):
            self.stable = words[:agree]
        self.prev_words = words
        return Transcript(text=text, final=False, stable=" ".join(self.stable))

    def finish(self) -> Transcript:
        audio = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        text = self.asr.transcribe(audio)
        return Transcript(text=text, final=True, stable=text)
