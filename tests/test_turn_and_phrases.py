from agent.phrases import PhraseChunker
from agent.turn import Kind, TurnParams, TurnTaker, endpoint_delay

F = 0.032


def run(tt, probs, t0=0.0):
    out, t = [], t0
    for p in probs:
        t += F
        out += tt.on_vad(t, F, p)
    return out, t


def kinds(ds):
    return [d.kind for d in ds]


def test_endpoint_after_silence_threshold():
    tt = TurnTaker(TurnParams(endpoint_silence_s=0.5, adaptive=False))
    ds, t = run(tt, [0.0] * 10 + [0.9] * 30 + [0.1] * 14)
    assert kinds(ds) == [Kind.SPEECH_START, Kind.PAUSE]  # 14 frames = 448 ms of silence: not yet
    ds, t = run(tt, [0.1] * 2, t)
    assert [d.kind for d in ds] == [Kind.ENDPOINT]
    assert abs(ds[0].speech_end - 40 * F) < 1e-9 and abs(ds[0].speech_start - 10 * F) < 1e-9


def test_short_blip_and_hysteresis():
    tt = TurnTaker(TurnParams(min_speech_s=0.096))
    ds, t = run(tt, [0.9, 0.9, 0.1] * 5)  # 64 ms blips never start a turn
    assert ds == []
    ds, t = run(tt, [0.9] * 5 + [0.4] * 20 + [0.1] * 30, t)  # 0.4 is above neg_threshold: still speech
    assert kinds(ds) == [Kind.SPEECH_START, Kind.PAUSE, Kind.ENDPOINT]
    assert ds[2].speech_end > ds[0].t + 19 * F


def test_barge_in_only_while_agent_speaks_and_only_full_duplex():
    tt = TurnTaker(TurnParams(barge_in_s=0.2))
    tt.set_agent_speaking(True)
    ds, _ = run(tt, [0.9] * 10)
    assert [d.kind for d in ds] == [Kind.BARGE_IN, Kind.SPEECH_START]
    half = TurnTaker(TurnParams(barge_in=False))
    half.set_agent_speaking(True)
    ds, _ = run(half, [0.9] * 30)
    assert ds == []


def test_pause_resume_and_adaptive_endpoint():
    tt = TurnTaker(TurnParams(pause_s=0.1, unknown_delay_s=0.8, min_delay_s=0.15, max_delay_s=1.0,
                              p_low=0.001, p_high=0.05))
    ds, t = run(tt, [0.9] * 20 + [0.1] * 4)  # 128 ms of silence: a pause, once
    assert kinds(ds) == [Kind.SPEECH_START, Kind.PAUSE]
    ds, t = run(tt, [0.9] * 10, t)
    assert kinds(ds) == [Kind.RESUME]
    # mid-sentence: P(end) low -> waits up to max_delay_s
    ds, t = run(tt, [0.1] * 4, t)
    tt.on_end_probability(1e-5, upto=t - 4 * F)
    ds, t2 = run(tt, [0.1] * 26, t)  # 30 frames = 0.96 s of silence in all: not yet
    assert kinds(ds) == []
    ds, t2 = run(tt, [0.1] * 2, t2)
    assert kinds(ds) == [Kind.ENDPOINT] and abs(ds[0].delay - 1.0) < 1e-9
    # clearly finished: P(end) high -> min_delay_s
    tt2 = TurnTaker(TurnParams())
    ds, t = run(tt2, [0.9] * 20 + [0.1] * 4)
    tt2.on_end_probability(0.95, upto=20 * F)
    ds, t = run(tt2, [0.1], t)
    assert kinds(ds) == [Kind.ENDPOINT] and ds[0].delay == TurnParams().min_delay_s
    # a probability computed before the user spoke again does not count
    tt3 = TurnTaker(TurnParams())
    run(tt3, [0.9] * 20 + [0.1] * 4)
    tt3.on_end_probability(0.95, upto=20 * F)
    ds, t = run(tt3, [0.9] * 5 + [0.1] * 20, 24 * F)
    assert Kind.ENDPOINT not in kinds(ds)  # 640 ms of silence, P(end) stale: the fallback 0.8 s applies
    ds, t = run(tt3, [0.1] * 6, t)
    assert kinds(ds) == [Kind.ENDPOINT] and ds[0].delay == TurnParams().unknown_delay_s


def test_pending_endpoint_is_confirmed_resumed_or_rejected_by_the_words():
    """With `confirm`, the silence only makes the endpoint pending: confirm_end() turns it into the ENDPOINT (with the
    speech bounds and delay the silence gave); speech before that resumes the same turn; reject_end() (the words
    trail off) keeps the turn open until max_delay_s of that silence — and then it is pending once more."""
    params = TurnParams(confirm=True, pause_s=0.1, min_delay_s=0.15, max_delay_s=1.0, judge_p_high=0.95)
    tt = TurnTaker(params)
    ds, t = run(tt, [0.9] * 20 + [0.1] * 2)
    tt.on_audio_end_probability(0.99, upto=20 * F)
    ds, t = run(tt, [0.1] * 3, t)  # 160 ms of silence: sure it is over -> pending, not ended
    assert kinds(ds) == [Kind.PAUSE, Kind.ENDPOINT_PENDING] and tt.pending and tt.in_turn
    ds = ds[1:]
    assert abs(ds[0].speech_end - 20 * F) < 1e-9 and ds[0].delay == 0.15
    ds, t = run(tt, [0.1] * 40, t)  # nothing more while it is pending: no PAUSE, no second endpoint
    assert ds == []
    end = tt.confirm_end(t)
    assert end.kind is Kind.ENDPOINT and end.speech_start == 0 and abs(end.speech_end - 20 * F) < 1e-9
    assert end.delay == 0.15 and not tt.in_turn and not tt.pending
    assert tt.confirm_end(t) is None  # once

    # the user goes on before the words are checked: the same turn resumes
    tt = TurnTaker(params)
    ds, t = run(tt, [0.9] * 20)
    tt.on_audio_end_probability(0.99, upto=t)
    ds, t = run(tt, [0.1] * 5 + [0.9] * 4, t)
    assert kinds(ds) == [Kind.PAUSE, Kind.ENDPOINT_PENDING, Kind.RESUME] and tt.in_turn and not tt.pending
    assert tt.confirm_end(t) is None  # a late confirmation finds nothing pending
    assert tt.turn_start == 0  # still the first turn's speech

    # the transcript trails off: rejected, and only max_delay_s of that silence ends it (pending again)
    tt = TurnTaker(params)
    ds, t = run(tt, [0.9] * 20)
    tt.on_audio_end_probability(0.99, upto=t)
    ds, t = run(tt, [0.1] * 5, t)
    assert kinds(ds) == [Kind.PAUSE, Kind.ENDPOINT_PENDING]
    tt.reject_end()
    assert tt.in_turn and not tt.pending and tt.current_delay() == 1.0
    ds, t = run(tt, [0.1] * 25, t)  # 30 frames = 0.96 s in all
    assert ds == []
    ds, t = run(tt, [0.1] * 2, t)
    assert kinds(ds) == [Kind.ENDPOINT_PENDING] and ds[0].delay == 1.0
    # ... and speech after a rejection is a new stretch of the same turn: its own silence is judged afresh
    tt = TurnTaker(params)
    ds, t = run(tt, [0.9] * 20 + [0.1] * 5)
    tt.reject_end()  # nothing pending (no verdict: unknown delay 0.8 s): no effect
    assert tt.current_delay() == params.unknown_delay_s


def test_endpoint_delay_is_bounded_and_monotonic():
    p = TurnParams()
    delays = [endpoint_delay(p, 10 ** (-(24 - x) / 4)) for x in range(25)]  # P(end) rising from 1e-6 to 1
    assert all(a >= b for a, b in zip(delays, delays[1:]))
    assert max(delays) == p.max_delay_s and min(delays) == p.min_delay_s
    assert endpoint_delay(p, None) == p.unknown_delay_s
    assert endpoint_delay(TurnParams(adaptive=False), 0.99) == p.endpoint_silence_s


def chunk(tokens, **kw):
    c = PhraseChunker(**kw)
    out = [p for t in tokens if (p := c.push(t))]
    if last := c.flush():
        out.append(last)
    return out


def test_phrases_first_short_then_sentences_and_token_ranges():
    toks = ["Sure", ",", " I", " can", " help", " with", " that", ".", " The", " capital", " of", " France",
            " is", " Paris", ",", " a", " city", " of", " light", ".", " Ask", " me", " more"]
    ps = chunk(toks)
    assert [p.text for p in ps] == ["Sure, I can help with that.", "The capital of France is Paris, a city of light.",
                                    "Ask me more"]
    assert ps[0].token_start == 0 and all(a.token_end == b.token_start for a, b in zip(ps, ps[1:]))
    assert ps[-1].token_end == len(toks)


def test_first_phrase_cut_at_comma_and_long_phrase_cut_at_max():
    ps = chunk(["Well", " you", " see", ",", " it", " depends", "."], first_min_words=3)
    assert ps[0].text == "Well you see,"
    words = [" w%d" % i for i in range(30)]
    ps = chunk(["Ok", "."] + words, max_words=10)
    assert all(len(p.text.split()) <= 10 for p in ps[1:])
    assert " ".join(p.text for p in ps[1:]).split() == [w.strip() for w in words]


def test_a_phrase_burst_stops_at_the_end_of_the_phrase_or_of_the_reply():
    """agent/session.py `phrase_burst`: the first phrase's tokens in one worker item. It takes tokens until one
    completes a phrase (the rest stay in the generator for later items), or the reply ends, or max_tokens; each step
    is what the per-token path computes for that token (`add_token`). A fake detokenizer isolates it."""
    from agent.session import TokenText, add_token, phrase_burst

    vocab = ["Sure", ",", " I", " can", " help", ".", " The", " rest", " is", " paced", "."]

    class Detok:
        def decode(self, ids):
            return "".join(vocab[i] for i in ids)

    def fresh():
        return TokenText(Detok()), PhraseChunker()

    gen = iter(range(len(vocab)))
    tt, ch = fresh()
    steps = phrase_burst(gen, tt, ch, 32)
    assert [t for t, _, _ in steps] == [0, 1, 2, 3, 4, 5]  # "Sure, I can help." (a 1-word clause does not cut)
    assert [p.text for _, _, p in steps if p is not None] == ["Sure, I can help."] and steps[-1][2] is not None
    assert next(gen) == 6  # the rest of the reply is left for the paced items
    tt2, ch2 = fresh()
    assert [(t, *add_token(t, tt2, ch2)) for t in range(6)] == steps  # the same as one token per item
    # the reply ends inside the phrase: the end is the last step, and nothing is cut yet (flush does that)
    tt, ch = fresh()
    steps = phrase_burst(iter([0, 2, 3]), tt, ch, 32)
    assert [t for t, _, _ in steps] == [0, 2, 3, None] and all(p is None for _, _, p in steps)
    assert ch.flush().text == "Sure I can"
    # max_tokens bounds it
    assert len(phrase_burst(iter(range(len(vocab))), *fresh(), 3)) == 3
    # other urgent work queued: it ends after the token in hand (the rest comes in later items)
    calls = []
    gen = iter(range(len(vocab)))
    steps = phrase_burst(gen, *fresh(), 32, yield_to=lambda: calls.append(1) or len(calls) >= 2)
    assert [t for t, _, _ in steps] == [0, 1] and next(gen) == 2


def test_audio_judge_alone_sets_the_endpoint_delay():
    """With only the audio judge (no LLM P(end), e.g. synthetic LLM weights): confident -> short, unsure -> long."""
    p = TurnParams(pause_s=0.1, unknown_delay_s=0.8, min_delay_s=0.15, max_delay_s=1.0, judge_p_low=0.5,
                   judge_p_high=0.95)
    sure = TurnTaker(p)
    ds, t = run(sure, [0.9] * 20 + [0.1] * 4)
    assert kinds(ds) == [Kind.SPEECH_START, Kind.PAUSE]
    sure.on_audio_end_probability(0.97, upto=20 * F)
    ds, t = run(sure, [0.1], t)  # 160 ms of silence >= 150 ms
    assert kinds(ds) == [Kind.ENDPOINT] and ds[0].delay == p.min_delay_s
    unsure = TurnTaker(p)
    ds, t = run(unsure, [0.9] * 20 + [0.1] * 4)
    unsure.on_audio_end_probability(0.2, upto=20 * F)
    ds, t = run(unsure, [0.1] * 26, t)  # 0.96 s: not yet
    assert Kind.ENDPOINT not in kinds(ds)
    ds, t = run(unsure, [0.1] * 2, t)
    assert kinds(ds) == [Kind.ENDPOINT] and ds[0].delay == p.max_delay_s
    # a verdict on audio before the user spoke again is stale: the unknown-delay fallback applies
    stale = TurnTaker(p)
    run(stale, [0.9] * 20 + [0.1] * 4)
    stale.on_audio_end_probability(0.99, upto=20 * F)
    ds, t = run(stale, [0.9] * 5 + [0.1] * 20, 24 * F)
    assert Kind.ENDPOINT not in kinds(ds)
    ds, t = run(stale, [0.1] * 6, t)
    assert kinds(ds) == [Kind.ENDPOINT] and ds[0].delay == p.unknown_delay_s


def test_audio_and_llm_verdicts_combine():
    p = TurnParams()
    assert endpoint_delay(p, None, 0.99) == p.min_delay_s
    assert endpoint_delay(p, 1e-6, None) == p.max_delay_s
    assert endpoint_delay(p, None, (p.judge_p_low + p.judge_p_high) / 2) == p.unknown_delay_s  # unsure: wait
    assert endpoint_delay(p, None, p.judge_p_low / 2) == p.max_delay_s
    assert endpoint_delay(p, 1e-6, 0.99) == p.max_delay_s  # they disagree: the less sure one decides
    assert endpoint_delay(p, 0.99, 1e-3) == p.max_delay_s
    half = endpoint_delay(p, 0.99, (p.judge_p_low + p.judge_p_high) / 2)  # LLM sure, judge halfway: halfway
    assert abs(half - (p.max_delay_s + p.min_delay_s) / 2) < 1e-9
    assert endpoint_delay(p, 0.5, 0.99) == p.min_delay_s  # both sure
    assert endpoint_delay(p, 1e-6, 0.1) == p.max_delay_s  # both say mid-sentence
    a = [endpoint_delay(p, None, x / 20) for x in range(21)]
    assert all(x >= y for x, y in zip(a, a[1:])) and min(a) == p.min_delay_s and max(a) == p.max_delay_s
    assert endpoint_delay(TurnParams(adaptive=False), 1e-6, 0.99) == p.endpoint_silence_s


def test_trailing_ellipsis_marks_an_unfinished_transcript():
    from agent.session import trails_off

    assert trails_off("Eight of spades, four of cl...") and trails_off("drop the two when you\u2026")
    assert not trails_off("Sunday is the best part of the week.") and not trails_off("5 5") and not trails_off("")


def test_lead_silence_trims_only_the_quiet_start():
    import numpy as np

    from agent.session import lead_silence

    rate = 22050
    x = np.zeros(rate, np.float32)
    x[1500:] = 0.3
    k = lead_silence(x, rate)
    assert k == 1500 - int(0.005 * rate) and np.abs(x[k:]).max() > 0.01
    assert lead_silence(np.zeros(100, np.float32), rate) == 0  # nothing loud: nothing trimmed
    assert lead_silence(np.full(100, 0.5, np.float32), rate) == 0


def test_judge_alone_ignores_the_llm_once_the_judge_has_spoken():
    """[turn] judge_alone: with a verdict of the audio judge, the LLM's P(end) changes nothing (sure, unsure and
    low verdicts alike); without one, the LLM's P(end) sets the delay as before."""
    p = TurnParams(judge_alone=True, judge_p_low=0.3, judge_p_high=0.95, min_delay_s=0.064, unknown_delay_s=0.8,
                   max_delay_s=1.0)
    both = TurnParams(judge_p_low=0.3, judge_p_high=0.95, min_delay_s=0.064, unknown_delay_s=0.8, max_delay_s=1.0)
    for p_end in (1e-6, 0.01, 0.9):
        assert endpoint_delay(p, p_end, 0.97) == p.min_delay_s
        assert endpoint_delay(p, p_end, 0.6) == p.unknown_delay_s
        assert endpoint_delay(p, p_end, 0.1) == p.max_delay_s
    # the combined rule would have let a sure-ish LLM shorten an unsure judge's wait, or a doubtful one lengthen a
    # sure judge's: judge_alone does neither
    assert endpoint_delay(both, 0.9, 0.6) < p.unknown_delay_s and endpoint_delay(p, 0.9, 0.6) == p.unknown_delay_s
    assert endpoint_delay(both, 1e-6, 0.97) == p.max_delay_s and endpoint_delay(p, 1e-6, 0.97) == p.min_delay_s
    for p_end in (1e-6, 0.01, 0.9):  # no verdict from the judge: the LLM's alone
        assert endpoint_delay(p, p_end, None) == endpoint_delay(both, p_end, None)
    assert endpoint_delay(p, None, None) == p.unknown_delay_s


def test_judge_alone_in_the_turn_taker_and_its_timing():
    """The turn taker with judge_alone: a sure verdict ends the turn at the first frame after it (min_delay 64 ms),
    an LLM verdict arriving afterwards does not undo an unsure verdict's wait, and stale verdicts count for
    nothing. last_speech / turn_start (what the session's judge trigger reads) follow the speech."""
    p = TurnParams(pause_s=0.064, judge_alone=True, judge_p_low=0.3, judge_p_high=0.95, min_delay_s=0.064,
                   unknown_delay_s=0.8, max_delay_s=1.0)
    tt = TurnTaker(p)
    ds, t = run(tt, [0.0] * 5 + [0.9] * 20 + [0.1])  # 32 ms of silence: the session's judge would run now
    assert kinds(ds) == [Kind.SPEECH_START]
    assert abs(tt.last_speech - 25 * F) < 1e-9 and abs(tt.turn_start - 5 * F) < 1e-9
    tt.on_audio_end_probability(0.97, upto=tt.last_speech)
    ds, t = run(tt, [0.1], t)  # 64 ms: ends (the verdict came before the PAUSE)
    assert kinds(ds) == [Kind.ENDPOINT] and ds[0].delay == p.min_delay_s
    # unsure: 800 ms, even when the LLM then reads the words as finished
    tt = TurnTaker(p)
    ds, t = run(tt, [0.9] * 20 + [0.1])
    tt.on_audio_end_probability(0.8, upto=tt.last_speech)
    tt.on_end_probability(0.9, upto=tt.last_speech)
    ds, t = run(tt, [0.1] * 23, t)  # 768 ms of silence
    assert Kind.ENDPOINT not in kinds(ds)
    ds, t = run(tt, [0.1], t)
    assert kinds(ds) == [Kind.ENDPOINT] and ds[0].delay == p.unknown_delay_s
    # a sure verdict on the silence before the user spoke again does not end the next one
    tt = TurnTaker(p)
    ds, t = run(tt, [0.9] * 20 + [0.1])
    tt.on_audio_end_probability(0.99, upto=tt.last_speech)
    ds, t = run(tt, [0.9] * 3 + [0.1] * 20, t)
    assert Kind.ENDPOINT not in kinds(ds)
