"""How long an encoder window Whisper tiny.en needs on CPU: WER and time per utterance vs the window (CTranslate2
int8, 2 threads, the 45 dev clips of tests/speechdata.py dev_set, references from the source).

Variants, all greedy without timestamps:
  pad30 / fixed15 / fixed10 / fixed8 : features zero-padded to 30 / 15 / 10 / 8 s (or the utterance, if longer)
  utt+2s / utt+5s                    : the utterance's frames + 2 / 5 s of zero frames
  fw_transcribe                      : faster-whisper's own `transcribe` (VAD filter, 30 s, temperature fallback):
                                       what asr/fw.py ran before, `window="pad30"` - the baseline
  fw_short                           : asr/fw.py `window="short"` (VAD filter, the shortest of 10/15/20/30 s that
                                       holds the utterance + 1 s, token cap, loops cut) - the default now
  *_phone                            : the last two on the clips after a phone-line round trip (8 kHz mu-law, as
                                       the Twilio transport hears a caller)
Writes bench/results/asr_window_cpu.json (WER, encoder ms p50, total ms p50, clips whose text equals pad30's).

    python bench/asr_window.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from agent.audio import load_audio, resample, ulaw_decode, ulaw_encode  # noqa: E402
from agent.models import require  # noqa: E402
from asr.wer import wer  # noqa: E402
from bench.common import result_header, write_result  # noqa: E402
from speechdata import SPEECH, dev_set  # noqa: E402


def main() -> int:
    import ctranslate2

    from asr.fw import FasterWhisperASR

    path = require("whisper-tiny.en")
    short = FasterWhisperASR(path, cpu_threads=2)
    pad30 = FasterWhisperASR(path, cpu_threads=2, window="pad30")
    m, tok, prompt = short.model, short.tokenizer, short.prompt
    rows = dev_set()
    clips = [(load_audio(str(SPEECH / r["file"])), r["reference"]) for r in rows]

    def direct(frames_for):
        hyps, enc_t, tot_t = [], [], []
        for audio, _ in clips:
            feat = m.feature_extractor(audio)[:, :-1]
            n = feat.shape[1]
            f = frames_for(n)
            x = np.zeros((1, feat.shape[0], f), np.float32)
            x[0, :, :min(n, f)] = feat[:, :min(n, f)]
            t0 = time.perf_counter()
            enc = m.model.encode(ctranslate2.StorageView.from_array(x), to_cpu=False)
            t1 = time.perf_counter()
            r = m.model.generate(enc, [prompt], beam_size=1, max_length=448, suppress_blank=True, suppress_tokens=[-1])
            tot_t.append(time.perf_counter() - t0)
            enc_t.append(t1 - t0)
            hyps.append(tok.decode([i for i in r[0].sequences_ids[0] if i < tok.eot]).strip())
        return hyps, enc_t, tot_t

    def phone(audio):
        return resample(ulaw_decode(ulaw_encode(resample(audio, 16000, 8000))), 8000, 16000)

    def whole(asr, via=lambda a: a):
        hyps, tot_t = [], []
        for audio, _ in clips:
            audio = via(audio)
            t0 = time.perf_counter()
            hyps.append(asr.transcribe(audio))
            tot_t.append(time.perf_counter() - t0)
        return hyps, None, tot_t

    even = lambda n: n + (n % 2)  # noqa: E731
    variants = {
        "pad30": lambda: direct(lambda n: 3000),
        "fixed15": lambda: direct(lambda n: max(1500, even(n))),
        "fixed10": lambda: direct(lambda n: max(1000, even(n))),
        "fixed8": lambda: direct(lambda n: max(800, even(n))),
        "utt+2s": lambda: direct(lambda n: even(n) + 200),
        "utt+5s": lambda: direct(lambda n: even(n) + 500),
        "fw_transcribe": lambda: whole(pad30),
        "fw_short": lambda: whole(short),
        "fw_transcribe_phone": lambda: whole(pad30, phone),
        "fw_short_phone": lambda: whole(short, phone),
    }
    refs = [r for _, r in clips]
    res, base = {}, None
    for name, run in variants.items():
        hyps, enc_t, tot_t = run()
        base = base or hyps
        res[name] = {"wer_pct": round(100 * wer(refs, hyps), 2),
                     "encoder_ms_p50": None if enc_t is None else round(1000 * float(np.median(enc_t)), 1),
                     "total_ms_p50": round(1000 * float(np.median(tot_t)), 1),
                     "total_ms_mean": round(1000 * float(np.mean(tot_t)), 1),
                     "same_text_as_pad30": sum(a == b for a, b in zip(hyps, base))}
        print(name, res[name], flush=True)
    out = {**result_header(model="whisper-tiny.en (CTranslate2, int8, 2 threads)", clips=len(clips),
                           clip_seconds=[round(len(a) / 16000, 1) for a, _ in clips],
                           baseline="fw_transcribe (faster-whisper's transcribe, 30 s window) in the same run"),
           "variants": res,
           "metrics": {"wer_pct_short": res["fw_short"]["wer_pct"], "wer_pct_baseline": res["fw_transcribe"]["wer_pct"],
                       "wer_pct_short_phone": res["fw_short_phone"]["wer_pct"],
                       "wer_pct_baseline_phone": res["fw_transcribe_phone"]["wer_pct"],
                       "speedup_total_p50": round(res["fw_transcribe"]["total_ms_p50"] / res["fw_short"]["total_ms_p50"], 2)}}
    print(write_result("asr_window_cpu.json", out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
