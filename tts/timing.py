"""Word and phoneme timings from predicted durations: pure functions, no model, no I/O.

Every phoneme id of a sentence lasts `frames * hop` samples (Piper: hop 256 at 22,050 Hz, about 11.6 ms); a
phrase's sentences play back to back. A word spans from the first sample of its first id to the last of its
last id (a phoneme's trailing PAD id is its own). Words that voice no phoneme (a lone "—") get an empty span at
the end of the word before. `WordTiming`s come out in text order, non-overlapping and non-decreasing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tts.base import WordTiming


@dataclass
class PhonemeTiming:
    phoneme: str
    start: int  # sample offsets within the phrase
    end: int


def _id_bounds(id_samples: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Per sentence: [n_ids + 1] sample boundaries within the phrase."""
    out, offset = [], 0
    for s in id_samples:
        b = offset + np.concatenate([[0], np.cumsum(np.asarray(s, dtype=np.int64))])
        out.append(b)
        offset = int(b[-1])
    return out


def word_timings(words: Sequence[str], id_word: Sequence[Sequence[int]],
                 id_samples: Sequence[Sequence[int]]) -> list[WordTiming]:
    """words: the phrase's tokens; id_word: per sentence, per id, word index or -1; id_samples: per sentence,
    per id, samples (durations * hop)."""
    start = [None] * len(words)
    end = [None] * len(words)
    for bounds, labels in zip(_id_bounds(id_samples), id_word):
        for i, w in enumerate(labels):
            if w < 0:
                continue
            if start[w] is None:
                start[w] = int(bounds[i])
            end[w] = int(bounds[i + 1])
    out, prev_end = [], 0
    for w, word in enumerate(words):
        s, e = (start[w], end[w]) if start[w] is not None else (prev_end, prev_end)
        s = max(s, prev_end)  # labels are monotone, so this only guards against odd inputs
        e = max(e, s)
        out.append(WordTiming(word, s, e))
        prev_end = e
    return out


def phoneme_timings(phonemes: Sequence[Sequence[str]], id_phone: Sequence[Sequence[int]],
                    id_samples: Sequence[Sequence[int]]) -> list[PhonemeTiming]:
    """One entry per phoneme codepoint that reached the model (spaces and punctuation too: they last)."""
    out = []
    for sent, bounds, labels in zip(phonemes, _id_bounds(id_samples), id_phone):
        spans: dict[int, tuple[int, int]] = {}
        for i, k in enumerate(labels):
            if k >= 0:
                spans[k] = (spans.get(k, (int(bounds[i]), 0))[0], int(bounds[i + 1]))
        out += [PhonemeTiming(sent[k], s, e) for k, (s, e) in sorted(spans.items())]
    return out


def words_heard(words: Sequence[WordTiming], played_samples: int, min_fraction: float = 0.5) -> list[WordTiming]:
    """Words the listener heard when playback stopped after `played_samples`: a word counts once at least
    `min_fraction` of it was played (barge-in truncation of the assistant's history)."""
    out = []
    for w in words:
        if w.end <= played_samples or (w.end > w.start and (played_samples - w.start) / (w.end - w.start) >= min_fraction):
            out.append(w)
        else:
            break
    return out


def sentence_word_timings(words: Sequence[str], id_word: Sequence[Sequence[int]], sentence: int,
                          id_samples: Sequence[int], offset: int) -> list[WordTiming]:
    """Streaming form for backends that synthesize sentence by sentence (piper-tts): the words voiced in
    `sentence` (plus any sound-less tokens right after them), placed at `offset` samples into the phrase."""
    first = next((w for labels in id_word[sentence:] for w in labels if w >= 0), len(words))
    later = next((w for labels in id_word[sentence + 1:] for w in labels if w >= 0), len(words))
    if first >= len(words) or first >= later:
        return []
    shifted = word_timings(words[:later], [[w if w >= first else -1 for w in id_word[sentence]]], [id_samples])
    return [WordTiming(w.word, w.start + offset, w.end + offset) for w in shifted[first:later]]


def piper_word_timings(text: str, chunks, phonemizer) -> list[WordTiming]:
    """Word timings for the onnxruntime backend: `chunks` from `PiperVoice.synthesize(text,
    include_alignments=True)` of a voice loaded with `PiperVoice.load(..., include_alignments=True)` (each chunk
    is one sentence and carries `phoneme_id_samples`); `phonemizer` a tts.phonemize.Phonemizer of the same voice."""
    ph = phonemizer(text)
    chunks = list(chunks)
    if len(chunks) != len(ph.ids) or any(list(c.phoneme_ids) != ids for c, ids in zip(chunks, ph.ids)):
        raise ValueError("piper's phoneme ids differ from tts.phonemize's for this text")
    if any(c.phoneme_id_samples is None for c in chunks):
        raise ValueError("voice has no alignment output: load it with include_alignments=True")
    return word_timings(ph.words, ph.id_word, [c.phoneme_id_samples for c in chunks])
