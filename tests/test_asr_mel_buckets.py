"""Whisper's log-mel features with the STFT lengths bucketed (asr/features.py LogMel(bucket_frames=...)): the
same features as without, on the CPU and on a GPU. (tests/test_asr_features.py compares LogMel with
faster-whisper; this module does not need it, so it also runs on the GPU machine.)"""

import numpy as np
import pytest
import torch

from agent.audio import load_audio
from asr.features import LogMel


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no GPU"))])
def test_bucketed_stft_lengths_give_the_same_features(speech, monkeypatch, device):
    """With bucket_frames the STFT runs on audio zero-padded to a multiple of the bucket (one cuFFT plan per
    bucket on a GPU instead of one per audio length): the features are the same at every length (prefixes of real
    speech, as the streaming ASR computes them; bit for bit on the CPU, within float32 FFT rounding on a GPU,
    whose FFT may order its sums by the batch of frames), and warm() has run every STFT length they use."""
    a = load_audio(speech / "librispeech/stereo_diarization_left.wav")
    plain, bucketed = LogMel(80, device=device), LogMel(80, bucket_frames=100, device=device)
    lengths = [1600, 15999, 16000, 16001, 16159, 16160, 16161, 16321, 31841, 47999, 48000, len(a)]
    lengths += list(np.random.default_rng(0).integers(1600, len(a), 20))
    seen = set()
    stft = torch.stft

    def spy(x, *args, **kw):
        seen.add(x.shape[-1])
        return stft(x, *args, **kw)

    for t in lengths:
        ref = plain(a[:t])
        with monkeypatch.context() as m:
            m.setattr(torch, "stft", spy)
            ours = bucketed(a[:t])
        assert ours.shape == ref.shape == (80, t // 160)
        if device == "cpu":
            assert torch.equal(ours, ref), t
        else:
            torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    used = set(seen)
    assert all(n % 16000 == 0 for n in used) and len(used) < len(lengths) / 2
    seen.clear()
    monkeypatch.setattr(torch, "stft", spy)
    assert bucketed.warm(30 * 16000) == 31
    assert used <= seen and len(seen) == 31
