"""Text -> Piper phoneme ids (espeak-ng through piper-tts's bundled bridge, CPU), with each id's source word.

The ids are exactly what `PiperVoice.phonemize` + `phonemes_to_ids` give (BOS, PAD after every phoneme, EOS;
one id list per espeak sentence), so the torch and ONNX backends hear the same input. On top of that every id
carries the index of the text word it voices (`text.split()` tokens), or -1 (BOS/EOS, spaces, punctuation).

Word mapping. espeak phonemizes a whole clause, so its space-separated phoneme words do not always match the
text's words: numbers and symbols expand ("$5" -> "fˈaɪv dˈɑːlɚz"), function words merge ("of the" -> "ʌvðə"),
"Dr." ends a sentence. Fast path: when every token is a plain word and the phoneme-word count equals the token
count, the n-th phoneme word is the n-th token. Otherwise each token is phonemized alone and its phoneme letters
are aligned to the clause's (difflib on codepoints, stress marks ignored); each clause phoneme takes the label of
its aligned letter or of its left neighbour, and labels are forced monotone.
"""

from __future__ import annotations

import difflib
import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

_LOCK = threading.Lock()  # espeak-ng is a process-wide singleton
_READY = False
_VOICE: list[str] = []  # the voice espeak-ng has loaded: set again only when it changes — every espeak_SetVoiceByName
# leaks ~1.3 KB inside espeak-ng (measured: 2,000 calls +2.6 MB of glibc in-use bytes, 0 with the voice set once),
# and a phrase called it once per clause plus once per word on the alignment path (~3.5 times on average for random
# 1-24-word phrases: 4.56 KB a phrase): part of issue 9's soak growth at many callers

BOS, EOS, PAD = "^", "$", "_"
_PUNCT = set(".,;:!?¡¿—…\"«»“”()'-") | {" "}
_IGNORE = set("ˈˌ")  # stress marks: context-dependent, ignored when aligning
_PLAIN = re.compile(r"^[\"'(“«]*[A-Za-z]+(?:'[A-Za-z]+)?[.,;:!?\"')”»]*$")


@dataclass
class Phonemized:
    words: list[str]  # text.split()
    ids: list[list[int]]  # per sentence
    id_word: list[list[int]]  # per sentence, per id: word index or -1
    id_phone: list[list[int]]  # per sentence, per id: index into that sentence's phonemes, or -1 (BOS/EOS)
    phonemes: list[list[str]]  # per sentence (codepoints, as piper)

    @property
    def n_ids(self) -> int:
        return sum(len(s) for s in self.ids)


def _espeak(voice: str, text: str) -> list[tuple[str, str, bool]]:
    """-> [(phonemes, terminator, end_of_sentence)] per clause."""
    global _READY
    from piper import espeakbridge  # only the bridge and its data dir: piper's other modules are not needed

    with _LOCK:
        if not _READY:
            espeakbridge.initialize(str(Path(espeakbridge.__file__).parent / "espeak-ng-data"))
            _READY = True
        if _VOICE != [voice]:
            espeakbridge.set_voice(voice)
            _VOICE[:] = [voice]
        return espeakbridge.get_phonemes(text)


def _sentences(voice: str, text: str) -> list[list[str]]:
    """Same grouping and codepoints as piper's EspeakPhonemizer.phonemize (no vowel clusters)."""
    out, cur = [], []
    for phon, term, end in _espeak(voice, text):
        phon = re.sub(r"\([^)]+\)", "", phon) + term
        if term in (",", ":", ";"):
            phon += " "
        cur.extend(unicodedata.normalize("NFD", phon))
        if end:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return [s for s in out if s]


def _letters(phonemes: list[str]) -> list[int]:
    """Positions of the codepoints that carry sound (not spaces, punctuation or stress)."""
    return [i for i, p in enumerate(phonemes) if p not in _PUNCT and p not in _IGNORE]


def label_phonemes(voice: str, words: list[str], flat: list[str]) -> list[int]:
    """Word index (or -1) of every codepoint of the concatenated sentences' phonemes."""
    labels = [-1] * len(flat)
    letters = _letters(flat)
    # fast path: plain words, one phoneme word each
    groups, cur = [], []  # codepoint indices of each phoneme word (split at spaces and punctuation)
    for i, p in enumerate(flat):
        if p in _PUNCT:
            if cur:
                groups.append(cur)
                cur = []
        else:
            cur.append(i)
    if cur:
        groups.append(cur)
    groups = [g for g in groups if any(flat[i] not in _IGNORE for i in g)]
    if len(groups) == len(words) and all(_PLAIN.match(w) for w in words):
        for w, g in enumerate(groups):
            for i in g:
                labels[i] = w
        return labels
    # slow path: align each word's own phonemes to the clause phonemes
    ref, ref_word = [], []
    for w, word in enumerate(words):
        for sent in _sentences(voice, word):
            for i in _letters(sent):
                ref.append(sent[i])
                ref_word.append(w)
    hyp = [flat[i] for i in letters]
    sm = difflib.SequenceMatcher(None, ref, hyp, autojunk=False)
    hyp_word = [-1] * len(hyp)
    for a, b, n in sm.get_matching_blocks():
        for k in range(n):
            hyp_word[b + k] = ref_word[a + k]
    # a phoneme word with no aligned letter ("a" is "ˈeɪ" alone, "ɐ" in a clause) goes to the next word that
    # got no letters, if one lies between its neighbours; other unmatched letters join their left neighbour
    pos = {i: k for k, i in enumerate(letters)}
    prev = -1
    for gi, g in enumerate(groups):
        ks = [pos[i] for i in g if i in pos]
        if not ks:
            continue
        if all(hyp_word[k] < 0 for k in ks):
            nxt = next((hyp_word[pos[i]] for h in groups[gi + 1:] for i in h if i in pos and hyp_word[pos[i]] >= 0),
                       len(words))
            if prev + 1 < nxt:
                for k in ks:
                    hyp_word[k] = prev + 1
        prev = max([prev] + [hyp_word[k] for k in ks])
    last = next((w for w in hyp_word if w >= 0), 0)
    for k, w in enumerate(hyp_word):
        last = max(last, w) if w >= 0 else last
        hyp_word[k] = last
    for k, i in enumerate(letters):
        labels[i] = hyp_word[k]
    # stress marks inside a word take the label of the next letter
    for i in range(len(flat) - 1, -1, -1):
        if flat[i] in _IGNORE and i + 1 < len(flat):
            labels[i] = labels[i + 1]
    return labels


def ids_with_words(phonemes: list[str], labels: list[int], id_map: dict[str, list[int]]):
    """piper's phonemes_to_ids, carrying labels: BOS PAD (p PAD)* EOS; a phoneme's PAD belongs to it.
    -> (ids, word index per id, phoneme index per id)."""
    ids, words = list(id_map[BOS]) + list(id_map[PAD]), [-1] * (len(id_map[BOS]) + len(id_map[PAD]))
    phones = list(words)
    for k, (p, w) in enumerate(zip(phonemes, labels)):
        if p not in id_map:
            continue  # piper skips (and logs) unknown phonemes
        n = len(id_map[p]) + len(id_map[PAD])
        ids += list(id_map[p]) + list(id_map[PAD])
        words += [w] * n
        phones += [k] * n
    ids += list(id_map[EOS])
    words += [-1] * len(id_map[EOS])
    phones += [-1] * len(id_map[EOS])
    return ids, words, phones


class Phonemizer:
    def __init__(self, voice: str, id_map: dict[str, list[int]]):
        self.voice, self.id_map = voice, id_map

    @classmethod
    def from_json(cls, cfg: dict) -> "Phonemizer":
        if cfg.get("phoneme_type", "espeak") != "espeak":
            raise ValueError("only espeak voices")
        return cls(cfg["espeak"]["voice"], cfg["phoneme_id_map"])

    def __call__(self, text: str) -> Phonemized:
        words = text.split()
        sents = _sentences(self.voice, text)
        labels = label_phonemes(self.voice, words, [p for s in sents for p in s])
        out = Phonemized(words, [], [], [], sents)
        k = 0
        for s in sents:
            ids, w, ph = ids_with_words(s, labels[k:k + len(s)], self.id_map)
            k += len(s)
            out.ids.append(ids)
            out.id_word.append(w)
            out.id_phone.append(ph)
        return out
