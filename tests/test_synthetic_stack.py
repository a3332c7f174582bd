"""The GPU benchmarks' synthetic stack (configs/gpu-bench.toml, bench/gpu_stack.py), on CPU with small shapes:
scripted transcripts behave like real ones across a pause, and a scripted reply is the script's text even when its
first phrase was drafted on a fork."""

from pathlib import Path

import numpy as np
import pytest

from agent import models
from agent.audio import load_audio
from agent.config import LLMConfig
from speechdata import SPEECH, dev_set

SCRIPT = "what time does the pharmacy on main street close tonight and do they have my prescription ready"
REPLY = "Sure, let me check that for you. The pharmacy closes at nine tonight."


@pytest.fixture(scope="module")
def asr():
    from asr.torch_backend import TorchWhisperASR

    return TorchWhisperASR(shape="tiny.en", device="cpu", script=SCRIPT)


def test_scripted_transcript_depends_on_speech_not_on_trailing_silence(asr):
    row = next(r for r in dev_set() if 2.5 <= float(r["duration_s"]) <= 6)
    audio = load_audio(SPEECH / row["file"])
    text = asr.transcribe(audio)
    words = text.split()
    assert words == SCRIPT.split()[:len(words)]
    assert abs(len(words) - asr.WORDS_PER_S * asr.speech_seconds(audio)) <= 1
    pause = np.concatenate([audio, np.zeros(16_000, np.float32)])  # the endpoint after a pause: same words
    assert asr.transcribe(pause) == text
    half = audio[: len(audio) // 2]  # the user had said less at an earlier pause
    assert len(asr.transcribe(half).split()) < len(words)
    assert asr.transcribe(np.zeros(32_000, np.float32)) == ""


def test_scripted_transcript_is_for_synthetic_weights_only():
    from asr.torch_backend import TorchWhisperASR

    with pytest.raises(ValueError, match="synthetic"):
        TorchWhisperASR(models.require("whisper-tiny.en"), script="a b c")


@pytest.fixture(scope="module")
def llm():
    from agent.llm_adapter import ChatLLM

    cfg = LLMConfig(model="synthetic:smollm2-135m", tokenizer="smollm2-135m-instruct", script_reply=REPLY,
                    max_new_tokens=64, max_context_tokens=512)
    return ChatLLM.load(cfg, Path(cfg.model), max_sessions=2)


def test_scripted_reply_whole_and_after_a_drafted_phrase(llm):
    s = llm.new_session()
    s.add_user("What time does the pharmacy close?")
    whole = list(s.generate_reply())
    assert llm.decode(whole) == REPLY
    assert s.s._request is None  # the engine's request ended with the reply
    s.end_reply(whole)

    s.add_user("And tomorrow?")
    draft = s.fork()  # as a pause-time draft: the first tokens on a fork, then adopted and continued
    g = draft.generate_reply()
    first = [next(g) for _ in range(5)]
    g.close()
    assert draft.s._request is None  # closing the reply's iterator ends the engine's request at once
    rest = list(draft.generate_reply(64 - len(first)))
    assert llm.decode(first + rest) == REPLY
    draft.end_reply(first + rest)
    s.free()
    draft.free()


def test_the_carried_speech_clips_hold_the_same_samples(tmp_path):
    """bench/gpu_stack.py copy_speech stores the clips FLAC-compressed under their own names, to fit a GPU call's
    carry: what load_audio reads from the copy must be the original's samples, bit for bit."""
    import csv

    import soundfile as sf

    from agent.audio import load_audio_native
    from bench.gpu_stack import copy_speech

    copy_speech(SPEECH, tmp_path / "speech", max_s=3.0)
    copied = [p for p in (tmp_path / "speech").rglob("*") if p.is_file() and p.name != "manifest.tsv"]
    assert len(copied) >= 5
    assert (tmp_path / "speech" / "manifest.tsv").exists()
    flac = 0
    for p in copied:
        rel = p.relative_to(tmp_path / "speech")
        a, sr_a = load_audio_native(SPEECH / rel)
        b, sr_b = load_audio_native(p)
        assert sr_a == sr_b and np.array_equal(a, b), rel
        flac += sf.info(str(p)).format == "FLAC"
    assert flac >= 1  # the copies really are compressed
    with open(tmp_path / "speech" / "manifest.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert {r["file"] for r in rows} == {str(p.relative_to(tmp_path / "speech")) for p in copied}
    for r in rows:  # each row describes the file as carried
        p = tmp_path / "speech" / r["file"]
        assert int(r["bytes"]) == p.stat().st_size and r["format"].split("/")[0] == sf.info(str(p)).format, r
    assert sum(p.stat().st_size for p in copied) < sum((SPEECH / p.relative_to(tmp_path / "speech")).stat().st_size
                                                        for p in copied)
