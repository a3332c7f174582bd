"""agent/limits.py: bind check, tokens, Origin allow-list, sessions per address, timers (pure functions)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.datastructures import Headers

from agent.limits import (IDLE, TOO_LONG, UNAUTHORIZED, AddressCounter, LimitsError, SessionTimers, address_key,
                          authorize, check_bind, effective_token, is_loopback, origin_allowed, presented_token,
                          redact_path, token_ok)

TOKEN = "s3cret-key-0123456789"


@pytest.mark.parametrize("host,loop", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("", False), ("::", False), ("192.168.1.5", False), ("example.com", False),
    ("10.0.0.1", False), ("fe80::1%eth0", False), ("127.0.0.1.nip.io", False),
])
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_bind_requires_a_token_beyond_loopback():
    check_bind("127.0.0.1", "")  # fine without a token
    check_bind("0.0.0.0", TOKEN)
    with pytest.raises(LimitsError) as e:
        check_bind("0.0.0.0", "")
    msg = str(e.value)
    assert "refusing to listen on 0.0.0.0" in msg and "QUICKTURN_API_KEY" in msg and "127.0.0.1" in msg
    with pytest.raises(LimitsError, match="every interface"):
        check_bind("", None)
    with pytest.raises(LimitsError, match="too short"):
        check_bind("10.1.2.3", "short")


def test_effective_token_env_overrides_config():
    assert effective_token("from-config", env={}) == "from-config"
    assert effective_token("from-config", env={"QUICKTURN_API_KEY": "from-env"}) == "from-env"
    assert effective_token(None, env={}) == ""


@pytest.mark.parametrize("path,headers,want", [
    (f"/?api_key={TOKEN}", {}, TOKEN),
    (f"/v1/realtime?model=x&api_key={TOKEN}", {}, TOKEN),
    ("/", {"Authorization": f"Bearer {TOKEN}"}, TOKEN),
    ("/", {"authorization": f"bearer   {TOKEN} "}, TOKEN),
    ("/?api_key=other", {"Authorization": f"Bearer {TOKEN}"}, TOKEN),  # the header wins
    ("/", {"Authorization": f"Basic {TOKEN}"}, None),  # not a bearer token
    ("/", {"Authorization": "Bearer "}, None),
    ("/?api_keyx=1", {}, None),
    ("/?api_key=", {}, ""),
    ("/", {}, None),
])
def test_presented_token(path, headers, want):
    assert presented_token(path, headers) == want
    assert presented_token(path, Headers(headers)) == want  # websockets' case-insensitive headers


def test_authorize():
    assert authorize("", "/", {}) is None  # no token configured (loopback)
    assert authorize(TOKEN, f"/?api_key={TOKEN}", {}) is None
    assert authorize(TOKEN, "/", {"Authorization": f"Bearer {TOKEN}"}) is None
    for path, headers in (("/", {}), ("/?api_key=wrong", {}), ("/?api_key=", {}), (f"/?api_key={TOKEN}x", {}),
                          ("/", {"Authorization": f"Bearer {TOKEN[:-1]}"})):
        r = authorize(TOKEN, path, headers)
        assert r is UNAUTHORIZED and r.status == 401 and r.close_code == 1008
        assert TOKEN not in r.message


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.one_of(st.none(), st.text(max_size=40)))
def test_token_ok_is_equality(expected, presented):
    assert token_ok(expected, presented) == (expected == "" or expected == presented)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.dictionaries(st.sampled_from(["Authorization", "Origin", "authorization"]),
                                              st.text(max_size=60)))
def test_presented_token_never_raises(path, headers):
    t = presented_token(path, headers)
    assert t is None or isinstance(t, str)


def test_redact_path():
    assert redact_path(f"/v1/realtime?api_key={TOKEN}&model=x") == "/v1/realtime?api_key=***&model=x"
    assert redact_path(f"/?a=1&api_key={TOKEN}") == "/?a=1&api_key=***"
    assert TOKEN not in redact_path(f"/twilio?api_key={TOKEN}#frag")
    assert redact_path("/healthz") == "/healthz"


@pytest.mark.parametrize("origin,allowed,host,ok", [
    (None, [], "example.com", True),  # not a browser
    ("https://app.example.com", ["https://app.example.com"], "api.example.com", True),
    ("https://APP.example.com:443", ["https://app.example.com"], None, True),  # default port, case
    ("https://app.example.com:8443", ["https://app.example.com"], None, False),  # other port
    ("http://app.example.com", ["https://app.example.com"], None, False),  # other scheme
    ("https://evil.com", ["https://app.example.com"], None, False),
    ("https://app.example.com.evil.com", ["https://app.example.com"], None, False),
    ("https://a.example.com", ["https://*.example.com"], None, True),
    ("https://x.y.example.com", ["https://*.example.com"], None, True),
    ("https://example.com", ["https://*.example.com"], None, False),  # the wildcard means subdomains
    ("https://badexample.com", ["https://*.example.com"], None, False),
    ("https://anything.org", ["*"], None, True),
    ("null", ["https://app.example.com"], None, False),
    ("null", ["*"], None, True),
    ("not an origin", ["https://app.example.com"], None, False),
    # empty allow-list: same origin only
    ("http://127.0.0.1:8765", [], "127.0.0.1:8765", True),
    ("http://localhost:8765", [], "127.0.0.1:8765", False),
    ("https://evil.com", [], "127.0.0.1:8765", False),
    ("https://voice.example.com", [], "voice.example.com", True),
    ("http://127.0.0.1:8765", [], None, False),
])
def test_origin_allowed(origin, allowed, host, ok):
    assert origin_allowed(origin, allowed, host) is ok


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=60)), st.lists(st.text(max_size=40), max_size=3),
       st.one_of(st.none(), st.text(max_size=40)))
def test_origin_allowed_never_raises(origin, allowed, host):
    assert origin_allowed(origin, allowed, host) in (True, False)


def test_address_key():
    assert address_key(("203.0.113.7", 51234)) == "203.0.113.7"
    assert address_key("203.0.113.7") == "203.0.113.7"
    assert address_key(("2001:db8:1:2:aaaa::1", 1, 0, 0)) == address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_key(None) == "unknown"


def test_address_counter():
    c = AddressCounter(2)
    a, b = ("203.0.113.7", 1000), ("198.51.100.1", 1000)
    assert c.acquire(a) and c.acquire(("203.0.113.7", 1001))
    assert not c.acquire(("203.0.113.7", 1002))  # third from the same address
    assert c.acquire(b)  # another address is not affected
    c.release(a)
    assert c.acquire(a)
    for _ in range(5):
        c.release(a)  # extra releases never go negative or leave keys behind
    c.release(b)
    assert c.live == {}
    assert all(AddressCounter(0).acquire(a) for _ in range(100))  # 0: no limit


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["10.0.0.1", "10.0.0.2", "::1", "2001:db8::1"])),
                max_size=60), st.integers(1, 4))
def test_address_counter_model(ops, limit):
    """Against a reference: a session is admitted iff fewer than `limit` are live from that address."""
    c = AddressCounter(limit)
    live: dict[str, int] = {}
    for acquire, addr in ops:
        k = address_key(addr)
        if acquire:
            assert c.acquire(addr) == (live.get(k, 0) < limit)
            if live.get(k, 0) < limit:
                live[k] = live.get(k, 0) + 1
        elif live.get(k, 0):
            c.release(addr)
            live[k] -= 1
    assert {k: v for k, v in live.items() if v} == c.live


def test_session_timers():
    t = SessionTimers(start=100.0, idle_s=30, max_s=600)
    assert t.expired(120) is None and t.next_check(120) == pytest.approx(10)
    assert t.expired(130) is IDLE
    t.touch(125)
    assert t.expired(130) is None and t.next_check(130) == pytest.approx(25)
    t.touch(110)  # an older timestamp never moves the clock back
    assert t.expired(154) is None
    for now in range(125, 700, 20):
        t.touch(now)
    assert t.expired(700) is TOO_LONG and t.next_check(700) == 0
    assert IDLE.code == "idle_timeout" and TOO_LONG.code == "session_too_long"
    off = SessionTimers(0, 0, 0)
    assert off.expired(1e9) is None and off.next_check(5) == float("inf")


@settings(max_examples=300, deadline=None)
@given(st.floats(1, 100), st.floats(1, 1000), st.lists(st.floats(0, 2000), max_size=20), st.floats(0, 3000))
def test_session_timers_properties(idle, longest, touches, now):
    t = SessionTimers(0.0, idle, longest)
    for x in sorted(touches):
        if x <= now:
            t.touch(x)
    last = max([0.0] + [x for x in touches if x <= now])
    want = TOO_LONG if now >= longest else IDLE if now - last >= idle else None
    assert t.expired(now) is want
    if want is None:  # sleeping next_check() lands on the next expiry (to float rounding)
        assert t.expired(now + t.next_check(now) + 1e-9) is not None


def test_serve_refuses_a_public_address_without_a_key(tmp_path):
    """The real command: no models are loaded before the refusal, and the message says what to do."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "QUICKTURN_API_KEY"}
    r = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
                       capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert r.returncode == 2
    assert "refusing to listen on 0.0.0.0 without an API key" in r.stderr and "loaded" not in r.stdout
