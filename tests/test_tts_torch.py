"""Torch VITS (tts/vits.py) against the Piper voice in onnxruntime: loader, parity, streaming seams, batching."""

import numpy as np
import pytest
import torch

from agent import models
from tts.piper_weights import VoiceFiles, load_state, onnx_state, synthetic_vits
from tts.stream import plan_windows
from tts.vits import Generator, Vits, VitsConfig


@pytest.fixture(scope="module")
def voice_dir():
    return models.require("piper-joe-medium")


@pytest.fixture(scope="module")
def tts(voice_dir):
    from tts.torch_backend import TorchPiperTTS

    return TorchPiperTTS(voice_dir, noise_scale=0.0, noise_w=0.0)


@pytest.fixture(scope="module")
def ort_session(voice_dir):
    import onnxruntime as ort

    return ort.InferenceSession(str(VoiceFiles.find(voice_dir).onnx), providers=["CPUExecutionProvider"])


def ort_audio(session, ids):
    out = session.run(None, {"input": np.array([ids], np.int64), "input_lengths": np.array([len(ids)], np.int64),
                             "scales": np.array([0.0, 1.0, 0.0], np.float32)})[0]
    return out.reshape(-1)


def snr_db(ref, x):
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / max(np.sum((ref.astype(np.float64) - x) ** 2), 1e-30))


def test_loader_maps_every_initializer(voice_dir):
    import onnx

    files = VoiceFiles.find(voice_dir)
    state, constants = onnx_state(files.onnx)
    n_init = len(onnx.load(str(files.onnx), load_external_data=False).graph.initializer)
    assert len(state) + len(constants) == n_init  # every initializer is a weight or a small graph constant
    model = Vits(VitsConfig())
    assert set(state) == set(model.state_dict())  # no model tensor left unset, no weight left over
    assert not any(name.startswith(("enc_p", "dp.", "flow", "dec", "sid", "onnx::Conv")) for name in constants)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        load_state(model, state)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)
    # the folded exp(-logs) came back as logs
    assert torch.allclose(torch.exp(-model.dp.flows["0"].logs), torch.tensor([[0.9785079], [1.051145]]), atol=1e-6)


def test_loader_rejects_unknown_and_missing():
    model = Vits(VitsConfig())
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    with pytest.raises(KeyError):
        load_state(model, {**state, "dec.extra.weight": np.zeros(1, np.float32)})
    state.pop("dec.conv_post.weight")
    with pytest.raises(KeyError):
        load_state(model, state)


@pytest.mark.parametrize("text", ["Hello world, how are you today?",
                                  "Call 555-1234 at 10 a.m.!"])
def test_parity_with_onnxruntime(tts, ort_session, text):
    ph = tts.phonemize(text)
    audio, _ = tts.synthesize_full(ph)
    ref = np.concatenate([ort_audio(ort_session, ids) for ids in ph.ids])
    assert audio.shape == ref.shape
    assert np.abs(audio - ref).max() <= 1e-3


def test_chunked_equals_whole(tts):
    text = "No seams between the chunks, please."
    (p,) = tts.prepare([text])
    with torch.inference_mode():
        whole = np.concatenate([tts.dec(z[None])[0].numpy() for z in p.latents])
    small = type(tts)(model=tts.model, voice_json=None, noise_scale=0.0, noise_w=0.0, chunk_frames=16,
                      first_chunk_frames=4)
    chunks = list(small.synthesize(p.phonemized))
    assert len(chunks) > 5 and chunks[-1].last and not any(c.last for c in chunks[:-1])
    assert [c.offset for c in chunks] == list(np.cumsum([0] + [len(c.audio) for c in chunks[:-1]]))
    assert snr_db(whole, np.concatenate([c.audio for c in chunks])) >= 40.0
    # too little context makes seams audible: the test can fail
    blind = type(tts)(model=tts.model, voice_json=None, noise_scale=0.0, noise_w=0.0, chunk_frames=16,
                      first_chunk_frames=4, context_frames=0)
    assert snr_db(whole, np.concatenate([c.audio for c in blind.synthesize(p.phonemized)])) < 40.0


def test_batch_matches_single(tts):
    texts = ["Good morning.", "The quick brown fox jumps over the lazy dog.", "Yes?"]
    single = [np.concatenate([c.audio for c in tts.synthesize(t)]) for t in texts]
    got = {i: [] for i in range(len(texts))}
    order = []
    for i, chunk in tts.synthesize_batch(texts):
        got[i].append(chunk)
        order.append(i)
    assert sorted(order[:3]) == [0, 1, 2]  # every session's first chunk comes in the first round
    for i, t in enumerate(texts):
        assert got[i][-1].last
        assert snr_db(single[i], np.concatenate([c.audio for c in got[i]])) >= 40.0


def test_step_batch_gives_each_stream_its_own_chunks(tts):
    """Several sessions' phrases advanced together (the TTS thread's batches): per stream, the chunks synthesize()
    yields, in order, offsets and `last` included; streams of different lengths finish at their own step."""
    texts = ["Good morning.", "The quick brown fox jumps over the lazy dog, twice, before breakfast.",
             "Yes?", "The quick brown fox jumps over the lazy dog, twice, before breakfast."]
    single = [list(tts.synthesize(t)) for t in texts]
    streams = [tts.stream(t) for t in texts]
    assert all(st.prepared is None for st in streams)  # stream() runs nothing
    got = [[] for _ in texts]
    widths = []
    while not all(st.done for st in streams):
        live = [st for st in streams if not st.done]
        widths.append(len(live))
        for i, c in enumerate(tts.step_batch(streams)):
            if c is not None:
                got[i].append(c)
    assert max(widths) == 4 and min(widths) < 4  # the short phrases were done first
    assert tts.step_batch(streams) == [None] * 4 and tts.step(streams[0]) is None
    for want, have in zip(single, got):
        assert [c.offset for c in have] == [c.offset for c in want]
        assert [c.last for c in have] == [c.last for c in want] and have[-1].last
        for a, b in zip(want, have):
            assert a.words == b.words and len(a.audio) == len(b.audio)
            assert snr_db(a.audio, b.audio) >= 60.0, "a batched row must decode as its window alone"


def test_back_graph_frame_buckets_cover_real_phrases(voice_dir):
    """The back graphs warm-up captures per front graph (tts/cuda_graphs.py `back_frame_buckets`) cover the frame
    counts real phrases need, with the voice's own random durations (noise_w): a phrase outside them would run
    its expand + flow eagerly on the GPU thread (before, 45 of 60 did for the benchmark's reply)."""
    from tts.cuda_graphs import back_frame_buckets
    from tts.torch_backend import TorchPiperTTS

    tts = TorchPiperTTS(voice_dir)  # the voice's noise_w: durations vary from call to call
    assert tts.noise_w > 0
    tts.bucket = lambda n: -(-n // 32) * 32
    tts.bucket_frames = lambda n: -(-n // 64) * 64
    seen = []
    eager_back = tts.back

    def back(stats, dur, n):
        seen.append((dur.shape[1], n))
        return eager_back(stats, dur, n)

    tts.back = back
    texts = list(TorchPiperTTS.WARMUP_TEXTS) + [
        "Yes.", "Okay, sure.", "Sure, let me check that for you.",
        "The pharmacy closes at nine tonight, and your prescription is ready for pickup at the front counter.",
        "If you come tomorrow instead, they open at eight in the morning.",
        "I'm glad to hear that. It's a wonderful day to celebrate.",
        "Strawberries, raspberries, blueberries and blackberries are all in season right now.",
        "Twenty-three, forty-five, and one hundred and six."]
    torch.manual_seed(0)
    for _ in range(5):
        tts.prepare(texts)  # several phrases in one padded batch, as synthesize_batch does
        for t in texts:
            tts.prepare([t])
    assert len(seen) == 5 * (len(texts) + 1)
    for T, n in seen:
        assert n in back_frame_buckets(T), (T, n, back_frame_buckets(T))
    assert all(len(back_frame_buckets(T)) <= 14 for T in range(32, 352, 32))  # a few graphs per front graph


def test_range_keys_fill_the_id_buckets_and_order_backs_largest_first():
    from tts.cuda_graphs import back_frame_buckets, range_keys

    fronts, backs = range_keys({(1, 32), (1, 128), (2, 64)})
    assert fronts == [(1, 64), (1, 96)]  # the one-sentence buckets missing up to the longest
    assert set(backs) == {(r, T, n) for r, T in [(1, 32), (1, 64), (1, 96), (1, 128), (2, 64)]
                          for n in back_frame_buckets(T)}
    assert [k[2] for k in backs] == sorted((k[2] for k in backs), reverse=True)


def test_windows_cover_and_context():
    for n in (1, 5, 16, 17, 100):
        ws = plan_windows(n, 7, 3, first_chunk_frames=2)
        assert ws[0].start == 0 and ws[-1].end == n
        assert all(a.end == b.start for a, b in zip(ws, ws[1:]))
        assert all(w.lo <= max(0, w.start - 3) and w.hi == min(n, w.end + 3) for w in ws)  # enough context
        assert all(w.hi - w.lo == 13 for w in ws[1:] if w.lo > 0 or n >= 13 and w is ws[-1])  # few widths
    assert Generator.context_frames(VitsConfig()) >= 11


def test_synthetic_model_runs_and_has_sane_durations():
    model = synthetic_vits(seed=0)
    ids = torch.randint(3, 150, (2, 30))
    with torch.inference_mode():
        audio, dur = model(ids, torch.tensor([30, 20]), noise_scale=0.0, noise_w=0.0)
    assert torch.isfinite(audio).all() and audio.abs().max() <= 1.0
    assert (dur[1, 20:] == 0).all() and (dur[0] >= 1).all() and 2 <= dur[0].float().mean() <= 12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_match_eager():
    from tts.cuda_graphs import GraphedTTS
    from tts.torch_backend import TorchPiperTTS

    model = synthetic_vits(seed=0)
    eager = TorchPiperTTS(model=model, device="cuda", noise_scale=0.0, noise_w=0.0)
    graphed = TorchPiperTTS(model=model, device="cuda", noise_scale=0.0, noise_w=0.0)
    GraphedTTS(graphed)
    from tts.phonemize import Phonemized

    g = torch.Generator().manual_seed(0)
    for n in (17, 40, 90):
        ids = [1, 0] + torch.randint(14, 150, (n,), generator=g).tolist() + [2]
        ph = Phonemized(["x"], [ids], [[0] * len(ids)], [[-1] * len(ids)], [["a"]])
        a, _ = eager.synthesize_full(ph)
        for _ in range(2):  # first call captures, second replays
            b, _ = graphed.synthesize_full(ph)
            assert a.shape == b.shape and snr_db(a, b) >= 60.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_step_batch_on_cuda_graphs_matches_alone():
    """On the GPU with graphs: step_batch's padded batches replay graphs captured at warm-up and give every
    stream what it gets alone."""
    from tts.phonemize import Phonemized
    from tts.torch_backend import TorchPiperTTS

    model = synthetic_vits(seed=0)
    tts = TorchPiperTTS(model=model, device="cuda", dtype=torch.float16, noise_scale=0.0, noise_w=0.0)
    tts.use_cuda_graphs()
    g = torch.Generator().manual_seed(0)
    phs = []
    for n in (17, 40, 90, 90, 60):
        ids = [1, 0] + torch.randint(14, 150, (n,), generator=g).tolist() + [2]
        phs.append(Phonemized(["x"], [ids], [[0] * len(ids)], [[-1] * len(ids)], [["a"]]))
    for _ in range(2):  # capture, then replay
        alone = [np.concatenate([c.audio for c in tts.synthesize(ph)]) for ph in phs]
        streams = [tts.stream(ph) for ph in phs]
        got = [[] for _ in phs]
        while not all(st.done for st in streams):
            for i, c in enumerate(tts.step_batch(streams)):
                if c is not None:
                    got[i].append(c.audio)
        for a, b in zip(alone, got):
            b = np.concatenate(b)
            assert a.shape == b.shape and snr_db(a, b) >= 40.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_warmup_graphs_serve_reply_phrases_without_eager_stages(voice_dir):
    """After warmup (the warm-up texts, then every front graph's back graphs by `back_frame_buckets`), the phrases
    of a reply run from graphs: no front or back stage falls back to eager (which costs the TTS thread ~10x the
    host time under load), whatever durations the voice's noise gives."""
    from tts.torch_backend import TorchPiperTTS

    tts = TorchPiperTTS(voice_dir, device="cuda", dtype=torch.float16)
    tts.use_cuda_graphs()
    tts.warmup()
    g = tts.graphs
    eager = {"front": 0, "back": 0}
    ef, eb = g.eager_front, g.eager_back

    def count(kind, fn):
        def run(*a):
            eager[kind] += 1
            return fn(*a)
        return run

    g.eager_front, g.eager_back = count("front", ef), count("back", eb)
    phrases = ["Sure, let me check that for you.",
               "The pharmacy closes at nine tonight, and your prescription is ready for pickup at the front counter.",
               "If you come tomorrow instead, they open at eight in the morning.",
               "It's a wonderful day to celebrate.", "Okay.", "Good morning, how can I help?"]
    # (one sentence each, as agent/phrases.py cuts them; a phrase of two sentences has a front graph of 2 rows)
    for _ in range(5):
        for p in phrases:
            audio, _ = tts.synthesize_full(p)
            assert np.isfinite(audio).all() and len(audio) > 0
    assert eager == {"front": 0, "back": 0}, (eager, sorted(g.front_graphs), len(g.back_graphs))
    # what each kind of graph holds (the start-up plan's note): every kind captured something, none shrank the pool
    line = g.memory_line()
    assert all(v >= 0 for v in g.pool_bytes.values()) and g.pool_bytes["back"] > 0, line
    assert f"back {len(g.back_graphs)} (" in line and f"front {len(g.front_graphs)} (" in line
