"""Word/phoneme timings: the pure mapping, the espeak word labels, and a Whisper check that words land on time."""

import json

import numpy as np
import pytest

from agent import models
from tts.base import WordTiming
from tts.timing import phoneme_timings, word_timings, words_heard


@pytest.fixture(scope="module")
def phonemizer():
    from tts.phonemize import Phonemizer

    voice = models.require("piper-joe-medium")
    return Phonemizer.from_json(json.loads(next(voice.glob("*.onnx.json")).read_text()))


@pytest.fixture(scope="module")
def tts():
    from tts.torch_backend import TorchPiperTTS

    return TorchPiperTTS(noise_scale=0.0, noise_w=0.0)


def words_of(ph):
    """word index -> its phoneme letters (punctuation, spaces, stress dropped)."""
    out = {}
    flat = [p for s in ph.phonemes for p in s]
    from tts.phonemize import label_phonemes

    for p, w in zip(flat, label_phonemes("en-us", ph.words, flat)):
        if w >= 0 and p not in "ˈˌ":
            out.setdefault(w, []).append(p)
    return {ph.words[w]: "".join(v) for w, v in out.items()}


def test_word_timings_pure():
    # two sentences: ids BOS PAD a PAD b PAD EOS (labels -1 -1 0 0 1 1 -1), then BOS PAD c PAD EOS
    words = ["one", "two", "three", "—"]
    id_word = [[-1, -1, 0, 0, 1, 1, -1], [-1, -1, 2, 2, -1]]
    samples = [[256, 0, 512, 256, 768, 0, 256], [0, 256, 256, 512, 256]]
    got = word_timings(words, id_word, samples)
    assert got == [WordTiming("one", 256, 1024), WordTiming("two", 1024, 1792), WordTiming("three", 2304, 3072),
                   WordTiming("—", 3072, 3072)]
    # sentence by sentence, as a backend that streams sentences would call it
    from tts.timing import sentence_word_timings

    part = sentence_word_timings(words, id_word, 0, samples[0], 0) + \
        sentence_word_timings(words, id_word, 1, samples[1], sum(samples[0]))
    assert part == got
    ph = phoneme_timings([["a", "b"], ["c"]], [[-1, -1, 0, 0, 1, 1, -1], [-1, -1, 0, 0, -1]], samples)
    assert [(p.phoneme, p.start, p.end) for p in ph] == [("a", 256, 1024), ("b", 1024, 1792), ("c", 2304, 3072)]


def test_words_heard():
    ws = [WordTiming("a", 0, 100), WordTiming("b", 100, 300), WordTiming("c", 300, 400)]
    assert [w.word for w in words_heard(ws, 0)] == []
    assert [w.word for w in words_heard(ws, 150)] == ["a"]
    assert [w.word for w in words_heard(ws, 200)] == ["a", "b"]
    assert [w.word for w in words_heard(ws, 10_000)] == ["a", "b", "c"]


def test_labels_handle_merges_numbers_and_punctuation(phonemizer):
    ph = phonemizer("What's the time of the day?")  # espeak merges "of the" into one phoneme word
    got = words_of(ph)
    assert got["of"] == "ʌv" and got["day?"] == "dˈeɪ".replace("ˈ", "")
    ph = phonemizer("I owe you $25, Dr. Smith!")  # number + symbol expand; "Dr." ends an espeak sentence
    assert len(ph.ids) == 2
    got = words_of(ph)
    assert "dˈɑːlɚ".replace("ˈ", "") in got["$25,"] and "twɛnti" in got["$25,"]
    assert got["Dr."].startswith("dɑːktɚ") and got["Smith!"] == "smɪθ"
    ph = phonemizer("It's a test — isn't it?")  # a token with no sound, and "a" spoken differently alone
    got = words_of(ph)
    assert "—" not in got and got["a"] == "ɐ"


@pytest.mark.parametrize("text", ["Hello world, how are you today?",
                                  "On May 5th, Dr. Jones paid $1,250... really?"])
def test_timings_monotonic_and_cover_audio(tts, text):
    audio, words = tts.synthesize_full(text)
    assert [w.word for w in words] == text.split()
    assert all(0 <= w.start <= w.end for w in words)
    assert all(a.end <= b.start for a, b in zip(words, words[1:]))
    assert words[-1].end <= len(audio)
    voiced = sum(w.end - w.start for w in words)
    assert voiced >= 0.6 * len(audio)  # the words cover the speech; silence only at edges and pauses
    # the audio inside the word spans carries the energy
    inside = np.zeros(len(audio), bool)
    for w in words:
        inside[w.start:w.end] = True
    assert np.sum(audio[inside] ** 2) >= 0.9 * np.sum(audio ** 2)


@pytest.fixture(scope="module")
def whisper():
    from faster_whisper import WhisperModel

    return WhisperModel(str(models.require("whisper-tiny.en")), device="cpu", compute_type="int8")


def test_words_land_where_whisper_hears_them(tts, whisper):
    """Synthesize a list of words; Whisper tiny.en's word timestamps fall inside the predicted spans."""
    from agent.audio import resample
    from asr.wer import normalize

    text = "Apple, window, seven, purple, mountain, coffee, tiger, pencil, river, orange."
    audio, words = tts.synthesize_full(text)
    audio16 = resample(audio, 22050, 16000)
    segments, _ = whisper.transcribe(audio16, language="en", beam_size=1, word_timestamps=True)
    heard = [(normalize(w.word), w.start, w.end) for s in segments for w in s.words]
    predicted = {normalize(w.word)[0]: (w.start / 22050, w.end / 22050) for w in words}
    hits = 0
    for (word,), start, end in [(h[0], h[1], h[2]) for h in heard if len(h[0]) == 1]:
        if word in predicted:
            p0, p1 = predicted[word]
            mid = (start + end) / 2
            hits += p0 - 0.15 <= mid <= p1 + 0.15
    assert hits >= 8, (heard, predicted)


def test_piper_onnx_word_timings_match_torch(tts, phonemizer):
    """The helper for the onnxruntime backend gives the same word spans as the torch backend (noise 0)."""
    from piper import PiperVoice
    from piper.config import SynthesisConfig

    from tts.piper_weights import VoiceFiles
    from tts.timing import piper_word_timings

    files = VoiceFiles.find(models.require("piper-joe-medium"))
    voice = PiperVoice.load(str(files.onnx), include_alignments=True)
    text = "Dr. Smith owes me $20. Really?"
    syn = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, normalize_audio=False)
    onnx_words = piper_word_timings(text, voice.synthesize(text, syn_config=syn, include_alignments=True), phonemizer)
    _, torch_words = tts.synthesize_full(text)
    assert [w.word for w in onnx_words] == text.split()
    for a, b in zip(onnx_words, torch_words):
        assert abs(a.start - b.start) <= 256 and abs(a.end - b.end) <= 256, (a, b)
    # the streaming form, one piper sentence chunk at a time
    from tts.timing import sentence_word_timings

    ph, streamed, offset = phonemizer(text), [], 0
    for i, chunk in enumerate(voice.synthesize(text, syn_config=syn, include_alignments=True)):
        streamed += sentence_word_timings(ph.words, ph.id_word, i, chunk.phoneme_id_samples, offset)
        offset += len(chunk.audio_float_array)
    assert streamed == onnx_words


def test_barge_in_keeps_the_words_played(tts, whisper):
    """Playback stopped in the middle of a word: words_heard() is what a listener (Whisper) heard, ± one word."""
    from agent.audio import resample
    from asr.wer import normalize

    text = "Please bring your passport and two photos to the office tomorrow."
    audio, words = tts.synthesize_full(text)
    for k in (3, 7):  # stop inside "passport", then inside "to"
        played = (words[k].start + words[k].end) // 2
        kept = [normalize(w.word)[0] for w in words_heard(words, played)]
        segments, _ = whisper.transcribe(resample(audio[:played], 22050, 16000), language="en", beam_size=1)
        heard = normalize(" ".join(s.text for s in segments))
        assert abs(len(heard) - len(kept)) <= 1, (heard, kept)
        n = min(len(heard), len(kept)) - 1  # the last, cut word may come out garbled
        assert heard[:n] == kept[:n], (heard, kept)


def test_espeak_voice_is_loaded_once(phonemizer, monkeypatch):
    """espeak-ng leaks ~1.3 KB per espeak_SetVoiceByName (issue 9's soak growth at many callers: a phrase on the
    alignment path set it once per word). The phonemizer sets it only when it changes."""
    from piper import espeakbridge

    import tts.phonemize as P

    phonemizer("Warm up, please.")  # the voice is loaded by now
    calls = []
    real = espeakbridge.set_voice
    monkeypatch.setattr(espeakbridge, "set_voice", lambda v: (calls.append(v), real(v))[1])
    for text in ("Dr. Smith paid $5 for a cup of the tea at 10:30.", "Of the three, it is the one I like.") * 5:
        out = phonemizer(text)
        assert out.n_ids > 0
    assert calls == []
    P._VOICE.clear()  # as if another voice had been set meanwhile: it is set again, once
    phonemizer("Of the three.")
    assert calls == [phonemizer.voice]
