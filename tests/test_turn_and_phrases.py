from agent.phrases import PhraseChunker
from agent.turn import Kind, TurnParams, TurnTaker

F = 0.032


def run(tt, probs, t0=0.0):
    out, t = [], t0
    for p in probs:
        t += F
        out += tt.on_vad(t, F, p)
    return out, t


def test_endpoint_after_silence_threshold():
    tt = TurnTaker(TurnParams(endpoint_silence_s=0.5))
    ds, t = run(tt, [0.0] * 10 + [0.9] * 30 + [0.1] * 14)
    assert [d.kind for d in ds] == [Kind.SPEECH_START]  # 14 frames = 448 ms of silence: not yet
    ds, t = run(tt, [0.1] * 2, t)
    assert [d.kind for d in ds] == [Kind.ENDPOINT]
    assert abs(ds[0].speech_end - 40 * F) < 1e-9 and abs(ds[0].speech_start - 10 * F) < 1e-9


def test_short_blip_and_hysteresis():
    tt = TurnTaker(TurnParams(min_speech_s=0.096))
    ds, t = run(tt, [0.9, 0.9, 0.1] * 5)  # 64 ms blips never start a turn
    assert ds == []
    ds, t = run(tt, [0.9] * 5 + [0.4] * 20 + [0.1] * 20, t)  # 0.4 is above neg_threshold: still speech
    kinds = [d.kind for d in ds]
    assert kinds == [Kind.SPEECH_START, Kind.ENDPOINT]
    assert ds[1].speech_end > ds[0].t + 19 * F


def test_barge_in_only_while_agent_speaks_and_only_full_duplex():
    tt = TurnTaker(TurnParams(barge_in_s=0.2))
    tt.set_agent_speaking(True)
    ds, _ = run(tt, [0.9] * 10)
    assert [d.kind for d in ds] == [Kind.BARGE_IN, Kind.SPEECH_START]
    half = TurnTaker(TurnParams(barge_in=False))
    half.set_agent_speaking(True)
    ds, _ = run(half, [0.9] * 30)
    assert ds == []


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
