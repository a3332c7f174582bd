import numpy as np
import pytest

from agent.audio import AudioError, StreamResampler, load_audio, resample, ulaw_decode, ulaw_encode


def test_ulaw_round_trip_is_within_g711_quantisation():
    x = np.sin(np.linspace(0, 200, 8000)).astype(np.float32) * 0.8
    y = ulaw_decode(ulaw_encode(x))
    assert np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-2)) < 0.07  # log-companded: error ~ 1/16 of value
    assert ulaw_encode(np.zeros(1, np.float32)) == b"\xff"  # G.711 silence


def test_resampling_keeps_a_tone_and_streaming_matches_one_shot(speech):
    t = np.arange(48000) / 48000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    y = resample(tone, 48000, 16000)
    assert len(y) == 16000
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spec) - 440) <= 1
    rs = StreamResampler(48000, 16000)
    parts = [rs(tone[i:i + 960]) for i in range(0, len(tone), 960)] + [rs(np.zeros(0, np.float32), last=True)]
    z = np.concatenate(parts)
    n = min(len(z), len(y))
    assert n > 15800 and np.max(np.abs(z[:n] - y[:n])) < 1e-3


def test_stream_resampler_flush_ends_one_stream_and_starts_the_next():
    """A reply's end: flush() returns what the filter still holds, so the stream equals the one-shot resample to its
    last sample, and the next reply starts clean (none of the last one's tail in it); reset() drops the tail."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(n).astype(np.float32) * 0.1 for n in (22050, 7000))
    rs = StreamResampler(22050, 8000)
    held = np.concatenate([rs(a[i:i + 1024]) for i in range(0, len(a), 1024)])
    assert len(held) < 8000 - 100  # without the flush ~55 ms would stay behind
    np.testing.assert_array_equal(np.concatenate([held, rs.flush()]), resample(a, 22050, 8000))
    np.testing.assert_array_equal(np.concatenate([rs(b), rs.flush()]), resample(b, 22050, 8000))
    rs(a)
    rs.reset()
    np.testing.assert_array_equal(np.concatenate([rs(b), rs.flush()]), resample(b, 22050, 8000))
    same = StreamResampler(16000, 16000)
    assert len(same.flush()) == 0 and len(same(b)) == len(b)


def test_load_real_files_of_every_format(speech):
    for rel in ["jfk/jfk.flac", "ljspeech/LJ001-0002.wav", "alsa/Front_Left.wav", "librispeech/stereo_diarization.wav"]:
        a = load_audio(speech / rel)
        assert a.dtype == np.float32 and a.ndim == 1 and 0.05 < np.abs(a).max() <= 1.0


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(bad)
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "nope.wav")
