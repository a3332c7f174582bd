"""Torch log-mel vs faster-whisper's FeatureExtractor on real speech. Tolerance: max |diff| < 1e-4 in the
normalised log-mel (values span about [-1, 2]); the difference is float32 FFT rounding."""

import numpy as np
import pytest
import torch

from agent.audio import load_audio
from asr.features import LogMel, mel_filters

fe_mod = pytest.importorskip("faster_whisper.feature_extractor")


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_equal(n_mels):
    np.testing.assert_allclose(mel_filters(n_mels), fe_mod.FeatureExtractor(n_mels).mel_filters, atol=1e-7)


@pytest.mark.parametrize("clip", ["jfk/jfk.flac", "librispeech/stereo_diarization_left.wav"])
def test_logmel_matches_faster_whisper(speech, clip):
    audio = load_audio(speech / clip)
    ref = fe_mod.FeatureExtractor(80)(audio)[..., :-1]  # what WhisperModel.transcribe uses
    ours = LogMel(80)(audio).numpy()
    assert ours.shape == ref.shape == (80, len(audio) // 160)
    assert np.abs(ours - ref).max() < 1e-4


def test_batched_equals_single(speech):
    a = load_audio(speech / "librispeech/stereo_diarization_left.wav")
    b = a[::-1].copy()
    mel = LogMel(80)
    both = mel(torch.from_numpy(np.stack([a, b])))
    torch.testing.assert_close(both[0], mel(a))
    torch.testing.assert_close(both[1], mel(b))
