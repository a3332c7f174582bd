"""The transports' sans-I/O parsers (no models, no sockets): well-formed messages parse, and any input at all gives
a typed command or the transport's own error — never another exception."""

import base64
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.audio import ulaw_encode
from agent.config import Config
from agent.protocol import ProtocolError
from agent.transports import realtime as rtp
from agent.transports import twilio as tw
from agent.transports import webrtc as wr
from agent.transports.router import route_path

CFG = Config()

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                           max_leaves=12)
realtime_types = st.sampled_from(["session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                                  "input_audio_buffer.clear", "conversation.item.create", "response.create",
                                  "response.cancel", "conversation.item.truncate", "conversation.item.delete",
                                  "nonsense"])
twilio_events = st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "nonsense"])


def messages(types, key):
    """JSON objects with a known type and random fields, random JSON, and random text."""
    obj = st.fixed_dictionaries({key: types}, optional={
        "session": json_values, "audio": st.text() | st.binary().map(lambda b: base64.b64encode(b).decode()),
        "item": json_values, "item_id": st.text(max_size=8), "audio_end_ms": json_values,
        "start": json_values, "media": json_values, "dtmf": json_values, "mark": json_values,
        "streamSid": st.text(max_size=8), "sdp": st.text()})
    return obj.map(json.dumps) | json_values.map(json.dumps) | st.text() | st.binary()


@settings(max_examples=150, deadline=None)
@given(st.lists(messages(realtime_types, "type"), max_size=6))
def test_realtime_parser_total(msgs):
    p = rtp.RealtimeProtocol(CFG)
    for m in msgs:
        try:
            cmd = p.receive(m)
        except rtp.RealtimeError as e:
            assert e.code and e.message
            ev = p.error(e)
            assert ev["type"] == "error" and ev["error"]["code"] == e.code
            continue
        assert isinstance(cmd, (rtp.SessionUpdate, rtp.Append, rtp.Commit, rtp.Clear, rtp.UserText,
                                rtp.ResponseCreate, rtp.ResponseCancel, rtp.Truncate))
        if isinstance(cmd, rtp.SessionUpdate):
            p.session = cmd.changes
            assert p.input_rate in (8000, 24000) and p.output_rate in (8000, 24000)
        if isinstance(cmd, rtp.Append):
            assert cmd.audio.dtype == np.float32


@settings(max_examples=150, deadline=None)
@given(st.lists(messages(twilio_events, "event"), max_size=6))
def test_twilio_parser_total(msgs):
    p = tw.TwilioProtocol()
    for m in msgs:
        try:
            p.receive(m)
        except ProtocolError as e:
            assert e.code and e.message


@settings(max_examples=100, deadline=None)
@given(st.lists(messages(st.sampled_from(["offer", "hangup", "x"]), "type"), max_size=4))
def test_signaling_parser_total(msgs):
    p = wr.SignalingProtocol()
    for m in msgs:
        try:
            p.receive(m)
        except ProtocolError as e:
            assert e.code and e.message


def test_realtime_session_update_and_audio_formats():
    p = rtp.RealtimeProtocol(CFG)
    upd = p.receive(json.dumps({"type": "session.update", "session": {
        "type": "realtime", "instructions": "Be brief.",
        "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": None},
                  "output": {"format": {"type": "audio/pcm", "rate": 24000}}}}}))
    p.session = upd.changes
    assert p.input_rate == 8000 and p.output_rate == 24000 and p.turn_detection is None
    x = np.sin(np.arange(800) / 5).astype(np.float32) * 0.5
    a = p.receive(json.dumps({"type": "input_audio_buffer.append",
                              "audio": base64.b64encode(ulaw_encode(x)).decode()}))
    assert np.abs(a.audio - x).max() < 0.02  # mu-law decoded
    for bad, code in [({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcma"}}}}},
                       "unsupported_value"),
                      ({"type": "session.update", "session": {"tools": [{"type": "function", "name": "f"}]}},
                       "unsupported_value"),
                      ({"type": "input_audio_buffer.append", "audio": "not base64!"}, "invalid_value"),
                      ({"type": "conversation.item.truncate", "item_id": "x", "audio_end_ms": 5}, "item_not_found"),
                      ({"type": "what"}, "invalid_event"),
                      ({"type": "session.update", "session": {"audio": {"input": {"format": {"type": []}}}}},
                       "unsupported_value")]:
        with pytest.raises(rtp.RealtimeError) as e:
            p.receive(json.dumps({**bad, "event_id": "ev1"}))
        assert e.value.code == code and p.error(e.value)["error"]["event_id"] == "ev1"


def test_deep_nesting_is_bad_json_everywhere():
    deep = "[" * 100_000
    with pytest.raises(rtp.RealtimeError):
        rtp.RealtimeProtocol(CFG).receive(deep)
    with pytest.raises(ProtocolError):
        tw.TwilioProtocol().receive(deep)
    with pytest.raises(ProtocolError):
        wr.SignalingProtocol().receive("[" * 1000)


def test_twilio_start_media_and_marks():
    p = tw.TwilioProtocol()
    with pytest.raises(ProtocolError):
        p.receive(json.dumps({"event": "media", "media": {"payload": ""}}))  # before start
    s = p.receive(json.dumps({"event": "start", "streamSid": "MZ1", "start": {
        "callSid": "CA1", "customParameters": {"a": "b"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
    assert s == tw.Start("MZ1", "CA1", {"a": "b"})
    m = p.receive(json.dumps({"event": "media", "media": {"payload": base64.b64encode(b"\xff" * 160).decode(),
                                                         "timestamp": "20"}}))
    assert len(m.samples) == 160 and m.timestamp_ms == 20
    assert json.loads(p.clear()) == {"event": "clear", "streamSid": "MZ1"}
    assert tw.parse_mark(tw.mark_name(3, 4410)) == (3, 4410) and tw.parse_mark("qt:3:done") is None
    with pytest.raises(ProtocolError) as e:
        tw.TwilioProtocol().receive(json.dumps({"event": "start", "streamSid": "MZ", "start": {
            "mediaFormat": {"encoding": "audio/l16", "sampleRate": 16000, "channels": 1}}}))
    assert e.value.fatal


def test_mark_playback_bounds_what_was_heard():
    pb = tw.MarkPlayback(22050)
    pb.push(22050, now=0.0)  # 1 s sent at t=0
    assert pb.played(now=0.5) == 11025  # by the clock
    pb.on_mark(0, 2205, now=0.5)  # but Twilio says only 0.1 s had been heard at t=0.5 (network delay)
    assert pb.played(now=0.5) == 2205 and abs(pb.played(now=0.6) - 2 * 2205) <= 1
    pb.on_mark(1, 22050, now=0.7)  # a mark of another turn is ignored
    assert abs(pb.played(now=0.7) - 3 * 2205) <= 1


def test_route_path():
    assert route_path("/v1/realtime?model=x") == "/v1/realtime"
    assert route_path("/") == "/" and route_path("/webrtc/") == "/webrtc"


def test_api_key_check():
    from websockets.datastructures import Headers

    from agent.transports.router import authorized

    h = lambda **kw: Headers(kw)  # noqa: E731
    assert authorized("/v1/realtime?model=x", h(), None)  # no key configured: open
    assert not authorized("/v1/realtime?model=x", h(), "s3cret")
    assert authorized("/v1/realtime?model=x", h(Authorization="Bearer s3cret"), "s3cret")
    assert not authorized("/v1/realtime", h(Authorization="Bearer wrong"), "s3cret")
    assert authorized("/?api_key=s3cret", h(), "s3cret") and not authorized("/?api_key=s3cre", h(), "s3cret")
    assert authorized("/twilio", h(), "s3cret")  # Twilio cannot send a key (see router.py)
