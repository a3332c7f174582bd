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
