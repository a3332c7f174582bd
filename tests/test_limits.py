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


# ---------------------------------------------------------------------------------- RateMonitor (protocol.py)
from agent.protocol import ProtocolError, RateMonitor  # noqa: E402


def _feed(m: RateMonitor, arrivals) -> float | None:
    """arrivals: (n samples, arrival time); returns the time of the refusal, or None."""
    for n, t in arrivals:
        try:
            m.add(n, t)
        except ProtocolError as e:
            assert e.code == "sample_rate_mismatch" and e.fatal
            return t
    return None


def test_rate_monitor_accepts_a_burst_after_a_stall():
    """10 s in real time, the network stalls 6 s, the 6 s of backlog arrive at once, then real time again."""
    frames = [(320, 0.02 * (i + 1)) for i in range(500)]  # 10 s
    frames += [(320, 16.0)] * 300  # 6 s captured during the stall, delivered in one burst at t = 16
    frames += [(320, 16.0 + 0.02 * (i + 1)) for i in range(500)]
    assert _feed(RateMonitor(16000, slack_s=3.0, backlog_s=10.0), frames) is None


def test_rate_monitor_accepts_audio_buffered_while_the_session_started():
    """The clock starts at the start message: a client that buffered 5 s while the session was starting (or its
    network stalled before the first frame) sends them at once. The old monitor (clock from the first frame,
    no backlog credit) refused this client: it saw 5 s of audio in 0 s."""
    frames = [(16000 * 5, 5.0)] + [(320, 5.0 + 0.02 * (i + 1)) for i in range(500)]
    assert _feed(RateMonitor(16000, slack_s=3.0, backlog_s=10.0, start=0.0), frames) is None
    assert _feed(RateMonitor(16000, slack_s=3.0), frames) is not None  # without the credit: a false positive


@pytest.mark.parametrize("ratio", [1.25, 2.0, 4.0])
def test_rate_monitor_refuses_sustained_faster_than_real_time(ratio):
    slack, backlog = 3.0, 10.0
    frames = [(int(320 * ratio), 0.02 * (i + 1)) for i in range(20_000)]
    t = _feed(RateMonitor(16000, slack, backlog, start=0.0), frames)
    assert t is not None and t <= slack / (ratio - 1) + 0.1  # caught as soon as it is slack ahead


def test_rate_monitor_credit_is_capped():
    """Quiet for a minute, then a minute of audio at once: the credit is backlog_s, not the whole minute (the old
    monitor accepted this flood: it counted from the first frame)."""
    m = RateMonitor(16000, slack_s=3.0, backlog_s=10.0, start=0.0)
    m.add(320, 0.02)
    t = _feed(m, [(320, 60.0)] * 3000)
    assert t is not None and m.samples / 16000 - 0.02 <= 3.0 + 10.0 + 0.05


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=300), st.integers(0, 2**31))
def test_rate_monitor_never_refuses_real_time_audio_delayed_within_the_backlog(delays, seed):
    """A client capturing in real time from the start, each 20 ms frame delayed by 0..backlog_s (in order): never
    refused, whatever the pattern of stalls."""
    backlog = 10.0
    m = RateMonitor(16000, slack_s=3.0, backlog_s=backlog, start=0.0)
    t_prev = 0.0
    for i, d in enumerate(delays):
        captured = 0.02 * (i + 1)
        t = max(t_prev, captured + min(d, backlog))
        m.add(320, t)  # raises on a false positive
        t_prev = t


@settings(max_examples=200, deadline=None)
@given(st.floats(1.1, 8.0), st.floats(0.0, 30.0))
def test_rate_monitor_always_catches_a_flood(ratio, quiet):
    """Silent for `quiet` s (no frames), then faster than real time by `ratio`: refused within
    (slack + backlog) / (ratio - 1) s of streaming, however long the quiet part was."""
    slack, backlog = 3.0, 10.0
    m = RateMonitor(16000, slack, backlog, start=0.0)
    n = int(320 * ratio)
    r = n / 320  # the ratio actually sent (whole samples per frame)
    frames = [(n, quiet + 0.02 * (i + 1)) for i in range(int(((slack + backlog) / (r - 1) + 1) / 0.02))]
    assert _feed(m, frames) is not None


# ------------------------------------------------------------------------------------- client address, TLS
from agent.limits import (RedactingLogger, client_address, in_networks, log_content_enabled,  # noqa: E402
                          parse_networks, tls_context)


def test_client_address_trusts_forwarded_for_only_from_trusted_proxies():
    proxies = parse_networks(["10.0.0.0/8"])
    xff = Headers({"X-Forwarded-For": "203.0.113.9, 10.1.2.3"})
    assert client_address(("10.0.0.5", 1), xff, proxies) == "203.0.113.9"  # the hop before our proxies
    assert client_address(("198.51.100.1", 1), xff, proxies) == "198.51.100.1"  # not a proxy: header ignored
    assert client_address(("10.0.0.5", 1), xff, []) == "10.0.0.5"
    # a client writing its own X-Forwarded-For cannot choose its address: only the rightmost untrusted hop counts
    spoof = Headers({"X-Forwarded-For": "1.2.3.4, 203.0.113.9"})
    assert client_address(("10.0.0.5", 1), spoof, proxies) == "203.0.113.9"
    assert client_address(("10.0.0.5", 1), Headers({"X-Forwarded-For": "garbage"}), proxies) == "10.0.0.5"
    assert client_address(("10.0.0.5", 1), Headers(), proxies) == "10.0.0.5"
    assert in_networks("127.0.0.1", parse_networks(["127.0.0.0/8", "::1/128"]))
    assert in_networks(("::1", 5, 0, 0), parse_networks(["127.0.0.0/8", "::1/128"]))
    assert not in_networks("203.0.113.9", parse_networks(["127.0.0.0/8"]))
    with pytest.raises(LimitsError, match="not an IP network"):
        parse_networks(["10.0.0.0/33"])


def _self_signed(tmp_path):
    """A real self-signed certificate for 127.0.0.1 (openssl on PATH)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_tls_context(tmp_path):
    assert tls_context("", "") is None
    cert, key = _self_signed(tmp_path)
    assert tls_context(str(cert), str(key)) is not None
    with pytest.raises(LimitsError, match="tls_cert is set but tls_key is not"):
        tls_context(str(cert), "")
    with pytest.raises(LimitsError, match="tls_key is set but tls_cert is not"):
        tls_context("", str(key))
    with pytest.raises(LimitsError, match="no such file"):
        tls_context(str(tmp_path / "missing.pem"), str(key))
    (tmp_path / "b").mkdir()
    _, other_key = _self_signed(tmp_path / "b")
    with pytest.raises(LimitsError, match="could not be loaded"):
        tls_context(str(cert), str(other_key))  # a key that is not the certificate's
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(LimitsError, match="could not be loaded"):
        tls_context(str(tmp_path / "junk.pem"), str(key))


def test_log_content_switch():
    assert log_content_enabled(False, env={}) is False
    assert log_content_enabled(True, env={}) is True
    assert log_content_enabled(False, env={"QUICKTURN_LOG_CONTENT": "1"}) is True
    assert log_content_enabled(True, env={"QUICKTURN_LOG_CONTENT": "0"}) is False


def test_redacting_logger(caplog):
    import logging

    from websockets.frames import Frame, Opcode

    base = logging.getLogger("test.redacting")
    frame = Frame(Opcode.TEXT, b'{"type": "transcript", "text": "my secret words"}')
    with caplog.at_level(logging.DEBUG, logger="test.redacting"):
        quiet = RedactingLogger(base, content=False)
        quiet.debug("< GET %s HTTP/1.1", f"/v1/realtime?model=x&api_key={TOKEN}")
        quiet.debug("< %s: %s", "Authorization", f"Bearer {TOKEN}")
        quiet.debug("< %s: %s", "Host", "127.0.0.1")
        quiet.debug("> %s", frame)
        RedactingLogger(base, content=True).debug("> %s", frame)
    lines = [r.getMessage() for r in caplog.records]
    assert TOKEN not in "\n".join(lines)
    assert lines[2] == "< Host: 127.0.0.1" and "api_key=***" in lines[0] and lines[1] == "< Authorization: ***"
    assert "my secret words" not in lines[3] and "TEXT [" in lines[3]
    assert "my secret words" in lines[4]  # asked for
