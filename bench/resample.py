"""Live resampling: how long the stream holds audio back, what it costs, and what it does to the signal —
`agent.audio.StreamResampler` (our polyphase filter) against soxr's stream (HQ, what it replaced), same run.

    python -m bench.resample [--clips 20]        -> bench/results/resample_cpu.json

Per rate pair the transports use (8 kHz phone audio in and out, 24/48 kHz Realtime and WebRTC, Piper's 22.05 kHz):
- lag_ms mean/max: input time minus output time after each 20 ms chunk, i.e. how late the VAD (input) or the
  listener (output) gets each sample;
- cpu_ms_per_s: wall time to stream one second of noise in 20 ms chunks (one core, median of 5);
- tone_err: max |error| on a sine at 30 % of the lower rate vs the exact sine (passband accuracy);
- alias_db: what is left of a full-scale sine at 1.1 x the output's Nyquist frequency (downsampling: all of it
  is alias), or of the image of one at 0.7 x the input's Nyquist (upsampling), in dB (stopband);
- snr_vs_soxr_db on real speech (the two filters' passbands end at different frequencies, so this is not an
  error figure: it says how much the outputs differ).
With --clips N: Whisper tiny.en WER on N real clips sent as 8 kHz mu-law (a phone call) and brought back to
16 kHz by each resampler — the Twilio input path.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soxr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from agent.audio import StreamResampler, load_audio, resample, ulaw_decode, ulaw_encode  # noqa: E402
from bench.common import result_header, write_result  # noqa: E402

PAIRS = [(8000, 16000, "phone in (Twilio, Realtime g711)"), (22050, 8000, "Piper -> phone out"),
         (48000, 16000, "WebRTC in"), (24000, 16000, "Realtime pcm16 in"), (22050, 24000, "Piper -> Realtime out"),
         (22050, 48000, "Piper -> WebRTC out"), (44100, 16000, "44.1 kHz client in")]
CHUNK_S = 0.02


class Soxr:
    def __init__(self, src, dst):
        self.rs = soxr.ResampleStream(src, dst, 1, dtype="float32", quality="HQ")

    def __call__(self, x, last=False):
        return self.rs.resample_chunk(x, last=last)


def stream(rs, x, src):
    n = int(src * CHUNK_S)
    return [rs(x[i:i + n]) for i in range(0, len(x), n)]


def lag_ms(make, src, dst, seconds=3.0):
    x = np.random.default_rng(0).standard_normal(int(src * seconds)).astype(np.float32) * 0.1
    n, got, lags = int(src * CHUNK_S), 0, []
    rs = make(src, dst)
    for i in range(0, len(x), n):
        got += len(rs(x[i:i + n]))
        lags.append((min(i + n, len(x)) / src - got / dst) * 1000)
    lags = lags[5:]  # past the start
    return round(float(np.mean(lags)), 2), round(float(np.max(lags)), 2)


def cpu_ms_per_s(make, src, dst):
    x = np.random.default_rng(1).standard_normal(src).astype(np.float32) * 0.1
    times = []
    for _ in range(5):
        rs = make(src, dst)
        t0 = time.perf_counter()
        stream(rs, x, src)
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 3)


def whole(make, x, src, dst):
    rs = make(src, dst)
    return np.concatenate(stream(rs, x, src) + [rs(np.zeros(0, np.float32), last=True)])


def tone_err(make, src, dst):
    f = 0.3 * min(src, dst)
    x = np.sin(2 * np.pi * f * np.arange(2 * src) / src).astype(np.float32)
    y = whole(make, x, src, dst)
    ref = np.sin(2 * np.pi * f * np.arange(len(y)) / dst)
    a, b = len(y) // 4, 3 * len(y) // 4
    return float(np.abs(y[a:b] - ref[a:b]).max())


def alias_db(make, src, dst):
    nyq = min(src, dst) / 2
    f = nyq * 1.1 if src > dst else nyq * 0.7  # downsampling: above the new Nyquist; upsampling: its image
    x = np.sin(2 * np.pi * f * np.arange(2 * src) / src).astype(np.float32)
    y = whole(make, x, src, dst)
    y = y[len(y) // 4: 3 * len(y) // 4]
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y)))) / (np.hanning(len(y)).sum() / 2)
    freqs = np.fft.rfftfreq(len(y), 1 / dst)
    if src > dst:  # everything left is alias
        return round(20 * np.log10(spec.max() + 1e-12), 1)
    image = 2 * nyq - f  # ... the tone itself stays; its mirror around the old Nyquist must not appear
    k = np.argmin(np.abs(freqs - image))
    return round(20 * np.log10(spec[max(0, k - 3):k + 4].max() + 1e-12), 1)


def snr_vs_soxr(speech, src, dst):
    x = resample(speech, 16000, src)
    a, b = whole(StreamResampler, x, src, dst), whole(Soxr, x, src, dst)
    n = min(len(a), len(b))
    return round(float(10 * np.log10(np.sum(b[:n] ** 2) / np.sum((a[:n] - b[:n]) ** 2))), 1)


def phone_wer(n_clips):
    from faster_whisper import WhisperModel

    from agent import models
    from asr.wer import wer
    from speechdata import SPEECH, dev_set

    wm = WhisperModel(str(models.require("whisper-tiny.en")), device="cpu", compute_type="int8", cpu_threads=2)
    rows = [r for r in dev_set() if float(r["duration_s"]) <= 12][:n_clips]
    refs, hyps = [], {"ours": [], "soxr": []}
    for r in rows:
        phone = ulaw_decode(ulaw_encode(load_audio(SPEECH / r["file"], 8000)))  # what a phone call carries
        refs.append(r["reference"])
        for name, make in (("ours", StreamResampler), ("soxr", Soxr)):
            segs, _ = wm.transcribe(whole(make, phone, 8000, 16000), language="en", beam_size=1,
                                    condition_on_previous_text=False)
            hyps[name].append(" ".join(s.text.strip() for s in segs))
    return {"clips": len(rows), "wer_ours": round(wer(refs, hyps["ours"]), 4),
            "wer_soxr_hq": round(wer(refs, hyps["soxr"]), 4),
            "transcripts_equal": sum(a == b for a, b in zip(hyps["ours"], hyps["soxr"]))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=20, help="phone-path WER clips (0: skip)")
    args = ap.parse_args()
    from speechdata import SPEECH

    speech = load_audio(SPEECH / "ljspeech" / "LJ001-0001.wav")
    out = result_header(method=__doc__.split("\n\n")[1].strip(), chunk_ms=CHUNK_S * 1000, pairs={})
    for src, dst, use in PAIRS:
        row = {"use": use}
        for name, make in (("ours", StreamResampler), ("soxr_hq", Soxr)):
            m, mx = lag_ms(make, src, dst)
            row[name] = {"lag_ms_mean": m, "lag_ms_max": mx, "cpu_ms_per_s": cpu_ms_per_s(make, src, dst),
                         "tone_err": float(f"{tone_err(make, src, dst):.2e}"), "alias_db": alias_db(make, src, dst)}
        row["snr_vs_soxr_db"] = snr_vs_soxr(speech, src, dst)
        out["pairs"][f"{src}->{dst}"] = row
        print(f"{src}->{dst}: {row}", flush=True)
    if args.clips:
        out["phone_in_wer"] = phone_wer(args.clips)
        print("phone_in_wer", out["phone_in_wer"], flush=True)
    print("->", write_result("resample_cpu.json", out))


if __name__ == "__main__":
    main()
