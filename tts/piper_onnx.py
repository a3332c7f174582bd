"""The CPU TTS backend: piper-tts (onnxruntime), one chunk per sentence, word timings from Piper's alignments."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np

from .base import TTSChunk, WordTiming
from .timing import sentence_word_timings


def voice_files(voice: str | Path) -> tuple[Path, Path]:
    """A Piper voice is an .onnx file with its .onnx.json beside it; a directory holding one also works."""
    p = Path(voice)
    if p.is_dir():
        found = sorted(p.glob("*.onnx"))
        if not found:
            raise FileNotFoundError(f"no .onnx voice in {p}")
        p = found[0]
    cfg = Path(str(p) + ".json")
    for f in (p, cfg):
        if not f.exists():
            raise FileNotFoundError(f"Piper voice file missing: {f}")
    return p, cfg


class PiperOnnxTTS:
    def __init__(self, voice: str | Path, noise_scale: float | None = None, length_scale: float | None = None,
                 noise_w: float | None = None, threads: int = 1):
        import onnxruntime
        from piper import PiperVoice
        from piper.config import SynthesisConfig

        model, cfg = voice_files(voice)
        self.voice = PiperVoice.load(model, cfg)
        # re-open the graph patched to also output samples per phoneme (word timings), with our thread count
        import onnx
        from piper.patch_voice_with_alignment import add_alignment_output

        graph = onnx.load(str(model))
        try:
            add_alignment_output(graph)
        except ValueError:
            pass  # already patched
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.voice.session = onnxruntime.InferenceSession(graph.SerializeToString(), sess_options=opts,
                                                          providers=["CPUExecutionProvider"])
        self.sample_rate = self.voice.config.sample_rate
        import json

        from .phonemize import Phonemizer

        self.phonemizer = Phonemizer.from_json(json.loads(Path(cfg).read_text()))
        self.syn = SynthesisConfig(noise_scale=noise_scale, length_scale=length_scale, noise_w_scale=noise_w,
                                   normalize_audio=False)

    # longer than any phrase the runtime sends ([phrases] max_words = 24): 26 long words, ~9 s of audio
    WARMUP_TEXT = ("Unfortunately, international transportation authorities recommended extraordinary precautions "
                   "regarding unprecedented environmental circumstances, particularly concerning infrastructure, "
                   "telecommunications, accommodations, manufacturing, administration, responsibilities, and "
                   "considerable organizational improvements throughout metropolitan neighbourhoods.")

    def warmup(self, repeats: int = 2) -> None:
        """At start-up, the longest usual phrase a few times (Piper's durations are random). onnxruntime's CPU arena
        grows to the largest call it has seen and keeps that memory (reused by every later call): sized here, it
        does not grow in steps while serving each time a phrase longer than any before comes (issue 9's soak:
        ~+130 MB over 10 minutes from this arena)."""
        for _ in range(repeats):
            for _chunk in self.synthesize(self.WARMUP_TEXT):
                pass

    def synthesize(self, text: str) -> Iterator[TTSChunk]:
        text = text.strip()
        if not text:
            return
        offset = 0
        text_words = text.split()
        w_index = 0
        try:  # exact word labels per phoneme id (tts.phonemize); piper's alignments give samples per id
            ph = self.phonemizer(text)
        except Exception:
            ph = None
        for i, ch in enumerate(self.voice.synthesize(text, self.syn, include_alignments=True)):
            audio = np.clip(ch.audio_float_array, -1.0, 1.0).astype(np.float32)
            exact = (ph is not None and i < len(ph.ids) and list(ch.phoneme_ids) == list(ph.ids[i])
                     and ch.phoneme_id_samples is not None)
            if exact:
                words = sentence_word_timings(ph.words, ph.id_word, i, ch.phoneme_id_samples, offset)
            else:
                words, w_index = _word_timings(ch, text_words, w_index, offset)
            yield TTSChunk(audio=audio, offset=offset, last=False, words=words)
            offset += len(audio)
        # piper works sentence by sentence, so the end is known only after the loop: an empty closing chunk
        yield TTSChunk(audio=np.zeros(0, np.float32), offset=offset, last=True)


_PUNCT = re.compile(r"^[\W_]+$")


def _word_timings(chunk, text_words: list[str], w_index: int, offset: int) -> tuple[list[WordTiming], int]:
    """Phoneme alignments -> word spans. espeak separates words by ' ' in the phoneme stream; when its word
    count differs from the text's (numbers, abbreviations), spans are shared out in proportion."""
    al = chunk.phoneme_alignments
    n_audio = len(chunk.audio_float_array)
    spans: list[tuple[int, int]] = []
    pos, start = 0, None
    for a in al or []:
        is_gap = a.phoneme in (" ", "^", "$", "_") or _PUNCT.match(a.phoneme) is not None
        if not is_gap and start is None:
            start = pos
        if is_gap and start is not None:
            spans.append((start, pos))
            start = None
        pos += a.num_samples
    if start is not None:
        spans.append((start, pos))
    # which text words does this sentence hold? piper splits on sentence punctuation
    remaining = text_words[w_index:]
    sentence_words = []
    for w in remaining:
        sentence_words.append(w)
        if re.search(r"[.!?]$", w):
            break
    if not spans:
        spans = [(0, n_audio)]
    words = []
    if len(spans) == len(sentence_words):
        pairs = zip(sentence_words, spans)
        words = [WordTiming(w, int(offset + s), int(offset + e)) for w, (s, e) in pairs]
    else:  # proportional: word i covers the same fraction of the voiced span as of the characters
        s0, e0 = spans[0][0], spans[-1][1]
        total = sum(len(w) for w in sentence_words) or 1
        acc = 0
        for w in sentence_words:
            ws = s0 + (e0 - s0) * acc // total
            acc += len(w)
            words.append(WordTiming(w, int(offset + ws), int(offset + s0 + (e0 - s0) * acc // total)))
    return words, w_index + len(sentence_words)
