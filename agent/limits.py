"""Who may connect, and for how long: pure decisions (no sockets, no clocks), wired into the server by the caller.

    check_bind(host, key)                        at startup: an API key is required unless the host is loopback
    authorize(key, path, headers)                per connection: None, or the Refusal to answer with
    origin_allowed(origin, allowed, host)        browser connections: the Origin allow-list
    AddressCounter(max_per_address)              sessions per client address (IPv6 counted per /64)
    SessionTimers(start, idle_s, max_s)          idle timeout and maximum session length, from timestamps
    redact_path(path)                            a request path fit for logs (no key)
    client_address(peer, headers, trusted)       the address a session is counted under (X-Forwarded-For from
                                                 trusted proxies only)
    tls_context(cert, key)                       the server's ssl.SSLContext, or a LimitsError saying what is wrong
    RedactingLogger(logger, content)             what websockets logs, without keys (and without frames' content
                                                 unless content logging was asked for)

Every refusal carries an HTTP status (before the WebSocket upgrade) or a close code (after it), a stable error
code and a message that says what to do; none of them echo the key. (The key is called a token in the code.)
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
import ssl
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import parse_qsl, urlsplit

# The same names as agent/transports/router.py's API key: one secret for every endpoint.
TOKEN_ENV = "QUICKTURN_API_KEY"  # overrides [server] api_key, so the secret need not sit in a config file
MIN_TOKEN_CHARS = 16
TOKEN_PARAM = "api_key"  # ?api_key=... (a browser cannot set headers on a WebSocket)
TOKEN_HEADERS = ("authorization",)  # "Bearer <key>", what the OpenAI SDK sends


class LimitsError(ValueError):
    """A configuration the server refuses to start with; the message says how to fix it."""


@dataclass(frozen=True)
class Refusal:
    status: int  # HTTP status before the upgrade
    close_code: int  # WebSocket close code after it
    code: str  # the error event's code
    message: str


UNAUTHORIZED = Refusal(401, 1008, "invalid_api_key", "a valid API key is required: send an "
                       "'Authorization: Bearer <key>' header or ?api_key=<key>")
BAD_ORIGIN = Refusal(403, 1008, "origin_not_allowed", "this page's origin may not connect to the server "
                     "(see [server] allowed_origins)")
TOO_MANY = Refusal(429, 1013, "too_many_sessions", "too many sessions from your address; close one and retry")
IDLE = Refusal(408, 1000, "idle_timeout", "no message from the client for too long; the session was closed")
TOO_LONG = Refusal(408, 1000, "session_too_long", "the session reached its maximum length and was closed")
SLOW_CONSUMER = Refusal(503, 1008, "slow_consumer", "the client stopped reading the server's messages; the "
                        "session was closed so that its unsent output does not pile up")
LOG_CONTENT_ENV = "QUICKTURN_LOG_CONTENT"  # 1/true/yes: overrides [server] log_content


# ------------------------------------------------------------------------------------------------- binding
def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach. '' and 0.0.0.0 / :: (every interface) are not; host
    names other than 'localhost' are not either (they are not resolved here)."""
    h = (host or "").strip().strip("[]").lower()
    if h in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(h.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def effective_token(configured: str | None, env: Mapping[str, str] | None = None) -> str:
    """The key in force: $QUICKTURN_API_KEY if set, else [server] api_key ('' = none)."""
    env = os.environ if env is None else env
    return (env.get(TOKEN_ENV) or configured or "").strip()


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token (or with one too short to be a secret)."""
    if is_loopback(host):
        return
    where = host or "every interface"
    if not token:
        raise LimitsError(
            f"refusing to listen on {where} without an API key: anyone who can reach this port could use the "
            f"models. Set {TOKEN_ENV} (or [server] api_key) to a random secret of at least {MIN_TOKEN_CHARS} "
            f"characters, e.g. `export {TOKEN_ENV}=$(python -c 'import secrets; print(secrets.token_urlsafe(24))')`,"
            f" or listen on 127.0.0.1 behind a reverse proxy that authenticates")
    if len(token) < MIN_TOKEN_CHARS:
        raise LimitsError(f"the API key is too short ({len(token)} characters) to protect a server listening "
                          f"on {where}: use at least {MIN_TOKEN_CHARS} random characters")


# ---------------------------------------------------------------------------------------------- the token
def presented_token(path: str, headers: Mapping[str, str]) -> str | None:
    """The key a client presented: an `Authorization: Bearer` header, else the `api_key` query parameter.
    `headers` may be websockets' Headers, or any dict."""
    for name in TOKEN_HEADERS:
        value = _header(headers, name)
        if value:
            scheme, _, rest = value.strip().partition(" ")
            if scheme.lower() != "bearer" or not rest.strip():
                continue
            return rest.strip()
    try:
        query = urlsplit(path).query
    except ValueError:
        return None
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k == TOKEN_PARAM:
            return v
    return None


def token_ok(expected: str, presented: str | None) -> bool:
    """Constant-time comparison; no token configured means no check (loopback only, see check_bind)."""
    if not expected:
        return True
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def authorize(expected: str, path: str, headers: Mapping[str, str]) -> Refusal | None:
    return None if token_ok(expected, presented_token(path, headers)) else UNAUTHORIZED


def redact_path(path: str) -> str:
    """The request path with the key's value hidden, for logs."""
    return re.sub(r"([?&]api_key=)[^&#]*", r"\1***", path)


# --------------------------------------------------------------------------------------------- the origin
def origin_allowed(origin: str | None, allowed: list[str] | tuple[str, ...], host: str | None) -> bool:
    """Browser connections carry an Origin; other clients (SDKs, Twilio, curl) do not and are allowed here (the
    token is what guards them). With an empty allow-list only same-origin pages may connect (the Origin's host and
    port equal the request's Host). Entries: '*', an exact origin 'https://app.example.com', or a subdomain
    wildcard 'https://*.example.com'."""
    if origin is None:
        return True
    o = _origin(origin)
    if o is None:  # "null" (sandboxed iframes, file://) or garbage
        return "*" in allowed
    if not allowed:
        return host is not None and _hostport(host, o[0]) == (o[1], o[2])
    for entry in allowed:
        if entry.strip() == "*":
            return True
        wildcard = "://*." in entry
        e = _origin(entry.replace("://*.", "://", 1))
        if e is None or e[0] != o[0] or e[2] != o[2]:
            continue
        if e[1] == o[1] if not wildcard else o[1].endswith("." + e[1]):  # *.example.com: subdomains only
            return True
    return False


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _origin(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin, lower-cased, default port filled in; None if it is not one."""
    try:
        u = urlsplit(value.strip())
        port = u.port
    except ValueError:
        return None
    if u.scheme not in _DEFAULT_PORTS or not u.hostname or u.path not in ("", "/") or u.query or u.username:
        return None
    return u.scheme, u.hostname.lower().rstrip("."), port or _DEFAULT_PORTS[u.scheme]


def _hostport(host: str, scheme: str) -> tuple[str, int] | None:
    try:
        u = urlsplit(f"//{host.strip()}")
        port = u.port
    except ValueError:
        return None
    if not u.hostname:
        return None
    return u.hostname.lower().rstrip("."), port or _DEFAULT_PORTS.get(scheme, 80)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    v = headers.get(name)
    if v is None:
        v = headers.get(name.title())
    if v is None and not hasattr(headers, "get_all"):  # a plain dict with odd casing
        for k, val in headers.items():
            if k.lower() == name:
                return val
    return v


# ------------------------------------------------------------------------------------ sessions per address
def address_key(addr: str | tuple | None) -> str:
    """The key sessions are counted under: the IP (port dropped); IPv6 by its /64 (one subscriber's prefix)."""
    ip = addr[0] if isinstance(addr, tuple) else (addr or "")
    ip = ip.strip().strip("[]").split("%", 1)[0]
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return ip or "unknown"
    if isinstance(a, ipaddress.IPv6Address):
        if a.ipv4_mapped is not None:
            return str(a.ipv4_mapped)
        return str(ipaddress.ip_network(f"{a}/64", strict=False))
    return str(a)


class AddressCounter:
    """Live sessions per client address. acquire() before a session starts, release() when it ends (always: put
    it in a finally). Not thread-safe; the server calls it from its event loop."""

    def __init__(self, max_per_address: int):
        self.max = max_per_address
        self.live: dict[str, int] = {}

    def acquire(self, addr) -> bool:
        if self.max <= 0:  # 0: no per-address limit
            return True
        k = address_key(addr)
        if self.live.get(k, 0) >= self.max:
            return False
        self.live[k] = self.live.get(k, 0) + 1
        return True

    def release(self, addr) -> None:
        if self.max <= 0:
            return
        k = address_key(addr)
        n = self.live.get(k, 0) - 1
        if n > 0:
            self.live[k] = n
        else:
            self.live.pop(k, None)


# ------------------------------------------------------------------------------------------------- timers
class SessionTimers:
    """Idle timeout (no client message for idle_s) and maximum session length (max_s), from timestamps the caller
    passes (time.monotonic()). 0 disables either. An audio frame counts as activity: a client streaming its mic,
    even silence, is there; a dead peer whose TCP connection never closed is not."""

    def __init__(self, start: float, idle_s: float, max_s: float):
        self.start, self.last = start, start
        self.idle_s, self.max_s = idle_s, max_s

    def touch(self, now: float) -> None:
        self.last = max(self.last, now)

    def expired(self, now: float) -> Refusal | None:
        if self.max_s > 0 and now - self.start >= self.max_s:
            return TOO_LONG
        if self.idle_s > 0 and now - self.last >= self.idle_s:
            return IDLE
        return None

    def next_check(self, now: float) -> float:
        """Seconds until the earliest expiry (inf when both are disabled); sleep this long, then call expired()."""
        due = []
        if self.max_s > 0:
            due.append(self.start + self.max_s)
        if self.idle_s > 0:
            due.append(self.last + self.idle_s)
        return max(0.0, min(due) - now) if due else float("inf")


# ----------------------------------------------------------------------------------------- client address
def _networks(cidrs) -> list:
    out = []
    for c in cidrs or ():
        try:
            out.append(ipaddress.ip_network(str(c).strip(), strict=False))
        except ValueError:
            raise LimitsError(f"not an IP network: {str(c)[:60]!r} (write e.g. 10.0.0.0/8 or 192.0.2.7)") from None
    return out


def parse_networks(cidrs) -> list:
    """CIDR strings -> ip_network objects; a LimitsError names the bad entry (checked at startup)."""
    return _networks(cidrs)


def _ip(value) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    ip = value[0] if isinstance(value, tuple) else (value or "")
    try:
        a = ipaddress.ip_address(str(ip).strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return a.ipv4_mapped
    return a


def in_networks(addr, networks: list) -> bool:
    a = _ip(addr)
    return a is not None and any(a.version == n.version and a in n for n in networks)


def client_address(peer, headers: Mapping[str, str], trusted: list) -> str:
    """The client's IP. `peer` is the TCP peer; only when it is a trusted proxy does X-Forwarded-For count, read
    from the right, skipping trusted hops (the left part of that header is whatever the client wrote)."""
    a = _ip(peer)
    addr = str(a) if a is not None else (peer[0] if isinstance(peer, tuple) else str(peer or ""))
    if not trusted or a is None or not in_networks(a, trusted):
        return addr
    values = headers.get_all("X-Forwarded-For") if hasattr(headers, "get_all") else \
        [v for k, v in headers.items() if k.lower() == "x-forwarded-for"]
    hops = [h.strip() for v in values for h in str(v).split(",") if h.strip()]
    for hop in reversed(hops):
        h = _ip(hop)
        if h is None:
            return addr  # garbage from a proxy: count the proxy, never a client-chosen string
        if not in_networks(h, trusted):
            return str(h)
    return addr


# --------------------------------------------------------------------------------------------------- TLS
def tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    """None when neither is set (plain ws://, or TLS at a reverse proxy); a server context otherwise. Refuses
    half a configuration, a missing file or a key that does not match the certificate, naming the setting."""
    cert, key = (cert or "").strip(), (key or "").strip()
    if not cert and not key:
        return None
    if not cert or not key:
        missing, given = ("tls_cert", "tls_key") if not cert else ("tls_key", "tls_cert")
        raise LimitsError(f"[server] {given} is set but {missing} is not: TLS needs both the certificate chain "
                          f"(tls_cert) and its private key (tls_key), as PEM files")
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        if not os.path.isfile(os.path.expanduser(path)):
            raise LimitsError(f"[server] {name} = {path!r}: no such file")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(os.path.expanduser(cert), os.path.expanduser(key))
    except (ssl.SSLError, OSError) as e:
        raise LimitsError(f"[server] tls_cert / tls_key could not be loaded ({e.__class__.__name__}: "
                          f"{getattr(e, 'reason', None) or e}): they must be PEM files and the key must match the "
                          f"certificate") from None
    return ctx


# ------------------------------------------------------------------------------------------------- logging
def log_content_enabled(configured: bool, env: Mapping[str, str] | None = None) -> bool:
    """Conversation content (transcripts, reply text, audio frames) in logs: off unless asked for."""
    env = os.environ if env is None else env
    v = env.get(LOG_CONTENT_ENV)
    if v is not None and v.strip():
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(configured)


SECRET_HEADERS = {"authorization", "cookie", "set-cookie", "proxy-authorization", "sec-websocket-protocol",
                  "x-twilio-signature"}


class RedactingLogger(logging.LoggerAdapter):
    """The logger handed to websockets: its DEBUG lines show request lines, headers and every frame. Keys never
    appear (the api_key query value, Authorization and similar headers); frames' payloads (audio, transcripts,
    base64 audio in JSON) appear only with `content` on, otherwise their opcode and length."""

    def __init__(self, logger: logging.Logger, content: bool):
        super().__init__(logger, {})
        self.content = content

    def log(self, level, msg, *args, **kwargs):
        if not self.isEnabledFor(level):
            return
        if args:
            args = tuple(self._arg(msg, i, a, args) for i, a in enumerate(args))
        self.logger.log(level, msg, *args, **kwargs)

    def _arg(self, msg, i, a, args):
        if isinstance(a, str):
            if "api_key=" in a:
                a = redact_path(a)
            # header lines: "< %s: %s" / "> %s: %s"
            if i == 1 and msg.endswith("%s: %s") and str(args[0]).lower() in SECRET_HEADERS:
                return "***"
            return a
        frame_type = type(a).__name__
        if frame_type == "Frame" and not self.content:
            op = getattr(getattr(a, "opcode", None), "name", "?")
            if op in ("TEXT", "BINARY", "CONT"):
                return f"{op} [{len(a.data)} bytes, content not logged]"
        return a
