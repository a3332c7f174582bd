"""The LLM engine: real SmolLM2 weights against transformers, chat pieces, sessions, and the page pool."""

from __future__ import annotations

import random

import pytest
import torch

from llm.config import tiny
from llm.engine import Cancelled, Engine, OutOfPages, Sampling
from llm.llama import Llama
from llm.weights import init_synthetic

SMOL = "smollm2-135m-instruct"
PROMPTS = [
    "What is the capital of France?",
    "Write a short story about a robot who learns to paint.",
    "Explain how a bicycle works, step by step.",
    "List five fruits and describe the taste of each one.",
    "Why is the sky blue? Answer in detail.",
]


def _smol_dir():
    from agent.models import model_dir

    d = model_dir(SMOL)
    if not any(d.glob("*.gguf")):
        pytest.skip(f"{SMOL} not fetched (quickturn models fetch {SMOL})")
    return d


@pytest.fixture(scope="module")
def smol():
    from llm.chat import ChatFormat
    from llm.tokenizer import load_tokenizer
    from llm.weights import load_model

    d = _smol_dir()
    tok = load_tokenizer(d)
    return load_model(d), tok, ChatFormat.from_tokenizer(tok), d


@pytest.fixture(scope="module")
def hf_smol(smol):
    """transformers' own GGUF loader (independent of our conversion, Q/K un-permutation included)."""
    from transformers import AutoModelForCausalLM

    d = smol[3]
    gguf = next(d.glob("*.gguf")).name
    return AutoModelForCausalLM.from_pretrained(str(d), gguf_file=gguf, dtype=torch.float32).eval()


def _prompt_ids(chat, text):
    return chat.system_ids("You are a helpful assistant.") + chat.user_turn_ids(text)


def test_greedy_matches_transformers(smol, hf_smol):
    """64 greedy tokens for 5 prompts. Greedy decoding is fixed by argmax at every prefix, so one transformers
    forward over prompt + our tokens checks all 64 steps: HF's argmax at each position must be our next token."""
    model, tok, chat, _ = smol
    eng = Engine(model, tok, num_pages=128)
    sessions, prompts = [], []
    for text in PROMPTS:
        prompts.append(_prompt_ids(chat, text))
        sessions.append(eng.new_session())
        sessions[-1].append(prompts[-1])
    # the 5 sessions decode together (one batched step per token); no stop ids: always 64 tokens each
    outs = [list(x) for x in zip(*zip(*[s.generate(64) for s in sessions]))]
    for s in sessions:
        s.free()
    for text, ids, ours in zip(PROMPTS, prompts, outs):
        assert len(ours) == 64
        with torch.no_grad():
            logits = hf_smol(torch.tensor([ids + ours])).logits[0]
        hf_next = logits[len(ids) - 1: len(ids) + 63].argmax(-1).tolist()
        assert hf_next == ours, f"{text!r}: first mismatch at {next(i for i, (a, b) in enumerate(zip(hf_next, ours)) if a != b)}"
    assert eng.free_pages == 128


def test_prefill_logits_match_transformers(smol, hf_smol):
    model, tok, chat, _ = smol
    ids = _prompt_ids(chat, PROMPTS[0])
    eng = Engine(model, tok, num_pages=32, prefill_chunk=7)  # several chunks, page-crossing
    ours = eng.new_session().append(ids, return_logits=True)
    with torch.no_grad():
        ref = hf_smol(torch.tensor([ids])).logits[0, -1]
    assert (ours - ref).abs().max().item() < 1e-3


def test_chat_pieces_match_template(smol):
    _, tok, chat, _ = smol
    sysmsg, user, reply = "You are terse.", "Hello there, who are you?", "I am SmolLM."

    def ref(msgs, gen):
        out = tok.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    one = [{"role": "system", "content": sysmsg}, {"role": "user", "content": user}]
    assert chat.system_ids(sysmsg) + chat.user_turn_ids(user) == ref(one, True)
    two = one + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And then?"}]
    ours = (chat.system_ids(sysmsg) + chat.user_turn_ids(user) + tok.encode(reply, add_special_tokens=False)
            + chat.end_of_reply_ids() + chat.user_turn_ids("And then?"))
    assert ours == ref(two, True)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert chat.end_of_turn_token_id == im_end and im_end in chat.stop_ids
    assert chat.user_open_ids() + tok.encode(user, add_special_tokens=False) + chat.user_close_ids() == \
        chat.user_turn_ids(user)


def test_multi_turn_prefills_only_new_tokens(smol):
    model, tok, chat, _ = smol
    eng = Engine(model, tok, num_pages=64)
    sys_p = eng.prefix(chat.system_ids("You are a helpful assistant."))
    s = eng.new_session(prefix=sys_p)
    turn1 = chat.user_turn_ids("Name a colour.")
    s.append(turn1)
    assert s.stats.last_append_tokens == len(turn1)  # the system prompt was not prefilled again
    reply = list(s.generate(12, stop_ids=chat.stop_ids))
    stopped = reply[-1] in chat.stop_ids
    n_before = s.n_tokens
    turn2 = chat.end_of_reply_ids() + chat.user_turn_ids("And another one?")
    logits = s.append(turn2, return_logits=True)
    # only turn 2 (plus the last generated token if the reply hit max_new_tokens) runs through the model
    assert s.stats.last_append_tokens == len(turn2) + (0 if stopped else 1)
    assert s.n_tokens == n_before + len(turn2)
    # the incremental cache gives the same logits as prefilling the whole history at once
    fresh = eng.new_session()
    ref = fresh.append(list(s.tokens), return_logits=True)
    assert (logits - ref).abs().max().item() < 1e-3
    for x in (s, fresh, sys_p):
        x.free()
    assert eng.free_pages == 64


def test_concurrent_sessions_match_single(smol):
    """Two sessions decoding in the same steps (batch of 2) produce what each produces alone."""
    model, tok, chat, _ = smol
    eng = Engine(model, tok, num_pages=64)
    a_ids, b_ids = _prompt_ids(chat, PROMPTS[0]), _prompt_ids(chat, PROMPTS[2])
    alone = []
    for ids in (a_ids, b_ids):
        s = eng.new_session()
        s.append(ids)
        alone.append(list(s.generate(8)))
        s.free()
    a, b = eng.new_session(), eng.new_session()
    a.append(a_ids)
    b.append(b_ids)
    ga, gb = a.generate(8), b.generate(8)
    out_a, out_b = [], []
    for ta, tb in zip(ga, gb):
        out_a.append(ta)
        out_b.append(tb)
    assert [out_a, out_b] == alone
    assert a.stats.decode_tokens == 7 and b.stats.decode_tokens == 7


# ---- engine mechanics on a tiny synthetic model ----------------------------------------------------------------


def _tiny_engine(num_pages=64, page_size=4, device="cpu", **kw):
    torch.manual_seed(0)
    model = init_synthetic(Llama(tiny(vocab_size=97)), seed=1).eval().to(device)
    return Engine(model, num_pages=num_pages, page_size=page_size, device=device, **kw)


def test_cancel_between_chunks():
    eng = _tiny_engine(prefill_chunk=8)
    s = eng.new_session()
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2  # allow two chunks

    with pytest.raises(Cancelled) as e:
        s.append(list(range(40)), cancel=cancel)
    assert e.value.n_done == 16 and s.n_tokens == 16 and s.stats.last_append_tokens == 16
    s.append(list(range(16, 40)))
    ref = eng.new_session()
    assert torch.allclose(s.append([], return_logits=True), ref.append(list(range(40)), return_logits=True),
                          atol=1e-5)


def test_fork_is_copy_on_write():
    eng = _tiny_engine(page_size=4)
    s = eng.new_session()
    s.append(list(range(10)))  # 3 pages, last one partial
    used = eng.pool.num_pages - eng.free_pages
    f = s.fork()
    assert eng.pool.num_pages - eng.free_pages == used  # nothing copied yet
    lf = f.append([50, 51], return_logits=True)  # writes into the shared partial page -> copied
    ls = s.append([60], return_logits=True)
    assert f.pages[:2] == s.pages[:2] and f.pages[2] != s.pages[2]
    r1, r2 = eng.new_session(), eng.new_session()
    assert torch.allclose(lf, r1.append(list(range(10)) + [50, 51], return_logits=True), atol=1e-5)
    assert torch.allclose(ls, r2.append(list(range(10)) + [60], return_logits=True), atol=1e-5)


def test_stop_token_not_fed_and_truncate_frees_pages():
    eng = _tiny_engine(page_size=4)
    s = eng.new_session()
    s.append([1, 2, 3])
    free_toks = list(s.fork().generate(12))
    k = max(i for i in range(len(free_toks)) if free_toks[i] not in free_toks[:i])  # last first-occurrence
    g = list(s.generate(12, stop_ids=[free_toks[k]]))
    assert g == free_toks[: k + 1]
    assert s.n_tokens == 3 + k  # the stop token is not part of the history
    s.truncate(2)
    assert len(s.pages) == 1
    assert list(s.generate(3)) == _greedy(eng, [1, 2], 3)


def _greedy(eng, ids, n):
    s = eng.new_session()
    s.append(ids)
    out = list(s.generate(n))
    s.free()
    return out


def test_sampling_seeded_and_top_p():
    eng = _tiny_engine()
    s = eng.new_session()
    s.append([5, 6, 7])
    a = list(s.fork().generate(8, Sampling(temperature=1.0, top_p=0.9, seed=3)))
    eng._generators.clear()
    b = list(s.fork().generate(8, Sampling(temperature=1.0, top_p=0.9, seed=3)))
    assert a == b
    tiny_p = list(s.fork().generate(8, Sampling(temperature=1.0, top_p=1e-6, seed=4)))
    assert tiny_p == _greedy(eng, [5, 6, 7], 8)  # top_p -> 0 keeps only the top token


def test_scripted_tokens_are_emitted_and_fed():
    """Synthetic-weight benchmarks script the reply: the scripted ids come out, join the history and are what the
    next step is fed (the cache then equals a prefill of prompt + script)."""
    eng = _tiny_engine()
    s = eng.new_session()
    s.append([5, 6, 7])
    script = (11, 12, 13, 14, 15)
    assert _greedy(eng, [5, 6, 7], 5) != list(script)  # the script is not what the weights would say
    out = list(s.generate(20, Sampling(script=script)))
    assert out == list(script) and s.tokens == [5, 6, 7, *script]
    ref = eng.new_session()
    assert torch.allclose(s.append([], return_logits=True), ref.append([5, 6, 7, *script], return_logits=True),
                          atol=1e-5)
    # with the decode graphs (their static buffers, eagerly here) steps are queued ahead, fed the script's tokens
    from llm.engine import DecodeGraphs

    eng.graphs = DecodeGraphs(eng, max_batch=8, max_pages=32, capture=False)
    g = eng.new_session()
    g.append([5, 6, 7])
    long = tuple(range(20, 32))
    assert list(g.generate(20, Sampling(script=long))) == list(long)
    assert eng.n_ahead_hits >= 8 and eng.n_ahead_misses == 0
    r2 = eng.new_session()
    assert torch.allclose(g.append([], return_logits=True), r2.append([5, 6, 7, *long], return_logits=True),
                          atol=1e-4)


def test_random_ops_never_leak_pages():
    """10,000 random append/generate/truncate/fork/free ops; every page returns to the pool; refcounts always
    equal the number of sessions holding each page; sampled KV contents are checked against a fresh prefill."""
    torch.set_num_threads(1)
    rng = random.Random(1234)
    eng = _tiny_engine(num_pages=96, page_size=4, prefill_chunk=16)
    live = []
    n_ops = checks = oom = 0
    while n_ops < 10_000:
        op = rng.choices(["new", "append", "generate", "truncate", "fork", "free"], [1, 4, 3, 3, 2, 2])[0]
        n_ops += 1
        try:
            if op == "new" or not live:
                live.append(eng.new_session())
            elif op == "append":
                rng.choice(live).append([rng.randrange(97) for _ in range(rng.randint(0, 20))])
            elif op == "generate":
                s = rng.choice(live)
                if s.n_tokens:
                    for i, _ in enumerate(s.generate(rng.randint(1, 5), stop_ids=[rng.randrange(97)])):
                        if rng.random() < 0.1:
                            break  # consumer walks away mid-reply
            elif op == "truncate":
                s = rng.choice(live)
                s.truncate(rng.randint(0, s.n_tokens))
            elif op == "fork":
                live.append(rng.choice(live).fork())
            else:
                live.pop(rng.randrange(len(live))).free()
        except OutOfPages:
            oom += 1
            victim = live.pop(rng.randrange(len(live)))
            victim.free()
        if n_ops % 97 == 0:
            held = [0] * eng.pool.num_pages
            for s in live:
                for p in s.pages:
                    held[p] += 1
                assert len(s.pages) == -(-s.n_cached // eng.page_size)
            assert held == eng.pool.refs
            assert eng.free_pages == sum(1 for r in held if r == 0)
        if n_ops % 1000 == 0:
            cands = [s for s in live if s.n_tokens]
            if cands:
                s = rng.choice(cands)
                others = [x for x in live if x is not s]
                while eng.free_pages < 2 * (s.n_tokens // eng.page_size + 2) and others:
                    victim = others.pop()
                    live.remove(victim)
                    victim.free()
                checks += 1
                probe = s.fork()
                got = probe.append([3], return_logits=True)
                ref = eng.new_session()
                want = ref.append(list(s.tokens) + [3], return_logits=True)
                assert torch.allclose(got, want, atol=1e-4), "KV contents diverged from a fresh prefill"
                probe.free()
                ref.free()
    for s in live:
        s.free()
    assert eng.free_pages == eng.pool.num_pages and not any(eng.pool.refs)
    assert checks >= 5


def test_static_batch_step_matches_eager():
    """The CUDA-graph step's static, padded buffers (run eagerly here) give the same tokens as the eager step."""
    from llm.engine import DecodeGraphs

    # interleave: zip-style consumption so that steps batch the 3 sessions (bucket 4: one padding row)
    def run_zip(graphs):
        eng = _tiny_engine(num_pages=64, page_size=4)
        if graphs:
            eng.graphs = DecodeGraphs(eng, max_batch=8, max_pages=16, capture=False)
        ss = [eng.new_session() for _ in range(3)]
        for i, s in enumerate(ss):
            s.append(list(range(5 + 3 * i)))
        outs = [[] for _ in ss]
        for toks in zip(*[s.generate(10) for s in ss]):
            for o, t in zip(outs, toks):
                o.append(t)
        return outs, eng

    eager, e1 = run_zip(False)
    static, e2 = run_zip(True)
    assert static == eager
    # a consumer that walks away mid-reply, then the session continues: the step launched ahead is dropped
    eng = _tiny_engine(num_pages=64, page_size=4)
    eng.graphs = DecodeGraphs(eng, max_batch=8, max_pages=16, capture=False)
    s = eng.new_session()
    s.append(list(range(7)))
    first = []
    for t in s.generate(10):
        first.append(t)
        if len(first) == 4:
            break
    s.append([11, 12])
    rest = list(s.generate(5))
    ref = eng.new_session()
    ref.append(list(range(7)) + first + [11, 12])
    assert rest == list(ref.generate(5)) and eng.n_ahead_misses >= 1
    assert e2.n_graph_steps > 0 and e2.n_eager_steps == 0 and e1.n_graph_steps == 0
    assert e2.n_ahead_hits > 0  # greedy steps were launched one ahead and used


@pytest.mark.parametrize("variant", ["llama3-rope", "qwen2-bias"])
def test_synthetic_variants_match_transformers(variant):
    """Our model vs transformers on the same random weights (fp32, CPU): Llama 3.x rope scaling, Qwen2 biases
    (also exercises config.hf_dict(), used by bench/llm.py to build the GPU reference)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from llm.config import RopeScaling

    if variant == "llama3-rope":
        cfg = tiny(vocab_size=300, rope_theta=500000.0, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 64),
                   tie_embeddings=False)
    else:
        cfg = tiny(vocab_size=300, rope_theta=1e6, qkv_bias=True, tie_embeddings=False)
    model = init_synthetic(Llama(cfg), seed=3).eval()
    hcfg = AutoConfig.for_model(**cfg.hf_dict())
    hf = AutoModelForCausalLM.from_config(hcfg).eval()
    hf.load_state_dict(model.hf_state_dict(), strict=False)
    eng = Engine(model, num_pages=64, page_size=16)
    ids = list(range(3, 203))  # 200 positions: past the rope-scaling wavelengths
    s = eng.new_session()
    ours = s.append(ids, return_logits=True)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0, -1]
    assert (ours - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())


def test_rope_frequencies_are_transformers_bit_for_bit():
    """The RoPE inverse frequencies (llama3 scaling included) equal transformers' exactly, not just closely: a
    one-ulp difference moves the bf16 cos/sin tables and, through 16 bf16 layers, the logits by ~3 %."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from llm.config import SHAPES, rope_inv_freq

    for name, cfg in SHAPES.items():
        ref = LlamaRotaryEmbedding(LlamaConfig(**cfg.hf_dict())).inv_freq
        assert torch.equal(rope_inv_freq(cfg), ref), name


def test_safetensors_dir_roundtrip(tmp_path):
    """A Hugging Face directory (config.json + safetensors) loads into the same model."""
    import json

    from safetensors.torch import save_file

    from llm.weights import load_model

    cfg = tiny(vocab_size=120, qkv_bias=True, tie_embeddings=False)
    src = init_synthetic(Llama(cfg), seed=5).eval()
    save_file({k: v.contiguous() for k, v in src.hf_state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg.hf_dict()))
    loaded = load_model(tmp_path)
    assert loaded.cfg.qkv_bias and loaded.cfg.n_kv_heads == cfg.n_kv_heads
    a = Engine(src, num_pages=8).new_session().append([1, 2, 3, 4, 5], return_logits=True)
    b = Engine(loaded, num_pages=8).new_session().append([1, 2, 3, 4, 5], return_logits=True)
    assert torch.equal(a, b)


@pytest.mark.parametrize("variant", ["fused", "tuned_gemv"])
def test_fused_decode_path_matches_unfused(variant):
    """The one-token path with RMSNorm/SiLU fused into the GEMVs, or with every projection on the plain GEMV at a
    tuned tile (llm/tune.py; on CPU: the kernels' torch references), gives the same logits as the unfused ops:
    checks its residual plumbing (first layer, final norm, tied LM head)."""
    from llm.llama import FUSABLE, AttnMeta

    model = init_synthetic(Llama(tiny(vocab_size=200)), seed=2).eval()
    if variant == "fused":
        model.decode_fusions = FUSABLE
    else:
        model.decode_fusions = frozenset()
        model.decode_gemv = dict.fromkeys(("qkv", "wo", "w13", "w2", "head"), (4, 512, 4))
    eng = Engine(model, num_pages=16, page_size=4)
    s = eng.new_session()
    s.append(list(range(9)))
    meta = AttnMeta(slot_mapping=torch.tensor([s.pages[9 // 4] * 4 + 1]), block_table=torch.tensor([s.pages + [0]],
                    dtype=torch.int32), seq_lens=torch.tensor([10], dtype=torch.int32))
    s._reserve(10)
    meta.block_table = torch.tensor([s.pages], dtype=torch.int32)
    args = (torch.tensor([42]), torch.tensor([9]), meta, eng.kv)
    with torch.inference_mode():
        plain = model(*args)
        model.fuse_on_cpu = True
        try:
            fused = model(*args)
        finally:
            model.fuse_on_cpu = False
    assert plain.shape == fused.shape == (1, 200)
    assert torch.allclose(plain, fused, atol=1e-5, rtol=1e-4)


def test_short_appends_run_as_one_decode_step():
    """An append of a few tokens runs as one decode step of that many rows of the same sequence (the CUDA graph on a
    GPU; the same static buffers eagerly here): same logits and continuation as the prefill path, also while
    another session's greedy step is queued ahead."""
    from llm.engine import DecodeGraphs

    def engine(graphs):
        eng = _tiny_engine(num_pages=64, page_size=4)
        if graphs:
            eng.graphs = DecodeGraphs(eng, max_batch=16, max_pages=32, capture=False)
        else:
            eng.graph_prefill_max = 0
        return eng

    ref, eng = engine(False), engine(True)
    outs = {}
    for e in (ref, eng):
        a, b = e.new_session(), e.new_session()
        a.append(list(range(3, 40)))  # longer than graph_prefill_max: the prefill path
        b.append(list(range(50, 60)))  # 10 rows
        ga = a.generate(12)
        first = [next(ga) for _ in range(3)]  # a greedy step of `a` is now queued ahead (graphs)
        lb = b.append([7, 8, 9, 10, 11], return_logits=True)  # 5 rows
        rest = list(ga)
        la = a.append([1, 2, 3, 4, 5, 6, 7, 8, 9], return_logits=True)
        outs[e] = (first + rest, lb, la, list(b.generate(6)))
    assert eng.n_graph_prefills == 3 and ref.n_graph_prefills == 0
    assert outs[eng][0] == outs[ref][0] and outs[eng][3] == outs[ref][3]
    assert torch.allclose(outs[eng][1], outs[ref][1], atol=1e-4) and torch.allclose(outs[eng][2], outs[ref][2],
                                                                                      atol=1e-4)


def test_every_path_hands_the_rope_kernel_int32_positions_and_slots(monkeypatch):
    """The eager prefill (long appends, one-token appends), the eager decode (no graphs) and the graph steps give the RoPE/KV write int32 positions and slots. Triton specializes a kernel on its
    arguments' dtypes, and the warm-up only runs graph steps: an int64 eager path compiled a second variant on the
    LLM thread while serving 64 callers (183 ms on the H100)."""
    from llm import llama
    from llm.engine import DecodeGraphs

    seen = []
    real = llama.ops.rope_write_kv

    def spy(q, k, v, positions, cos, sin, k_cache, v_cache, slot_mapping):
        seen.append((q.shape[0], positions.dtype, slot_mapping.dtype))
        return real(q, k, v, positions, cos, sin, k_cache, v_cache, slot_mapping)

    monkeypatch.setattr(llama.ops, "rope_write_kv", spy)
    eng = _tiny_engine(num_pages=64, page_size=4)
    eng.graphs = DecodeGraphs(eng, max_batch=4, max_pages=32, capture=False)
    ss = [eng.new_session() for _ in range(5)]
    ss[0].append(list(range(3, 45)))  # longer than graph_prefill_max: the eager prefill
    ss[1].append([5])  # one token: the eager prefill
    for s in ss[2:]:
        s.append([6, 7, 8])  # a graph step of 3 rows (the warm-up's path)
    gens = [s.generate(4) for s in ss]
    for _ in range(3):  # five sessions, graphs up to four rows: graph steps of at most four rows
        for g in gens:
            next(g)
    assert eng.n_eager_steps == 0 and eng.n_graph_steps > 0 and eng.n_graph_prefills > 0
    eng.graphs = None  # no graphs (as on the CPU): eager decode steps
    for g in gens:
        next(g)
    assert eng.n_eager_steps > 0
    assert {(p, sl) for _, p, sl in seen} == {(torch.int32, torch.int32)}, seen


def test_a_finished_generation_left_open_never_detaches_the_next_one():
    """A reply whose request is done (its script or budget ran out) but whose iterator was not closed yet: a new
    operation on the session detaches it, and closing it later must not end the new generation's request. (It did:
    the stale iterator's cleanup set the session's request to None, the new request was no longer stepped, and its
    consumer looped in engine.step() forever, holding the LLM worker: every session of the server hung.)"""
    eng = _tiny_engine()
    s = eng.new_session()
    s.append([5, 6, 7])
    g1 = s.generate(3, Sampling(script=(11, 12, 13)))
    assert [next(g1), next(g1), next(g1)] == [11, 12, 13]  # its request is done; the iterator is still open
    s.append([40])  # the next user message
    g2 = s.generate(4, Sampling(script=(21, 22, 23, 24)))
    assert next(g2) == 21
    assert list(g1) == []  # the stale iterator yields nothing more and does not touch the history
    g1.close()
    assert s._request is not None
    assert list(g2) == [22, 23, 24]
    assert s.tokens == [5, 6, 7, 11, 12, 13, 40, 21, 22, 23, 24]
    ref = eng.new_session()
    assert torch.allclose(s.append([], return_logits=True), ref.append(s.tokens[:], return_logits=True), atol=1e-5)


def test_a_detached_request_fails_instead_of_spinning():
    """A generation whose request the engine no longer steps (a bug elsewhere) raises at once instead of looping."""
    eng = _tiny_engine()
    s = eng.new_session()
    s.append([5, 6, 7])
    g = s.generate(8)
    next(g)
    eng.sessions.discard(s)  # the engine no longer steps it
    with pytest.raises(RuntimeError, match="did not advance"):
        next(g)


NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("device,run_ahead", [("cpu", 32), ("cpu", 1), pytest.param("cuda", 32, marks=NEEDS_CUDA)])
def test_interleaved_generations_with_lookahead_stay_exact(device, run_ahead):
    """Several sessions generating at once, their consumers taking tokens in random order, closing early, freed
    mid-reply, appending a few tokens (the decode-step prefill), truncating, forking and freeing in between — the
    decode graphs' path (on the CPU static buffers run eagerly; on a GPU captured CUDA graphs, fp32; greedy steps
    launched ahead; generations running ahead of their consumers or not). Every generation is the one a session
    alone would produce, every next() returns, and each cache ends equal to a fresh prefill of its tokens."""
    from llm.engine import DecodeGraphs

    torch.set_num_threads(1)
    rng = random.Random(7)
    if device == "cuda":
        eng = _tiny_engine(num_pages=160, page_size=4, device=device, max_batch=8, max_seq_len=160)
        eng.capture()
    else:
        eng = _tiny_engine(num_pages=160, page_size=4)
        eng.graphs = DecodeGraphs(eng, max_batch=8, max_pages=40, capture=False)
    eng.run_ahead = run_ahead
    live = [eng.new_session() for _ in range(5)]
    for s in live:
        s.append([rng.randrange(97) for _ in range(rng.randint(1, 6))])
    gens: dict = {}  # session -> [iterator, prefix tokens, tokens taken]
    done: list = []
    for _ in range(600):
        s = rng.choice(live)
        x = rng.random()
        if s in gens:
            g = gens[s]
            if x < 0.8:
                tok = next(g[0], None)
                if tok is None:
                    done.append(gens.pop(s)[1:])
                else:
                    g[2].append(tok)
            elif x < 0.85 and len(live) > 3:  # the caller hung up mid-reply: freed while generating
                live.remove(s)
                s.free()
                it, _, taken = gens.pop(s)
                if taken:  # started: it ends
                    assert next(it, None) is None
                it.close()
            else:
                g[0].close()
                done.append(gens.pop(s)[1:])
        elif x < 0.45 and s.n_tokens < 120:
            gens[s] = [s.generate(rng.randint(1, 10)), list(s.tokens), []]
        elif x < 0.7 and s.n_tokens < 120:
            s.append([rng.randrange(97) for _ in range(rng.randint(1, 5))])
        elif x < 0.8:
            s.truncate(rng.randint(1, s.n_tokens))
        elif x < 0.9 and len(live) < 8:
            live.append(s.fork())
        elif len(live) > 3:
            live.remove(s)
            s.free()
    for s, g in list(gens.items()):
        g[0].close()
        done.append(g[1:])
    assert eng.n_ahead_hits > 20 and eng.n_graph_prefills > 10  # the paths under test ran
    for prefix, taken in done[:40]:
        if taken:
            assert taken == _greedy(eng, prefix, len(taken))
    for s in live:
        ref = eng.new_session()
        assert torch.allclose(s.append([], return_logits=True), ref.append(list(s.tokens), return_logits=True),
                              atol=1e-4)
        ref.free()


@pytest.mark.parametrize("run_ahead", [1, 4, 32])
def test_a_slow_consumer_keeps_stepping_with_the_batch(run_ahead):
    """A generation whose consumer has not taken its tokens yet (a paced reply) still advances in the steps other
    consumers ask for, up to `run_ahead` tokens waiting; what it yields is what it would alone. Closing it early
    keeps exactly the tokens it yielded: the ones sampled ahead leave the history and the cache."""
    eng = _tiny_engine(num_pages=96)
    eng.run_ahead = run_ahead
    a, b = eng.new_session(), eng.new_session()
    a.append([5, 6, 7, 8])
    b.append([9, 10, 11])
    want_b = _greedy(eng, [9, 10, 11], 12)
    ga, gb = a.generate(12), b.generate(12)
    took_b = [next(gb)]
    took_a = [next(ga) for _ in range(8)]  # steps asked for by a's consumer only
    waiting = len(b._request.out)
    assert waiting == min(run_ahead, 8)
    assert b.n_tokens == 3 + 1 + waiting  # sampled tokens join the history at once
    took_b += [next(gb) for _ in range(3)]
    assert took_b == want_b[:4]
    gb.close()  # hung up after four tokens
    assert b.tokens == [9, 10, 11] + took_b and b._request is None
    assert b.n_cached <= b.n_tokens and len(b.pages) == -(-b.n_cached // eng.page_size)
    ref = eng.new_session()
    assert torch.allclose(b.append([], return_logits=True), ref.append(list(b.tokens), return_logits=True),
                          atol=1e-5)
    assert took_a + list(ga) == _greedy(eng, [5, 6, 7, 8], 12)
    for s in (a, b, ref):
        s.free()
    assert eng.free_pages == eng.pool.num_pages


def test_a_finished_generation_not_yet_read_is_kept_for_its_consumer():
    """A generation that ran to its end ahead of its consumer still yields every token, then its consumer's
    history is the whole reply; an operation on the session before the consumer read it all detaches it and drops
    the unread tail (as a closed iterator would)."""
    eng = _tiny_engine()
    eng.run_ahead = 32
    a, b = eng.new_session(), eng.new_session()
    a.append([5, 6, 7])
    b.append([8, 9])
    ga, gb = a.generate(4), b.generate(20)
    first = next(ga)
    for _ in range(6):
        next(gb)  # a ran to its end in b's steps
    assert a._request.done and len(a._request.out) == 3
    rest = list(ga)
    assert [first] + rest == _greedy(eng, [5, 6, 7], 4) and a.tokens == [5, 6, 7, first] + rest
    gb2 = next(gb)  # b goes on
    assert b._request is not None and gb2 is not None
    c = eng.new_session()
    c.append([1, 2])
    gc = c.generate(3)
    t0 = next(gc)
    while not c._request.done:
        next(gb)  # b's steps run c to its end: two tokens unread
    assert len(c._request.out) == 2
    c.append([40])  # the session moves on: c's generation is detached and its unread tokens dropped
    assert c.tokens == [1, 2, t0, 40]
    assert list(gc) == []


def test_closing_a_generation_with_an_unread_token_costs_no_forward_pass_later():
    """At many callers other consumers' steps advance a generation past what its consumer read (a draft stopped at
    its first phrase's end): closing it drops the unread token, which was never fed. The next generate() samples
    from the logits the session already has, as before 6c629ce, instead of running its last position again."""
    eng = _tiny_engine()
    a, b = eng.new_session(), eng.new_session()
    a.append([5, 6, 7])
    b.append([8, 9])
    ga, gb = a.generate(10), b.generate(10)
    took = [next(ga), next(ga)]
    next(gb)
    next(gb)  # b's step also advanced a: one token of a's sits unread
    assert len(a._request.out) == 1
    ga.close()
    assert a.tokens == [5, 6, 7] + took and a.n_cached == len(a.tokens)
    runs, prefill = [], eng._prefill
    eng._prefill = lambda s, end: (runs.append(end), prefill(s, end))[1]
    rest = list(a.generate(3))
    assert runs == [] and eng.n_refeeds == 0  # no second run of the last position
    assert took + rest == _greedy(eng, [5, 6, 7], 5)
    gb.close()
    for s in (a, b):
        s.free()
    assert eng.free_pages == eng.pool.num_pages
