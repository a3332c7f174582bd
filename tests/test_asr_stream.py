"""Streaming decisions without a model: LocalAgreement, the due rule, the energy gate, loop stripping,
the encoder window policy."""

import numpy as np

from asr.decoding import DecodeOptions, encoder_frames, strip_loop
from asr.stream import EnergyGate, LocalAgreement, StreamPolicy, common_prefix, speech_energy_dbfs


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([7, 8], [7, 8]) == 2


def test_local_agreement_commits_what_two_hypotheses_share():
    la = LocalAgreement()
    assert la.update([1, 2]) == []  # one hypothesis: nothing agreed yet
    assert la.update([1, 3]) == [1]
    assert la.update([1, 3, 4, 5]) == [1, 3]
    assert la.update([1, 3, 4, 6]) == [1, 3, 4]
    # a later hypothesis that no longer starts with the committed tokens never takes them back
    assert la.update([9, 9, 9, 9, 9]) == [1, 3, 4]
    assert la.update([9, 9, 9, 9, 9]) == [1, 3, 4]
    assert la.update([1, 3, 4, 6, 7]) == [1, 3, 4]  # agreement with the previous (9s) is 0
    assert la.update([1, 3, 4, 6, 7, 8]) == [1, 3, 4, 6, 7]


def test_local_agreement_on_a_growing_sentence():
    """Hypotheses of a sentence revealed word by word, with the last word often misheard."""
    words = "ask not what your country can do for you".split()
    hyps = [words[:i] + (["asked"] if i % 2 else []) for i in range(1, len(words) + 1)]
    la, seen = LocalAgreement(), []
    for h in hyps:
        committed = la.update(h)
        assert committed == h[:len(committed)]  # always a prefix of the newest hypothesis
        assert committed[:len(seen)] == seen  # never shrinks
        seen = committed
    assert "asked" not in seen and seen == words[:len(seen)] and len(seen) >= len(words) - 2


def test_policy_due_every_interval():
    p = StreamPolicy(interval_s=0.2)
    assert not p.due(3199, 0)
    assert p.due(3200, 0)
    assert not p.due(6000, 3200)
    assert p.due(6400, 3200)


def test_energy_gate():
    rng = np.random.default_rng(0)
    gate = EnergyGate(-45.0)
    assert gate.is_silent(np.zeros(48000, np.float32))
    assert speech_energy_dbfs(np.zeros(10)) == float("-inf")
    assert gate.is_silent((rng.standard_normal(48000) * 1e-3).astype(np.float32))  # -60 dBFS hiss
    tone = np.zeros(48000, np.float32)
    tone[16000:17600] = 0.1 * np.sin(np.arange(1600) * 0.1)  # 100 ms at about -23 dBFS
    assert not gate.is_silent(tone)


def test_strip_loop():
    assert strip_loop([1, 2, 3, 4, 3, 4, 3, 4]) == [1, 2, 3, 4]
    assert strip_loop([5, 5, 5, 5]) == [5]
    assert strip_loop([1, 2, 1, 2]) == [1, 2, 1, 2]  # two copies can be real speech ("five five")
    assert strip_loop([1, 2, 3]) == [1, 2, 3]


def test_encoder_window():
    pad = DecodeOptions(window="pad30")
    trunc = DecodeOptions(window="trunc", pad_frames=100, bucket_frames=100)
    assert encoder_frames(120, pad) == 3000
    assert encoder_frames(120, trunc) == 300
    assert encoder_frames(200, trunc) == 300
    assert encoder_frames(2990, trunc) == 3000
    assert encoder_frames(120, pad, window="trunc") == 300
