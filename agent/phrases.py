"""Phrase chunking of the streamed reply: a short first phrase (the caller hears something soon), then
sentence-sized ones (natural prosody). Works on whole tokens so every phrase is a contiguous token range."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SENTENCE_END = re.compile(r"[.!?…]['\")\]]*\s*$")
_CLAUSE_END = re.compile(r"[,;:—–]\s*$")


@dataclass
class Phrase:
    index: int
    text: str
    token_start: int  # token offsets within the reply
    token_end: int


@dataclass
class PhraseChunker:
    first_min_words: int = 3
    first_max_words: int = 8
    min_words: int = 12
    max_words: int = 24
    _text: str = ""
    _tok_start: int = 0
    _n_tok: int = 0
    _count: int = 0

    def push(self, piece: str) -> Phrase | None:
        """Add one token's text; returns a phrase when this token completes one."""
        self._text += piece
        self._n_tok += 1
        words = len(self._text.split())
        first = self._count == 0
        lo, hi = (self.first_min_words, self.first_max_words) if first else (self.min_words, self.max_words)
        if _SENTENCE_END.search(self._text) and (words >= 2 or first):
            return self._cut()
        if _CLAUSE_END.search(self._text) and words >= lo:
            return self._cut()
        if words > hi and piece[:1].isspace():  # this token starts word hi+1: cut before it
            return self._cut(keep_last=True, piece=piece)
        return None

    def flush(self) -> Phrase | None:
        """End of the reply: whatever is left is the last phrase."""
        if not self._text.strip():
            self._text = ""
            return None
        return self._cut()

    def _cut(self, keep_last: bool = False, piece: str = "") -> Phrase | None:
        text, end = self._text, self._n_tok
        if keep_last:
            text, end = text[: len(text) - len(piece)], end - 1
        phrase = Phrase(self._count, text.strip(), self._tok_start, end)
        self._count += 1
        self._tok_start = end
        self._text = piece if keep_last else ""
        return phrase if phrase.text else None
