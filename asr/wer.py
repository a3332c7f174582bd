"""The one text normaliser and word error rate used by every test and benchmark."""

from __future__ import annotations

import re
import unicodedata

_NUM_WORDS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}


def normalize(text: str) -> list[str]:
    """Lower-case, strip accents and punctuation (apostrophes inside words kept), expand a few abbreviations."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = text.replace("-", " ")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    words = [w.strip("'") for w in text.split()]
    return [_NUM_WORDS.get(w, w) for w in words if w]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(refs: list[str] | str, hyps: list[str] | str) -> float:
    """Corpus WER: total edits / total reference words, as a fraction."""
    if isinstance(refs, str):
        refs, hyps = [refs], [hyps]
    errors = words = 0
    for r, h in zip(refs, hyps, strict=True):
        rn, hn = normalize(r), normalize(h)
        errors += edit_distance(rn, hn)
        words += len(rn)
    return errors / max(words, 1)


def word_match(ref: str, hyp: str) -> float:
    """Fraction of reference words matched (1 - WER, floored at 0): 'the reply audio says the reply text'."""
    return max(0.0, 1.0 - wer(ref, hyp))
