import json

import numpy as np
import pytest

from agent.audio import float_to_pcm16
from agent.protocol import Audio, Playback, ProtocolError, RateMonitor, ServerProtocol, Start, Stop


def started(**kw) -> ServerProtocol:
    p = ServerProtocol(**kw)
    p.receive(json.dumps({"type": "start", "sample_rate": 16000}))
    return p


def code_of(p, msg) -> str:
    with pytest.raises(ProtocolError) as e:
        p.receive(msg)
    return e.value.code


def test_start_then_audio():
    p = ServerProtocol()
    s = p.receive(json.dumps({"type": "start", "sample_rate": 48000, "encoding": "pcm_s16le"}))
    assert s == Start(48000)
    x = np.sin(np.linspace(0, 10, 960)).astype(np.float32) * 0.5
    a = p.receive(float_to_pcm16(x))
    assert isinstance(a, Audio) and np.abs(a.samples - x).max() < 1e-4
    assert p.receive('{"type": "stop"}') == Stop()
    assert p.receive('{"type": "playback", "samples": 10}') == Playback(10)


@pytest.mark.parametrize("msg,code", [
    ("not json", "bad_json"),
    ("[1, 2]", "bad_json"),
    ('{"type": "dance"}', "unknown_type"),
    ('{"type": "playback", "samples": -1}', "bad_message"),
    ('{"type": "start", "sample_rate": 16000}', "already_started"),
])
def test_bad_text_messages(msg, code):
    assert code_of(started(), msg) == code


@pytest.mark.parametrize("start,code", [
    ({"sample_rate": 16000, "encoding": "mp3"}, "unsupported_format"),
    ({"sample_rate": 16000, "channels": 2}, "unsupported_format"),
    ({"sample_rate": 12345}, "unsupported_sample_rate"),
    ({"sample_rate": "16000"}, "unsupported_sample_rate"),
    ({"sample_rate": True}, "unsupported_sample_rate"),
    ({}, "unsupported_sample_rate"),
    ({"sample_rate": 16000, "output_sample_rate": 7}, "unsupported_sample_rate"),
])
def test_bad_start(start, code):
    assert code_of(ServerProtocol(), json.dumps({"type": "start", **start})) == code


def test_audio_rules():
    assert code_of(ServerProtocol(), b"\x00\x00") == "not_started"
    p = started(max_frame_bytes=1000)
    assert code_of(p, b"\x00" * 1002) == "frame_too_large"
    assert code_of(p, b"\x00" * 3) == "bad_frame"
    assert isinstance(p.receive(b"\x00" * 1000), Audio)  # the session goes on after errors


def test_rate_monitor_catches_a_wrong_declared_rate():
    m = RateMonitor(8000, slack_s=3.0)
    t = 0.0
    with pytest.raises(ProtocolError) as e:
        for _ in range(1000):  # 16 kHz audio in 20 ms frames, declared as 8 kHz
            m.add(320, t)
            t += 0.02
    assert e.value.code == "sample_rate_mismatch" and e.value.fatal
    assert 2.5 < t < 4.0  # caught after about slack_s of real time
    ok = RateMonitor(16000, slack_s=3.0)
    for i in range(1000):
        ok.add(320, i * 0.02)  # exactly real time: never refused
