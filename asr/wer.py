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
    """Fraction of reference words matched (1 - WER, floored at 0): 'the reply audio says the reply text'. Numbers
    count as spoken: both sides go through spell_numbers (Whisper writes "Seven of clubs" as "7 of clubs")."""
    return max(0.0, 1.0 - wer(spell_numbers(ref), spell_numbers(hyp)))


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
        "seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORD = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth",
        "twelve": "twelfth"}


def _int_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, name in ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            rest = n % size
            return _int_words(n // size) + " " + name + ("" if rest == 0 else " " + _int_words(rest))
    raise AssertionError


def spell_numbers(text: str) -> str:
    """Digits to words, identically for references and transcripts: money, ordinals, times, decimals, integers."""
    def number(m: re.Match) -> str:
        s = m.group(0).replace(",", "")
        if ":" in s:
            h, mm = s.split(":")
            return _int_words(int(h)) + ("" if int(mm) == 0 else " " + _int_words(int(mm)))
        if "." in s:
            a, b = s.split(".")
            return _int_words(int(a)) + " point " + " ".join(_ONES[int(d)] for d in b)
        return _int_words(int(s))

    text = re.sub(r"\$(\d[\d,]*)\.(\d\d)\b", r"\1 dollars and \2 cents", text)
    text = re.sub(r"\$(\d[\d,]*(?:\.\d+)?)", lambda m: m.group(1) + " dollars", text)
    text = re.sub(r"\b(\d+)\s*-\s*(\d+)\b", r"\1 to \2", text)  # a range: "5-7 days"
    text = re.sub(r"(\d+)%", r"\1 percent", text)

    def ordinal(m: re.Match) -> str:
        words = _int_words(int(m.group(1))).split()
        last = words[-1]
        words[-1] = _ORD.get(last, last[:-1] + "ieth" if last.endswith("y") else last + "th")
        return " ".join(words)

    text = re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", ordinal, text)
    text = re.sub(r"(\d)([A-Za-z])", r"\1 \2", text)  # "3pm" -> "3 pm"
    return re.sub(r"\d[\d,]*(?::\d\d|\.\d+)?", number, text)

