"""The audio end-of-turn judge (smart-turn v3.2) on real speech: finished utterances vs the same utterances cut
mid-sentence at a word gap, its input features, its errors, and how the runtime loads it."""

import numpy as np
import pytest
from speechdata import dev_set

from agent import models
from agent.audio import INTERNAL_RATE, load_audio
from agent.config import Config, ConfigError
from agent.runtime import load_judge
from agent.turn_judge import SmartTurn, features, last_window
from agent.vad import SileroVAD, speech_bounds

PRE_ROLL_S = 0.3  # what the session keeps before the speech start
TAIL_S = 0.1  # s of silence the judge hears here ([turn] judge_after_ms is 32; bench/pause_judge.py: 32-640 ms)


@pytest.fixture(scope="module")
def judge():
    return SmartTurn(models.require("smart-turn-v3.2"))


def test_features_match_whisper_feature_extractor_with_8s_chunk():
    """The preprocessing the model was trained with: transformers' WhisperFeatureExtractor(chunk_length=8) on the
    last 8 s, zero-padded at the start, waveform normalised."""
    tf = pytest.importorskip("transformers")
    fe = tf.WhisperFeatureExtractor(chunk_length=8)
    rng = np.random.default_rng(0)
    for n in (3 * INTERNAL_RATE, 11 * INTERNAL_RATE):  # shorter than the window (padded) and longer (cut)
        x = (rng.standard_normal(n) * 0.1).astype(np.float32)
        ref = fe(last_window(x), sampling_rate=INTERNAL_RATE, return_tensors="np", padding="max_length",
                 max_length=8 * INTERNAL_RATE, truncation=True, do_normalize=True).input_features[0]
        ours = features(x)
        assert ours.shape == (80, 800) and ref.shape == (80, 800)
        assert np.abs(ours - ref).max() < 1e-4


def test_last_window_pads_at_the_start_and_keeps_the_end():
    x = np.arange(1, 101, dtype=np.float32)
    w = last_window(x, seconds=1)
    assert len(w) == INTERNAL_RATE and w[-1] == 100 and w[-100] == 1 and not w[:-100].any()
    long = np.arange(3 * INTERNAL_RATE, dtype=np.float32)
    assert np.array_equal(last_window(long, seconds=1), long[-INTERNAL_RATE:])


def _pairs(speech, n: int):
    """(finished, cut) audio pairs as the session hands them to the judge at a pause: from 0.3 s before the
    speech start to 0.1 s into the silence. Finished: dev clips whose reference is a whole sentence (ends with
    . ? !). Cut: the same clip up to a word gap in its middle third (faster-whisper word timestamps), after a
    word that ends no sentence and no clause, then silence."""
    from faster_whisper import WhisperModel

    vad = SileroVAD(models.require("silero-vad"))
    wm = WhisperModel(str(models.require("whisper-tiny.en")), device="cpu", compute_type="int8")
    rows = [r for r in dev_set() if r["reference"].rstrip().endswith((".", "?", "!"))
            and len(r["reference"].split()) >= 7 and float(r["duration_s"]) <= 10]
    pad = np.zeros(INTERNAL_RATE, np.float32)
    out = []
    for r in rows:
        if len(out) >= n:
            break
        audio = load_audio(speech / r["file"])
        segs, _ = wm.transcribe(audio, word_timestamps=True, condition_on_previous_text=False, language="en")
        words = [w for s in segs for w in (s.words or [])]
        mid = [i for i in range(len(words) // 3, 2 * len(words) // 3)
               if not words[i].word.strip().endswith((".", "?", "!", ",", ";", ":"))]
        if len(words) < 6 or not mid:
            continue
        i = mid[len(mid) // 2]
        cut = int((words[i].end + words[i + 1].start) / 2 * INTERNAL_RATE)
        start, end = speech_bounds(vad, audio)
        a = int(max(0.0, start - PRE_ROLL_S) * INTERNAL_RATE)
        x = np.concatenate([audio, pad])
        finished = x[a:int((end + TAIL_S) * INTERNAL_RATE)]
        y = np.concatenate([audio[:cut], pad])
        cut_end = speech_bounds(vad, y)[1]
        out.append((r["file"], finished, y[a:int((cut_end + TAIL_S) * INTERNAL_RATE)]))
    return out


def test_finished_utterances_score_higher_than_cut_ones(judge, speech):
    pairs = _pairs(speech, 12)
    assert len(pairs) >= 10
    res = [(f, judge.p_end(full), judge.p_end(cut)) for f, full, cut in pairs]
    for f, pf, pc in res:
        print(f"{f:<45} finished {pf:.3f}  cut {pc:.3f}")
    pf = np.array([r[1] for r in res])
    pc = np.array([r[2] for r in res])
    higher = float(np.mean(pf > pc))
    print(f"finished > cut on {higher:.0%} of {len(res)} pairs; median {np.median(pf):.3f} vs {np.median(pc):.3f}")
    assert higher >= 0.7
    assert np.median(pf) - np.median(pc) >= 0.3


def test_bad_audio_is_a_clear_error(judge):
    with pytest.raises(ValueError, match="no audio"):
        judge.p_end(np.zeros(0, np.float32))
    bad = np.zeros(INTERNAL_RATE, np.float32)
    bad[100] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        judge.p_end(bad)
    p = judge.p_end(np.zeros(INTERNAL_RATE, np.float32))  # silence is valid input: some probability
    assert 0.0 <= p <= 1.0


def test_runtime_loads_the_judge_from_config(tmp_path):
    cfg = Config.from_dict({"turn": {"judge": "smart-turn-v3.2", "llm_p_end": False}})
    j = load_judge(cfg)
    assert isinstance(j, SmartTurn) and cfg.turn.llm_p_end is False
    assert Config().turn.judge == ""  # off unless configured
    with pytest.raises(ConfigError):
        Config.from_dict({"turn": {"judje": "smart-turn-v3.2"}})
    cfg = Config.from_dict({"turn": {"judge": str(tmp_path / "missing.onnx")}})
    with pytest.raises(models.ModelError, match="turn judge model not found"):
        load_judge(cfg)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(Exception):
        load_judge(Config.from_dict({"turn": {"judge": str(bad)}}))


def test_concurrent_verdicts_equal_sequential_ones(speech):
    """judge_workers > 1 (many callers on a GPU server): pauses of different sessions are judged at once, with the
    same verdicts as one at a time."""
    import concurrent.futures as cf

    clips = [load_audio(speech / r["file"]) for r in dev_set()[:4]]
    one = SmartTurn(models.require("smart-turn-v3.2"), concurrency=1)
    many = SmartTurn(models.require("smart-turn-v3.2"), concurrency=3)
    with cf.ThreadPoolExecutor(3) as ex:
        together = list(ex.map(many.p_end, clips * 2))
    assert together == [one.p_end(c) for c in clips * 2]
