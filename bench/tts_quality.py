"""TTS quality on the CPU: torch vs onnxruntime parity, chunked-vs-whole seams, and a TTS -> Whisper round trip.

    python -m bench.tts_quality            -> bench/results/tts_quality.json

- parity_max_abs: TorchPiperTTS (fp32, noise 0) vs the Piper ONNX graph in onnxruntime (scales [0, 1, 0]) on
  20 sentences, max |difference| over all samples.
- chunked_snr_db: streamed output (first chunk 16 frames, then 64, context from the decoder's receptive field)
  vs one decoder call over the whole latent, worst sentence of the 20.
- roundtrip_wer: 50 varied sentences (numbers, names, questions) synthesized with the voice's own noise settings
  (seeded), resampled to 16 kHz, transcribed by faster-whisper base (CPU int8, language en, beam 1), scored by
  asr/wer.py. Numbers: both the reference text and Whisper's transcript go through the same `spell_numbers`
  (digits -> words: "$25" -> "twenty five dollars", "$4.50" -> "four dollars and fifty cents", "5th" -> "fifth",
  "5-7" -> "five to seven", "3pm" -> "three pm") before asr.wer.normalize; the WER on the
  sentences without digits is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import re
import time

import numpy as np
import torch

from asr.wer import spell_numbers
from bench.common import result_header, write_result

PARITY_SENTENCES = [
    "Hello world, how are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella.",
    "Ask her to bring these things with her from the store.",
    "I'd like to book a table for two at eight o'clock.",
    "Is it going to rain in Seattle tomorrow?",
    "Wow! That was fast.",
    "Our flight leaves at 6:45 from gate 12.",
    "She said: \"never again\"; then she left.",
    "Dr. Patel will see you now.",
    "It costs $19.99, plus tax.",
    "Can you spell that for me, one letter at a time?",
    "The meeting is on Tuesday, March 3rd.",
    "Yes.",
    "Turn right, then left, then right again...",
    "Mount Everest is 8,849 meters tall.",
    "We're sorry — the line is busy.",
    "Thank you for calling, have a wonderful evening!",
    "My email is john at example dot com.",
    "Three hundred and sixty five days make a year.",
]

ROUNDTRIP_SENTENCES = [
    "Good morning, how can I help you today?",
    "Your appointment is confirmed for Monday at 3 pm.",
    "The total comes to 42 dollars and 50 cents.",
    "Would you like a window seat or an aisle seat?",
    "Michael and Sarah are meeting us at the airport.",
    "Please hold while I check the schedule.",
    "The train to Chicago departs from platform 9.",
    "I have 3 messages for you from Jennifer.",
    "What time does the pharmacy close tonight?",
    "Your order will arrive in 5 to 7 business days.",
    "The temperature will drop to 20 degrees tonight.",
    "Do you want me to read the list again?",
    "Turn left onto Maple Street and drive for 2 miles.",
    "Elizabeth called to say she will be late.",
    "There are 12 people on the waiting list.",
    "Can I have your date of birth, please?",
    "The museum is open every day except Monday.",
    "Your password must contain at least 8 characters.",
    "Robert works at the hospital on Pine Avenue.",
    "How many tickets would you like to buy?",
    "The package weighs about 4 pounds.",
    "I am sorry, but that room is already booked.",
    "Please press 1 for billing and 2 for support.",
    "The concert starts at 8 and ends around 11.",
    "Is this your first visit to our clinic?",
    "Daniel sent the report to the whole team yesterday.",
    "We close early on Friday afternoons.",
    "Your balance is 175 dollars.",
    "Where would you like the car to pick you up?",
    "The library has more than 10000 books.",
    "Anna will call you back within the hour.",
    "Could you repeat the last number, please?",
    "The flight to London has been delayed by 30 minutes.",
    "My name is Thomas and I live in Denver.",
    "Do you prefer coffee or tea with breakfast?",
    "The store is on the 2nd floor, next to the elevator.",
    "We received your payment this morning.",
    "Are you sure you want to cancel the order?",
    "The bus arrives every 15 minutes during rush hour.",
    "Jessica will lead the training session next week.",
    "Please bring your passport and a copy of your ticket.",
    "What is the best number to reach you at?",
    "The hotel offers free breakfast until 10 am.",
    "I can transfer you to a manager right away.",
    "Our team won the game by 6 points.",
    "Would you like to hear the menu again?",
    "Kevin forgot his umbrella at the office.",
    "The doctor recommends drinking plenty of water.",
    "It will take about 20 minutes to get there.",
    "Thank you for your patience, goodbye!",
]

def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - x) ** 2), 1e-30)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import onnxruntime as ort
    from faster_whisper import WhisperModel

    from agent import models
    from agent.audio import resample
    from asr.wer import normalize, wer
    from tts.piper_weights import VoiceFiles
    from tts.torch_backend import TorchPiperTTS

    voice = models.require("piper-joe-medium")
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(str(VoiceFiles.find(voice).onnx), so, providers=["CPUExecutionProvider"])
    exact = TorchPiperTTS(voice, noise_scale=0.0, noise_w=0.0)

    t0 = time.perf_counter()
    parity, snrs = 0.0, []
    for text in PARITY_SENTENCES:
        ph = exact.phonemize(text)
        chunks = list(exact.synthesize(ph))
        audio = np.concatenate([c.audio for c in chunks])
        ref = np.concatenate([sess.run(None, {"input": np.array([ids], np.int64),
                                              "input_lengths": np.array([len(ids)], np.int64),
                                              "scales": np.array([0.0, 1.0, 0.0], np.float32)})[0].reshape(-1)
                              for ids in ph.ids])
        assert audio.shape == ref.shape, (text, audio.shape, ref.shape)
        parity = max(parity, float(np.abs(audio - ref).max()))
        (p,) = exact.prepare([ph])
        with torch.inference_mode():
            whole = np.concatenate([exact.dec(z[None])[0].numpy() for z in p.latents])
        snrs.append(snr_db(whole, audio))
    print(f"parity {parity:.2e}  chunked SNR min {min(snrs):.1f} dB  ({time.perf_counter() - t0:.0f} s)", flush=True)

    t0 = time.perf_counter()
    tts = TorchPiperTTS(voice, seed=1234)  # the voice's own noise settings: what callers hear
    asr = WhisperModel(str(models.require("whisper-base")), device="cpu", compute_type="int8",
                       cpu_threads=args.threads)
    refs, hyps, rows = [], [], []
    for text in ROUNDTRIP_SENTENCES:
        audio, _ = tts.synthesize_full(text)
        segments, _ = asr.transcribe(resample(audio, tts.sample_rate, 16000), language="en", beam_size=1)
        hyp = " ".join(s.text.strip() for s in segments)
        ref_n, hyp_n = spell_numbers(text), spell_numbers(hyp)
        refs.append(ref_n)
        hyps.append(hyp_n)
        rows.append({"text": text, "heard": hyp, "wer": wer(ref_n, hyp_n)})
        if rows[-1]["wer"] > 0:
            print(f"  {rows[-1]['wer']:.2f}  {text!r} -> {hyp!r}", flush=True)
    total = wer(refs, hyps)
    plain = [i for i, t in enumerate(ROUNDTRIP_SENTENCES) if not re.search(r"\d", t)]
    plain_wer = wer([refs[i] for i in plain], [hyps[i] for i in plain])
    n_words = sum(len(normalize(r)) for r in refs)
    print(f"round-trip WER {total:.3%} over {n_words} words ({time.perf_counter() - t0:.0f} s)", flush=True)

    payload = result_header(
        metrics={"roundtrip_wer": total, "parity_max_abs": parity, "chunked_snr_db": min(snrs)},
        details={"roundtrip_wer_no_digits": plain_wer, "roundtrip_sentences": len(ROUNDTRIP_SENTENCES),
                 "roundtrip_words": n_words, "parity_sentences": len(PARITY_SENTENCES),
                 "chunked_snr_db_per_sentence": snrs, "numbers": "spell_numbers() on reference and transcript",
                 "asr": "faster-whisper base, cpu int8, language en, beam 1",
                 "tts": "TorchPiperTTS fp32 CPU, voice noise settings, seed 1234; chunks 16 then 64 frames",
                 "errors": [r for r in rows if r["wer"] > 0], "transcripts": [r["heard"] for r in rows]},
        baseline={"parity_reference": "Piper ONNX graph in onnxruntime " + ort.__version__},
    )
    path = write_result("tts_quality.json", payload, args.out)
    print(json.dumps(payload["metrics"]), "->", path)


if __name__ == "__main__":
    main()
