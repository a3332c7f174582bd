import pytest

from agent.memory import GiB, MiB, Admission, KVLedger, MemoryPlanError, kv_bytes_per_token, make_plan


def test_plan_sizes_kv_pool_from_what_is_left():
    per_tok = kv_bytes_per_token(32, 8, 128, 2)  # Llama-3.1-8B, bf16: 128 KiB per token
    assert per_tok == 131072
    fixed = {"llm weights": int(16.06 * GiB), "asr weights": int(1.6 * GiB), "tts weights": 60 * MiB,
             "asr workspace": 2 * GiB, "cuda graphs": 1 * GiB}
    p = make_plan(80 * GiB, fixed, reserve=0.05, kv_bytes_per_token=per_tok, page_tokens=16, session_tokens=4096)
    left = 80 * GiB - sum(fixed.values()) - int(0.05 * 80 * GiB)
    assert p.kv_bytes <= left < p.kv_bytes + p.page_bytes  # every whole page that fits, no more
    assert p.planned + p.reserve <= 80 * GiB
    assert p.max_sessions == p.kv_tokens // 4096 and p.max_sessions >= 64
    t = p.table()
    assert "llm weights" in t and "LLM KV pool" in t and "safety reserve" in t


def test_plan_refuses_clearly_when_it_cannot_fit():
    with pytest.raises(MemoryPlanError, match=r"do not fit.*largest item is llm weights"):
        make_plan(16 * GiB, {"llm weights": 15 * GiB, "asr weights": GiB // 2}, reserve=GiB,
                  kv_bytes_per_token=131072, session_tokens=4096)


def test_kv_limit_and_absolute_reserve():
    p = make_plan(10 * GiB, {"w": GiB}, reserve=GiB, kv_bytes_per_token=1024, page_tokens=16, kv_limit=0.5)
    assert p.kv_bytes <= 5 * GiB and p.reserve == GiB


def test_admission_refuses_and_counts():
    a = Admission(max_sessions=2)
    assert a.admit(0) == (True, "")
    ok, why = a.admit(2)
    assert not ok and "capacity" in why
    ok, why = a.admit(1, predicted_p95_ms=700, target_ms=500)
    assert not ok and "700" in why and a.refused == 2


def test_lru_eviction_skips_busy_sessions():
    led = KVLedger(1000)
    led.touch("a", 300, now=1.0)
    led.touch("b", 300, now=2.0)
    led.touch("c", 300, now=3.0)
    assert led.to_evict("c", 50) == []
    assert led.to_evict("c", 200) == ["a"]  # least recently used first
    assert led.to_evict("c", 200, busy={"a"}) == ["b"]
    with pytest.raises(MemoryPlanError):
        led.to_evict("c", 2000)


# ---- KV pressure on the real embedded LLM (SmolLM2-135M, CPU): quota, LRU eviction, re-prefill -------------------

QUESTIONS = [["What is the capital of France?", "And what is its most famous tower called?"],
             ["Name three colours of the rainbow.", "Which of them is your favourite?"],
             ["How many legs does a spider have?", "And how many does an ant have?"]]


def _turn(cs, text):
    cs.add_user(text)
    toks = list(cs.generate_reply())
    cs.end_reply(toks)
    return toks


def _round_robin(llm):
    convs = [llm.new_session() for _ in QUESTIONS]
    out = []
    for k in range(2):
        for cs, qs in zip(convs, QUESTIONS):
            out.append(_turn(cs, qs[k]))
    return convs, out


def test_idle_sessions_are_evicted_lru_and_continue_with_the_same_greedy_tokens():
    from small_llm import chat_llm

    big = chat_llm(256, max_new_tokens=10)
    convs, ref = _round_robin(big)
    assert big.evictions == 0
    prefix_pages = len(big.prefix.pages)
    need_one = max(c.own_pages() for c in convs)  # the largest single conversation at its end
    # room for one conversation at its largest plus one reply, never for all three at once
    tiny = chat_llm(prefix_pages + need_one + 2, max_new_tokens=10)
    assert prefix_pages + sum(c.own_pages() for c in convs) > tiny.engine.pool.num_pages
    tconvs, got = _round_robin(tiny)
    assert tiny.evictions >= 2 and tiny.restores >= 1 and tiny.restored_tokens > 0
    assert got == ref  # re-prefilled histories continue exactly as the resident ones did
    for a, b in zip(convs, tconvs):
        assert b.n_tokens == a.n_tokens
    for c in tconvs:
        c.free()
    tiny.prefix.free()
    assert tiny.engine.free_pages == tiny.engine.pool.num_pages  # nothing leaked


def test_session_quota_drops_the_oldest_turns_and_refuses_what_cannot_fit():
    from small_llm import chat_llm

    llm = chat_llm(256, max_new_tokens=16)
    cs = llm.new_session()
    llm.quota_tokens = cs.n_tokens + 110  # the system prompt and about two short turns
    qs = [q for pair in QUESTIONS for q in pair][:4]
    for q in qs:
        _turn(cs, q)
        assert cs.n_tokens <= llm.quota_tokens
    assert llm.dropped_turns >= 1
    text = llm.tokenizer.decode(cs.s.tokens)
    assert text.count("Quickturn") == 1 and qs[-1] in text and qs[0] not in text  # system kept, oldest gone
    llm.quota_tokens = cs.n_system + 12
    with pytest.raises(ValueError, match="session quota"):
        cs.add_user("Tell me a long story about a dragon who lived in a castle by the sea.")


def test_runtime_plan_from_measured_weights_and_a_clear_refusal():
    """The runtime's meter on the real CPU LLM: the plan holds the measured weights, the KV pool it asks for is
    what make_plan gives; with a device too small it refuses naming the largest item."""
    from small_llm import _weights

    from agent.config import Config
    from agent.runtime import MemoryMeter, _module_bytes

    cfg, model, _ = _weights()
    c = Config.load("cpu")
    meter = MemoryMeter(c)
    pages = meter.plan_pages(model, 16)
    assert meter.plan.fixed["LLM weights"] == _module_bytes(model) > 100 * MiB
    assert pages == meter.plan.kv_pages and pages * 16 >= c.llm.max_context_tokens * c.server.max_sessions
    assert "LLM weights" in meter.plan.table()
    c.memory.total = 200 * MiB
    with pytest.raises(MemoryPlanError, match="do not fit.*largest item is LLM weights"):
        MemoryMeter(c).plan_pages(model, 16)


def test_piper_warmup_sizes_its_arena_with_a_phrase_longer_than_any_the_runtime_sends():
    """Issue 9: onnxruntime's CPU arena keeps the size of the largest call it has seen. Runtime.warmup speaks
    Piper's WARMUP_TEXT (more words than [phrases] max_words) so the arena does not grow in steps while serving."""
    from agent.config import PhraseConfig
    from agent.runtime import _warm_tts
    from tts.piper_onnx import PiperOnnxTTS

    assert len(PiperOnnxTTS.WARMUP_TEXT.split()) > PhraseConfig().max_words
    spoken = []
    tts = PiperOnnxTTS.__new__(PiperOnnxTTS)  # no model: only what the warm-up asks it to say
    tts.synthesize = lambda text: iter(spoken.append(text) or ())
    _warm_tts(tts)
    assert spoken.count(PiperOnnxTTS.WARMUP_TEXT) >= 2 and spoken[-1] == "Hello."
