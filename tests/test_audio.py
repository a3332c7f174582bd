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


def same_samples(x, y):
    """Equal up to float32 rounding: the matrix products' summation order depends on how many rows a chunk has."""
    assert len(x) == len(y)
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


def test_stream_resampler_flush_ends_one_stream_and_starts_the_next():
    """A reply's end: flush() returns what the filter still holds, so the stream equals the whole signal resampled
    at once, and the next reply starts clean (none of the last one's tail in it); reset() drops the tail."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(n).astype(np.float32) * 0.1 for n in (22050, 7000))

    def at_once(x):
        rs = StreamResampler(22050, 8000)
        return np.concatenate([rs(x), rs.flush()])

    rs = StreamResampler(22050, 8000)
    held = np.concatenate([rs(a[i:i + 1024]) for i in range(0, len(a), 1024)])
    assert 8000 - 0.008 * 8000 < len(held) < 8000  # a few ms held back, no more
    same_samples(np.concatenate([held, rs.flush()]), at_once(a))
    assert len(at_once(a)) == len(resample(a, 22050, 8000))  # as long as soxr's one-shot
    same_samples(np.concatenate([rs(b), rs.flush()]), at_once(b))
    rs(a)
    rs.reset()
    same_samples(np.concatenate([rs(b), rs.flush()]), at_once(b))
    same = StreamResampler(16000, 16000)
    assert len(same.flush()) == 0 and len(same(b)) == len(b)


@pytest.mark.parametrize("src,dst", [(8000, 16000), (22050, 8000), (48000, 16000), (24000, 16000), (22050, 24000),
                                     (44100, 16000), (11025, 16000)])
def test_stream_resampler_is_accurate_and_prompt(src, dst):
    """Any chunking gives the same samples (to float32 rounding); a passband tone comes out as the exact sine at the
    new rate; what lies past the lower Nyquist frequency is gone (>= 75 dB down); the output lags the input by < 8 ms
    (soxr's stream: up to 115 ms), with no delay of its own (an impulse lands where it should)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(src).astype(np.float32) * 0.1
    rs = StreamResampler(src, dst)
    whole = np.concatenate([rs(x), rs.flush()])
    parts, i = [], 0
    while i < len(x):
        k = int(rng.integers(1, 900))
        parts.append(rs(x[i:i + k]))
        i += k
    same_samples(np.concatenate(parts + [rs.flush()]), whole)
    # passband: a sine at 30 % of the lower rate
    f = 0.3 * min(src, dst)
    y = np.concatenate([rs(np.sin(2 * np.pi * f * np.arange(src) / src).astype(np.float32)), rs.flush()])
    mid = slice(len(y) // 4, 3 * len(y) // 4)
    assert np.abs(y[mid] - np.sin(2 * np.pi * f * np.arange(len(y)) / dst)[mid]).max() < 1e-4
    # stopband: downsampling, a sine above the new Nyquist frequency; upsampling, the image of one below the old
    nyq = min(src, dst) / 2
    f = 1.1 * nyq if src > dst else 0.7 * nyq
    y = np.concatenate([rs(np.sin(2 * np.pi * f * np.arange(src) / src).astype(np.float32)), rs.flush()])[mid]
    if src < dst:
        y = y - np.sin(2 * np.pi * f * np.arange(len(y) * 2) / dst)[len(y) // 2: len(y) // 2 + len(y)]
    assert np.abs(y).max() < 10 ** (-75 / 20)
    # promptness: after each 20 ms chunk all but a few ms of it has come out
    n, got = src // 50, 0
    for i in range(0, src, n):
        got += len(rs(x[i:i + n]))
        assert min(i + n, src) / src - got / dst <= rs.lag_s + 1.5 / dst
    assert rs.lag_s < 0.008
    rs.reset()
    imp = np.zeros(src, np.float32)
    imp[src // 2] = 1.0
    y = np.concatenate([rs(imp), rs.flush()])
    assert abs(int(np.argmax(y)) - dst // 2) <= 1


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


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_float_wav_with_non_finite_samples_is_refused_with_a_reason(tmp_path, bad):
    import io

    import soundfile as sf

    from agent.audio import decode_audio_bytes

    x = np.zeros((1600, 2), np.float32)
    x[800, 1] = bad  # one sample of one channel
    path = tmp_path / "float.wav"
    sf.write(str(path), x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(path)
    with pytest.raises(AudioError, match="NaN or infinite"):
        decode_audio_bytes(path.read_bytes())
    x[800, 1] = 0.5  # the same file with a finite sample decodes
    buf = io.BytesIO()
    sf.write(buf, x, 16000, subtype="FLOAT", format="WAV")
    audio, rate = decode_audio_bytes(buf.getvalue())
    assert rate == 16000 and audio.shape == (1600,) and audio[800] == np.float32(0.25)
