"""Fuzzing every parser a client can reach: generators (hypothesis strategies) and checks, shared by
tests/test_fuzz.py (a short run in `make test`) and the recorded run here:

    python bench/fuzz.py --cases 100000       # -> bench/results/fuzz.json

A check feeds one generated case to a parser and returns "ok" (parsed: the result is checked too) or "rejected"
(the parser's own error type, with a usable code and message). Anything else it raises is a bug: the test fails
on it (hypothesis shrinks it), the recorded run counts it as `unhandled` and keeps the first examples. A case that
is a sequence of messages (one connection) is "ok" when at least one of them was accepted.

Targets
  protocol_text      ServerProtocol.receive(str): arbitrary text, JSON of any shape, protocol-shaped objects,
                     mutated valid messages, deep nesting
  protocol_bytes     ServerProtocol.receive(bytes) before/after start, around the frame limit
  protocol_session   a sequence of text and binary messages on one connection's state
  rate_monitor       RateMonitor.add over arbitrary arrival patterns
  audio_decode       decode_audio_bytes: random bytes, generated WAV headers, mutated real WAV/FLAC/OGG files
  pcm16              pcm16_to_float on any bytes
  ulaw               ulaw_decode on any bytes, and decode(encode(decode(x))) == decode(x)
  realtime           agent/transports/realtime.py RealtimeProtocol.receive: sequences of Realtime-shaped events
  twilio             agent/transports/twilio.py TwilioProtocol.receive (+ parse_mark): calls' worth of events
  webrtc_signaling   agent/transports/webrtc.py SignalingProtocol.receive
  (a transport parser added later under agent/transports/ gets a target by adding it to TARGETS)
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import random
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.audio import (SUPPORTED_RATES, AudioError, decode_audio_bytes, pcm16_to_float,  # noqa: E402
                         ulaw_decode, ulaw_encode)
from agent.protocol import Audio, Playback, ProtocolError, RateMonitor, ServerProtocol, Start, Stop  # noqa: E402

# --------------------------------------------------------------------------------------------- generators
INTERESTING_INTS = [0, 1, -1, 2, 8000, 16000, 44100, 48000, 22050, 96000, 2**15, 2**16, 2**31 - 1, 2**31, 2**32,
                    2**63, -2**63, 10**30, 65536, 65537]
json_leaf = (st.none() | st.booleans() | st.integers() | st.sampled_from(INTERESTING_INTS)
             | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=24))
json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c,
                                                                                          max_size=4), max_leaves=16)
int_like = st.sampled_from(INTERESTING_INTS + list(SUPPORTED_RATES)) | st.integers() | json_value


def maybe(d: dict) -> st.SearchStrategy:
    """A dict strategy where every key is optional."""
    return st.fixed_dictionaries({}, optional=d)


def dumps(obj) -> str:
    return json.dumps(obj, allow_nan=True)


def mutate_text(rng: random.Random, s: str) -> str:
    """Random edits of a string: delete, insert, replace, duplicate or truncate a span."""
    s = list(s)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        i = rng.randint(0, len(s))
        j = min(len(s), i + rng.randint(0, 8))
        if op == 0:
            del s[i:j]
        elif op == 1:
            s[i:i] = rng.choice(['"', "{", "}", "[", "]", ",", ":", "\\", "\x00", "\ud800", "1e999", "-", "null",
                                 "\u2028", "NaN", "Infinity", chr(rng.randint(0, 0x10FFFF))])
        elif op == 2 and s:
            s[min(i, len(s) - 1)] = chr(rng.randint(0, 0x10FFFF))
        elif op == 3:
            s[i:i] = s[i:j]
        else:
            del s[i:]
    return "".join(s)


def mutate_bytes(rng: random.Random, b: bytes) -> bytes:
    """Random edits of a binary: bit flips, interesting values at word offsets, splices, truncation."""
    b = bytearray(b)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        i = rng.randint(0, max(0, len(b) - 1))
        if op == 0 and b:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and len(b) >= 4:
            i -= i % 4
            val = rng.choice([0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                              rng.getrandbits(32)])
            b[i:i + 4] = int(val).to_bytes(4, "little")
        elif op == 2:
            del b[i:i + rng.randint(1, 64)]
        elif op == 3:
            b[i:i] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 32)))
        elif op == 4:
            j = rng.randint(0, len(b))
            b[i:i] = b[min(i, j):max(i, j)][:256]
        else:
            del b[rng.randint(0, len(b)):]
    return bytes(b)


def mutate_json(rng: random.Random, obj, depth: int = 0):
    """Structural edits of a JSON object: replace / drop / add values, change types."""
    def rand_value():
        return rng.choice([None, True, False, 0, -1, 2**64, 1.5, float("nan"), float("inf"), "", "x" * 70,
                           [], {}, [1, "a"], {"type": None}, rng.choice(INTERESTING_INTS)])
    if isinstance(obj, dict) and obj and depth < 6:
        obj = dict(obj)
        k = rng.choice(list(obj))
        op = rng.randrange(4)
        if op == 0:
            del obj[k]
        elif op == 1:
            obj[k] = rand_value()
        elif op == 2:
            obj[k] = mutate_json(rng, obj[k], depth + 1)
        else:
            obj[rng.choice(["type", "extra", k + "_", ""])] = rand_value()
        return obj
    if isinstance(obj, list) and obj and depth < 6:
        obj = list(obj)
        i = rng.randrange(len(obj))
        obj[i] = mutate_json(rng, obj[i], depth + 1) if rng.random() < 0.5 else rand_value()
        return obj
    return rand_value() if rng.random() < 0.7 else obj


seeds = st.integers(0, 2**32 - 1)


# --------------------------------------------------------------------------------- our protocol (agent/protocol.py)
PROTOCOL_SEEDS = [
    {"type": "start", "sample_rate": 16000},
    {"type": "start", "sample_rate": 48000, "encoding": "pcm_s16le", "channels": 1, "output_sample_rate": 24000},
    {"type": "stop"},
    {"type": "playback", "samples": 1600},
]
protocol_obj = st.fixed_dictionaries(
    {"type": st.sampled_from(["start", "stop", "playback", "audio", "", "START"]) | json_value},
    optional={"sample_rate": int_like, "encoding": st.sampled_from(["pcm_s16le", "opus", "mulaw"]) | json_value,
              "channels": int_like, "output_sample_rate": int_like, "samples": int_like})
protocol_text = st.one_of(
    st.text(max_size=200),
    json_value.map(dumps),
    protocol_obj.map(dumps),
    st.tuples(st.sampled_from(PROTOCOL_SEEDS), seeds).map(lambda a: dumps(mutate_json(random.Random(a[1]), a[0]))),
    st.tuples(st.sampled_from(PROTOCOL_SEEDS), seeds).map(lambda a: mutate_text(random.Random(a[1]), dumps(a[0]))),
    st.tuples(st.integers(1, 200_000), st.sampled_from(["[", '{"a":', '{"type":['])).map(lambda a: a[1] * a[0]),
)
frame_bytes = st.one_of(
    st.binary(max_size=4096),
    st.tuples(st.sampled_from([0, 1, 2, 8191, 8192, 8193, 8194, 65535, 65536, 65537, 65538, 131072]),
              st.sampled_from([b"\x00", b"\xff", b"\x00\x80", b"\xff\x7f"])).map(lambda a: (a[1] * a[0])[:a[0]]),
)


def check_protocol_text(case: tuple[str, bool]) -> str:
    text, started = case
    p = ServerProtocol()
    if started:
        p.receive(dumps({"type": "start", "sample_rate": 16000}))
    try:
        out = p.receive(text)
    except ProtocolError as e:
        return _check_protocol_error(e)
    assert isinstance(out, (Start, Stop, Playback)), f"unexpected event {out!r}"
    if isinstance(out, Start):
        assert out.sample_rate in SUPPORTED_RATES and out.channels == 1 and out.encoding == "pcm_s16le"
        assert out.output_sample_rate == 0 or out.output_sample_rate in SUPPORTED_RATES
        assert p.start == out
    if isinstance(out, Playback):
        assert isinstance(out.samples, int) and not isinstance(out.samples, bool) and out.samples >= 0
    return "ok"


def check_protocol_bytes(case: tuple[bytes, bool, int]) -> str:
    blob, started, limit = case
    p = ServerProtocol(max_frame_bytes=limit)
    if started:
        p.receive(dumps({"type": "start", "sample_rate": 16000}))
    try:
        out = p.receive(blob)
    except ProtocolError as e:
        assert e.code in ("not_started", "frame_too_large", "bad_frame"), e.code
        assert (e.code == "not_started") == (not started)
        return _check_protocol_error(e)
    assert started and len(blob) <= limit and len(blob) % 2 == 0
    assert isinstance(out, Audio) and out.samples.dtype == np.float32 and out.samples.shape == (len(blob) // 2,)
    assert np.all(out.samples >= -1.0) and np.all(out.samples < 1.0)
    return "ok"


def check_protocol_session(msgs: list) -> str:
    """A whole connection: after any rejected message the parser still accepts a good one."""
    p = ServerProtocol(max_frame_bytes=8192)
    rejected = 0
    for m in msgs:
        try:
            out = p.receive(m)
            assert isinstance(out, (Start, Stop, Playback, Audio))
        except ProtocolError as e:
            _check_protocol_error(e)
            rejected += 1
    assert isinstance(p.receive('{"type": "stop"}'), Stop)  # still usable
    return "ok" if rejected < len(msgs) else "rejected"  # "ok": at least one message was accepted


def _check_protocol_error(e: ProtocolError) -> str:
    assert isinstance(e.code, str) and e.code and isinstance(e.message, str) and len(e.message) >= 10
    assert len(e.message) < 400, "error messages must not echo unbounded client input"
    back = json.loads(e.to_json())
    assert back["type"] == "error" and back["code"] == e.code and isinstance(back["fatal"], bool)
    return "rejected"


def check_rate_monitor(case: tuple[int, list[tuple[int, float]]]) -> str:
    rate, arrivals = case
    m = RateMonitor(rate, 3.0)
    t = 0.0
    for n, dt in arrivals:
        t += dt
        try:
            m.add(n, t)
        except ProtocolError as e:
            assert e.fatal and e.code == "sample_rate_mismatch"
            _check_protocol_error(e)
            return "rejected"
    return "ok"


# ------------------------------------------------------------------------------------ audio (agent/audio.py)
def _audio_seeds() -> list[bytes]:
    """Small valid files of each container the decoder accepts, made from a real-ish signal."""
    import soundfile as sf

    t = np.arange(1600) / 16000
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    out = []
    for fmt, sub, rate, ch in (("WAV", "PCM_16", 16000, 1), ("WAV", "FLOAT", 8000, 2), ("WAV", "PCM_U8", 8000, 1),
                               ("WAV", "ULAW", 8000, 1), ("FLAC", "PCM_16", 16000, 1), ("OGG", "VORBIS", 16000, 1),
                               ("AIFF", "PCM_24", 22050, 1), ("AU", "PCM_16", 16000, 1)):
        buf = io.BytesIO()
        try:
            sf.write(buf, np.stack([x] * ch, 1) if ch > 1 else x, rate, format=fmt, subtype=sub)
        except Exception:  # a libsndfile build without that codec
            continue
        out.append(buf.getvalue())
    return out


AUDIO_SEEDS = _audio_seeds()


def wav_header(fields) -> bytes:
    """A RIFF/WAVE file from generated header fields (most of them wrong)."""
    fmt_len, fmt_tag, channels, rate, bits, data_len, payload, riff_len = fields
    fmt = (fmt_tag.to_bytes(2, "little") + channels.to_bytes(2, "little") + rate.to_bytes(4, "little")
           + (rate * channels * bits // 8 % 2**32).to_bytes(4, "little")
           + (channels * bits // 8 % 2**16).to_bytes(2, "little") + bits.to_bytes(2, "little"))
    fmt = (fmt + b"\x00" * 64)[:fmt_len]
    body = b"WAVE" + b"fmt " + fmt_len.to_bytes(4, "little") + fmt + b"data" + data_len.to_bytes(4, "little") + payload
    return b"RIFF" + (riff_len if riff_len is not None else len(body)).to_bytes(4, "little") + body


audio_bytes = st.one_of(
    st.binary(max_size=1024),
    st.tuples(st.sampled_from([16, 18, 40, 0, 2, 60]),
              st.sampled_from([1, 3, 6, 7, 0xFFFE, 0, 2]) | st.integers(0, 2**16 - 1),
              st.sampled_from([1, 2, 0, 255]) | st.integers(0, 2**16 - 1),
              st.sampled_from([8000, 16000, 0, 1, 2**31]) | st.integers(0, 2**32 - 1),
              st.sampled_from([8, 16, 24, 32, 64, 0, 7]) | st.integers(0, 2**16 - 1),
              st.sampled_from([0, 2, 3, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1),
              st.binary(max_size=256), st.none() | st.integers(0, 2**32 - 1)).map(wav_header),
    st.tuples(st.sampled_from(range(len(AUDIO_SEEDS))), seeds).map(
        lambda a: mutate_bytes(random.Random(a[1]), AUDIO_SEEDS[a[0]])),
    st.tuples(st.sampled_from(range(len(AUDIO_SEEDS))), st.integers(0, 200)).map(lambda a: AUDIO_SEEDS[a[0]][:a[1]]),
)


def check_audio_decode(blob: bytes) -> str:
    try:
        audio, rate = decode_audio_bytes(blob)
    except AudioError as e:
        assert str(e)
        return "rejected"
    assert isinstance(audio, np.ndarray) and audio.dtype == np.float32 and audio.ndim == 1
    assert audio.size and np.all(np.isfinite(audio)), "decoded audio must be finite and non-empty"
    assert isinstance(rate, int)
    return "ok"


def check_pcm16(blob: bytes) -> str:
    try:
        x = pcm16_to_float(blob)
    except AudioError:
        assert len(blob) % 2 == 1
        return "rejected"
    assert x.dtype == np.float32 and x.shape == (len(blob) // 2,) and np.all(np.abs(x) <= 1.0)
    return "ok"


def check_ulaw(blob: bytes) -> str:
    x = ulaw_decode(blob)
    assert x.dtype == np.float32 and x.shape == (len(blob),) and np.all(np.abs(x) <= 1.0)
    assert np.array_equal(ulaw_decode(ulaw_encode(x)), x), "mu-law decode -> encode -> decode must be stable"
    return "ok"


# ---------------------------------------------------------------------- OpenAI Realtime (agent/transports/realtime.py)
try:
    from agent.transports.realtime import RealtimeError, RealtimeProtocol
except Exception:  # the transport is not there (yet): no target
    RealtimeProtocol = None

RT_TYPES = ["input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear", "session.update",
            "conversation.item.create", "response.create", "response.cancel", "conversation.item.truncate",
            "conversation.item.delete", "conversation.item.retrieve", "output_audio_buffer.clear", "session.created"]
b64 = st.binary(max_size=512).map(lambda b: base64.b64encode(b).decode())
rt_format = maybe({"type": st.sampled_from(["audio/pcm", "audio/pcmu", "audio/pcma", "pcm16"]) | json_value,
                   "rate": int_like}) | json_value
rt_turn = st.none() | maybe({"type": st.sampled_from(["server_vad", "semantic_vad", "none"]) | json_value,
                             "threshold": st.floats(allow_nan=True) | json_value,
                             "silence_duration_ms": int_like, "create_response": json_value,
                             "interrupt_response": json_value, "prefix_padding_ms": int_like}) | json_value
rt_session = maybe({
    "type": st.sampled_from(["realtime", "transcription"]) | json_value,
    "instructions": st.text(max_size=40) | json_value,
    "output_modalities": st.sampled_from([["audio"], ["text"], None]) | json_value, "tools": json_value,
    "audio": maybe({"input": maybe({"format": rt_format, "turn_detection": rt_turn, "transcription": json_value})
                    | json_value,
                    "output": maybe({"format": rt_format, "voice": st.text(max_size=12) | json_value}) | json_value})
    | json_value}) | json_value
rt_item = maybe({"type": st.sampled_from(["message", "function_call"]) | json_value,
                 "role": st.sampled_from(["user", "assistant", "system"]) | json_value, "id": json_value,
                 "content": st.lists(maybe({"type": st.sampled_from(["input_text", "input_audio"]) | json_value,
                                            "text": st.text(max_size=30) | json_value}) | json_value, max_size=3)
                 | json_value}) | json_value
rt_event = st.fixed_dictionaries(
    {"type": st.sampled_from(RT_TYPES) | json_value},
    optional={"event_id": json_value, "audio": b64 | st.text(max_size=40) | json_value, "session": rt_session,
              "item": rt_item, "item_id": json_value, "audio_end_ms": int_like, "content_index": int_like})
rt_specific = st.one_of(  # well-formed events whose fields then go wrong
    st.fixed_dictionaries({"type": st.just("input_audio_buffer.append"), "audio": b64}),
    st.sampled_from([{"type": "input_audio_buffer.commit"}, {"type": "response.create"},
                     {"type": "input_audio_buffer.clear"}, {"type": "response.cancel"}]),
    st.fixed_dictionaries({"type": st.just("session.update"), "session": st.fixed_dictionaries({
        "audio": st.fixed_dictionaries({
            "input": st.fixed_dictionaries({}, optional={"format": rt_format, "turn_detection": rt_turn}),
            "output": st.fixed_dictionaries({}, optional={"format": rt_format})})})}),
    st.fixed_dictionaries({"type": st.just("conversation.item.create"), "item": st.fixed_dictionaries({
        "type": st.just("message"), "role": st.just("user"),
        "content": st.lists(st.fixed_dictionaries({"type": st.just("input_text"), "text": st.text(max_size=20)}),
                            min_size=1, max_size=2)})}),
)
rt_message = st.one_of(rt_specific.map(dumps), rt_event.map(dumps), st.text(max_size=100), json_value.map(dumps),
                       st.binary(max_size=64),
                       st.tuples(rt_event, seeds).map(lambda a: dumps(mutate_json(random.Random(a[1]), a[0]))),
                       st.tuples(rt_event, seeds).map(lambda a: mutate_text(random.Random(a[1]), dumps(a[0]))),
                       st.integers(1, 100_000).map(lambda n: "[" * n))


def check_realtime(msgs: list) -> str:
    """A connection's worth of Realtime events on one protocol state."""
    p = RealtimeProtocol(_rt_config())
    rejected = 0
    for m in msgs:
        try:
            cmd = p.receive(m)
        except RealtimeError as e:
            assert isinstance(e.code, str) and e.code and isinstance(e.message, str) and e.message
            assert len(e.message) < 400, "error messages must not echo unbounded client input"
            err = p.error(e)
            json.dumps(err)  # what goes to the client serialises
            assert err["type"] == "error" and err["error"]["code"] == e.code
            rejected += 1
            continue
        name = type(cmd).__name__
        if name == "SessionUpdate":
            p.session = cmd.changes  # what the handler does with it; the views below must then work
            assert p.input_rate > 0 and p.output_rate > 0
            json.dumps(p.session_event("session.updated"))
        elif name == "Append":
            assert cmd.audio.dtype == np.float32 and np.all(np.abs(cmd.audio) <= 1.0)
    return "ok" if rejected < len(msgs) else "rejected"  # "ok": at least one message was accepted


def _rt_config():
    global _RT_CFG
    if _RT_CFG is None:
        from agent.config import Config

        _RT_CFG = Config()
    return _RT_CFG


_RT_CFG = None


# --------------------------------------------------------------- Twilio Media Streams (agent/transports/twilio.py)
try:
    from agent.transports import twilio as _twilio
except Exception:  # not there (yet): no target
    _twilio = None

TW_START = json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ123",
                       "start": {"streamSid": "MZ123", "callSid": "CA123", "tracks": ["inbound"],
                                 "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                                 "customParameters": {"lang": "en"}}})
tw_event = st.fixed_dictionaries(
    {"event": st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "clear"]) | json_value},
    optional={"streamSid": st.text(max_size=12) | json_value, "protocol": json_value,
              "start": maybe({"streamSid": st.text(max_size=12) | json_value, "callSid": json_value,
                              "mediaFormat": maybe({"encoding": st.sampled_from(["audio/x-mulaw", "audio/l16"])
                                                    | json_value, "sampleRate": int_like, "channels": int_like})
                              | json_value, "customParameters": json_value}) | json_value,
              "media": maybe({"payload": b64 | st.text(max_size=40) | json_value,
                              "track": st.sampled_from(["inbound", "outbound", "inbound_track"]) | json_value,
                              "timestamp": st.sampled_from(["5", "-1", "1e3", "x"]) | json_value,
                              "chunk": json_value}) | json_value,
              "dtmf": maybe({"digit": st.sampled_from(["1", "#", "E", "12", ""]) | st.text(max_size=2) | json_value})
              | json_value,
              "mark": maybe({"name": st.sampled_from(["qt:1:160", "qt:x:1", "qt:\u00b2:1"]) | st.text(max_size=20)
                             | json_value}) | json_value})
# well-formed shapes of each event, whose fields then go wrong (a union over everything rarely builds one)
odd_number = st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -0.0, 2**64, "5", "1e3", "x", None])
tw_specific = st.one_of(
    st.fixed_dictionaries({"event": st.just("media"), "streamSid": st.just("MZ123"),
                           "media": st.fixed_dictionaries({"payload": b64}, optional={
                               "track": st.sampled_from(["inbound", "outbound"]) | json_value,
                               "timestamp": odd_number | json_value, "chunk": odd_number})}),
    st.fixed_dictionaries({"event": st.just("mark"), "mark": st.fixed_dictionaries({"name": st.one_of(
        st.sampled_from(["qt:1:160", "qt:x:1", "qt:\u00b2:1", "qt:1:\u0661", "qt::", "qt:99999999999999999999:1"]),
        st.text(max_size=20), st.text(max_size=8).map(lambda t: f"qt:{t}:1"))})}),
    st.fixed_dictionaries({"event": st.just("dtmf"), "dtmf": st.fixed_dictionaries(
        {"digit": st.sampled_from(["1", "#", "E", "12", "", "\u0661"]) | st.text(max_size=2) | json_value})}),
    st.fixed_dictionaries({"event": st.just("start"), "streamSid": st.text(max_size=8) | json_value,
                           "start": st.fixed_dictionaries({"mediaFormat": st.fixed_dictionaries({}, optional={
                               "encoding": st.sampled_from(["audio/x-mulaw", "audio/l16"])
                               | st.text(min_size=300, max_size=600),
                               "sampleRate": int_like, "channels": int_like})}, optional={
                               "streamSid": st.text(max_size=8), "customParameters": json_value})}),
)
tw_message = st.one_of(tw_specific.map(dumps), tw_specific.map(dumps), tw_event.map(dumps), st.text(max_size=60),
                       st.binary(max_size=32), json_value.map(dumps),
                       st.tuples(tw_event, seeds).map(lambda a: dumps(mutate_json(random.Random(a[1]), a[0]))),
                       st.integers(1, 100_000).map(lambda n: "[" * n))
tw_session = st.tuples(st.booleans(), st.lists(tw_message, max_size=6)).map(
    lambda a: ([TW_START] if a[0] else []) + a[1])


def check_twilio(msgs: list) -> str:
    """A call's worth of Twilio messages on one protocol state; mark names go through parse_mark too."""
    p = _twilio.TwilioProtocol()
    rejected = 0
    for m in msgs:
        try:
            e = p.receive(m)
        except ProtocolError as err:
            _check_protocol_error(err)
            rejected += 1
            continue
        assert isinstance(e, (_twilio.Connected, _twilio.Start, _twilio.Media, _twilio.Dtmf, _twilio.Mark,
                              _twilio.Stop)), e
        if isinstance(e, _twilio.Media):
            assert e.samples.dtype == np.float32 and np.all(np.abs(e.samples) <= 1.0)
            assert e.timestamp_ms is None or isinstance(e.timestamp_ms, int)
        if isinstance(e, _twilio.Mark):
            r = _twilio.parse_mark(e.name)
            assert r is None or (isinstance(r[0], int) and isinstance(r[1], int))
    return "ok" if rejected < len(msgs) else "rejected"  # "ok": at least one message was accepted


# -------------------------------------------------------------------------- WebRTC signaling (transports/webrtc.py)
try:
    from agent.transports.webrtc import SignalingProtocol
except Exception:
    SignalingProtocol = None

sdp = st.tuples(st.sampled_from(["v=0\r\n", "", "v=1\r\n"]), st.text(max_size=80),
                st.sampled_from(["m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "m=video 9\r\n", ""])).map("".join)
rtc_event = st.fixed_dictionaries({"type": st.sampled_from(["offer", "hangup", "answer", "candidate"]) | json_value},
                                  optional={"sdp": sdp | json_value})
rtc_message = st.one_of(rtc_event.map(dumps), st.text(max_size=60), st.binary(max_size=16), json_value.map(dumps),
                        st.integers(1, 100_000).map(lambda n: "{\"a\":" * n))


def check_webrtc(msgs: list) -> str:
    p = SignalingProtocol()
    rejected = 0
    for m in msgs:
        try:
            p.receive(m)
        except ProtocolError as err:
            _check_protocol_error(err)
            rejected += 1
    return "ok" if rejected < len(msgs) else "rejected"  # "ok": at least one message was accepted


# ------------------------------------------------------------------------------------------------- targets
@dataclass
class Target:
    name: str
    strategy: st.SearchStrategy
    check: object
    weight: float = 1.0  # share of the recorded run


TARGETS: list[Target] = [
    Target("protocol_text", st.tuples(protocol_text, st.booleans()), check_protocol_text, 3),
    Target("protocol_bytes", st.tuples(frame_bytes, st.booleans(), st.sampled_from([8192, 65536])),
           check_protocol_bytes, 1),
    Target("protocol_session", st.lists(protocol_text | frame_bytes, max_size=8), check_protocol_session, 1),
    Target("rate_monitor", st.tuples(st.sampled_from(SUPPORTED_RATES),
                                     st.lists(st.tuples(st.integers(0, 200_000),
                                                        st.floats(0, 10, allow_nan=False)), max_size=20)),
           check_rate_monitor, 0.5),
    Target("audio_decode", audio_bytes, check_audio_decode, 2),
    Target("pcm16", st.binary(max_size=2048), check_pcm16, 0.5),
    Target("ulaw", st.binary(max_size=2048), check_ulaw, 0.5),
]
if RealtimeProtocol is not None:
    TARGETS.append(Target("realtime", st.lists(rt_message, min_size=1, max_size=6), check_realtime, 3))
if _twilio is not None:
    TARGETS.append(Target("twilio", tw_session, check_twilio, 2))
if SignalingProtocol is not None:
    TARGETS.append(Target("webrtc_signaling", st.lists(rtc_message, min_size=1, max_size=4), check_webrtc, 0.5))


# ---------------------------------------------------------------------------------------------- recorded run
def mutate_case(rng: random.Random, case):
    """A neighbour of a generated case: one of its strings, byte strings or list items edited (for the recorded
    run, after hypothesis has generated the corpus: hypothesis costs milliseconds a case, this microseconds)."""
    if isinstance(case, bytes):
        return mutate_bytes(rng, case)
    if isinstance(case, str):
        if rng.random() < 0.5:
            try:
                return dumps(mutate_json(rng, json.loads(case)))
            except (ValueError, RecursionError):
                pass
        return mutate_text(rng, case)
    if isinstance(case, list):
        case = list(case)
        op = rng.randrange(4) if case else 3
        if op == 0:
            i = rng.randrange(len(case))
            case[i] = mutate_case(rng, case[i])
        elif op == 1:
            del case[rng.randrange(len(case))]
        elif op == 2:
            case.insert(rng.randrange(len(case) + 1), case[rng.randrange(len(case))])
        elif case and all(isinstance(m, (str, bytes)) for m in case):  # messages: add a well-formed one
            case.append(rng.choice(['{"type": "stop"}', b"\x00\x01", '{"type": "start", "sample_rate": 8000}',
                                    '{"type": "input_audio_buffer.commit"}', '{"type": "response.create"}']))
        return case
    if isinstance(case, tuple):
        i = rng.randrange(len(case))
        if isinstance(case[i], (str, bytes, list)):
            return case[:i] + (mutate_case(rng, case[i]),) + case[i + 1:]
        if isinstance(case[i], bool):
            return case[:i] + (not case[i],) + case[i + 1:]
        return case
    return case


def run_target(t: Target, n: int, generated_share: float, seed: int) -> dict:
    """n cases through t.check: hypothesis generates the first share of them (the corpus), the rest are random
    mutations of corpus cases. Unexpected exceptions are counted, not raised."""
    counts = {"cases": 0, "generated": 0, "mutated": 0, "ok": 0, "rejected": 0, "unhandled": 0}
    examples: list[dict] = []
    kinds: dict[str, int] = {}
    corpus: list = []

    def one(case):
        counts["cases"] += 1
        try:
            counts[t.check(case)] += 1
        except Exception as e:  # noqa: BLE001 - that is the point
            counts["unhandled"] += 1
            key = f"{type(e).__name__}: {str(e)[:100]}"
            kinds[key] = kinds.get(key, 0) + 1
            if len(examples) < 5:
                examples.append({"error": key, "case": repr(case)[:300],
                                 "where": traceback.format_exc().strip().splitlines()[-3][:200]})

    def body(case):
        counts["generated"] += 1
        if len(corpus) < 5000:
            corpus.append(case)
        one(case)

    t0 = time.perf_counter()
    n_gen = max(1, int(n * generated_share))
    # hypothesis may end a run early when it finds nothing new to try; run again until n_gen cases ran
    while counts["generated"] < n_gen:
        before = counts["generated"]
        settings(max_examples=n_gen - before, database=None, deadline=None, phases=[Phase.generate],
                 suppress_health_check=list(HealthCheck))(given(t.strategy)(body))()
        if counts["generated"] == before:
            break
    rng = random.Random(seed)
    while counts["cases"] < n:
        counts["mutated"] += 1
        one(mutate_case(rng, rng.choice(corpus)))
    counts["seconds"] = round(time.perf_counter() - t0, 1)
    counts["unhandled_kinds"] = kinds
    counts["unhandled_examples"] = examples
    return counts


def main(argv=None) -> int:
    from bench.common import result_header, write_result

    ap = argparse.ArgumentParser(description="the recorded fuzz run")
    ap.add_argument("--cases", type=int, default=100_000, help="total cases over all targets (split by weight)")
    ap.add_argument("--only", default="", help="comma-separated target names")
    ap.add_argument("--generated", type=float, default=0.1, help="share of cases hypothesis generates; the rest "
                    "are mutations of them")
    ap.add_argument("--seed", type=int, default=0, help="seed of the mutation phase")
    ap.add_argument("--out", default="fuzz.json")
    args = ap.parse_args(argv)
    targets = [t for t in TARGETS if not args.only or t.name in args.only.split(",")]
    total_w = sum(t.weight for t in targets)
    per = {t.name: math.ceil(args.cases * t.weight / total_w) for t in targets}
    res = {}
    t0 = time.perf_counter()
    for t in targets:
        res[t.name] = run_target(t, per[t.name], args.generated, args.seed)
        r = res[t.name]
        print(f"{t.name:18s} {r['cases']:7d} cases ({r['generated']} generated)  ok {r['ok']:6d}  "
              f"rejected {r['rejected']:6d}  "
              f"unhandled {r['unhandled']}  {r['seconds']} s", flush=True)
        for k, v in r["unhandled_kinds"].items():
            print(f"    {v} x {k}")
    out = {**result_header(),
           "tool": f"hypothesis (generate phase only, no shrinking) for {args.generated:.0%} of each target's cases, "
                   f"random mutations of those for the rest (seed {args.seed})",
           "metrics": {"cases": sum(r["cases"] for r in res.values()),
                       "unhandled": sum(r["unhandled"] for r in res.values()),
                       "seconds": round(time.perf_counter() - t0, 1)},
           "targets": res}
    path = write_result(args.out, out)
    print(f"wrote {path}: {out['metrics']['cases']} cases, {out['metrics']['unhandled']} unhandled")
    return 1 if out["metrics"]["unhandled"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
