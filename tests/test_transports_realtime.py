"""The OpenAI-Realtime-compatible endpoint, driven by the official `openai` SDK's realtime client (no hand-written
client): a real clip streamed in real time, audio and transcripts back; every server event is validated against
the SDK's own pydantic schemas."""

import asyncio
import base64
import time

import numpy as np
import pytest
import typing

from agent.audio import INTERNAL_RATE, load_audio, pcm16_to_float, resample, ulaw_decode, ulaw_encode
from agent.server import start_server
from transports_helpers import runtime_with

openai = pytest.importorskip("openai")
from openai import AsyncOpenAI  # noqa: E402
from openai.types.realtime import RealtimeServerEvent  # noqa: E402

# event type -> the SDK's pydantic model for it
SCHEMAS = {typing.get_args(c.model_fields["type"].annotation)[0]: c
           for c in typing.get_args(typing.get_args(RealtimeServerEvent)[0])}


def validate(e) -> None:
    """Strict pydantic validation of one server event against the SDK's schema for its type."""
    SCHEMAS[e.type].model_validate(e.to_dict())


@pytest.fixture(scope="module")
def rt():
    yield from runtime_with(max_new_tokens=24)


async def with_server(rt, fn):
    server, srv = await start_server(rt, "127.0.0.1", 0)
    port = list(server.sockets)[0].getsockname()[1]
    try:
        return await fn(port)
    finally:
        server.close()
        await server.wait_closed()


def client(port: int) -> AsyncOpenAI:
    return AsyncOpenAI(api_key="dummy-key", websocket_base_url=f"ws://127.0.0.1:{port}/v1")


async def collect(conn, events: list, until, timeout: float):
    """Read events (validating each against the SDK schema) until `until(event)` or the timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            e = await asyncio.wait_for(conn.recv(), timeout=end - time.monotonic())
        except asyncio.TimeoutError:
            break
        validate(e)  # raises on any field our server got wrong
        events.append(e)
        if until(e):
            return e
    return None


def test_sdk_server_vad_pcm24k(rt, speech):
    clip = load_audio(speech / "speechbrain_harvard/spk2_snt2.wav")  # "What joy there is in living."
    pcm24 = resample(clip, INTERNAL_RATE, 24_000)
    pcm24 = np.concatenate([np.zeros(4800, np.float32), pcm24, np.zeros(24_000, np.float32)])

    async def scenario(port):
        events: list = []
        async with client(port).realtime.connect(model="quickturn") as conn:
            created = await collect(conn, events, lambda e: e.type == "session.created", 10)
            assert created is not None and created.session.audio.input.format.rate == 24_000
            await conn.session.update(session={
                "type": "realtime", "instructions": "You are a cheerful assistant. Answer in one short sentence.",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}},
                          "output": {"format": {"type": "audio/pcm", "rate": 24000}}}})
            updated = await collect(conn, events, lambda e: e.type == "session.updated", 10)
            assert updated.session.instructions.startswith("You are a cheerful")

            async def send():  # 20 ms chunks at the real cadence
                t0 = time.monotonic()
                for k, i in enumerate(range(0, len(pcm24), 480)):
                    chunk = pcm24[i:i + 480]
                    await conn.input_audio_buffer.append(
                        audio=base64.b64encode((np.clip(chunk, -1, 1) * 32767).astype("<i2").tobytes()).decode())
                    await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))

            sender = asyncio.create_task(send())
            done = await collect(conn, events, lambda e: e.type == "response.done", 90)
            await sender
            return events, done

    events, done = asyncio.run(with_server(rt, scenario))
    types = [e.type for e in events]
    for t in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
              "input_audio_buffer.committed", "conversation.item.added",
              "conversation.item.input_audio_transcription.completed", "response.created",
              "response.output_audio.delta", "response.output_audio_transcript.delta",
              "response.output_audio.done", "response.output_audio_transcript.done", "conversation.item.done"):
        assert t in types, f"missing {t}: {types}"
    assert done is not None and done.response.status == "completed"
    # order: the user's turn, then the response
    assert types.index("input_audio_buffer.speech_stopped") < types.index("response.created")
    heard = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed")
    assert "joy" in heard.transcript.lower()
    # transcription deltas (pause-time partials, then the rest) only ever append: they spell a prefix of the final
    spelled = "".join(e.delta for e in events if e.type == "conversation.item.input_audio_transcription.delta"
                      and e.item_id == heard.item_id)
    assert spelled and heard.transcript.startswith(spelled)
    audio = np.concatenate([pcm16_to_float(base64.b64decode(e.delta)) for e in events
                            if e.type == "response.output_audio.delta"])
    assert len(audio) > 24_000 // 2 and np.abs(audio).max() > 0.05  # > 0.5 s of non-silent 24 kHz audio
    said = "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")
    final = next(e for e in events if e.type == "response.output_audio_transcript.done")
    assert said.strip() and final.transcript.strip() == said.strip()
    # the audio says what the transcript says (ASR of our own TTS)
    from asr.wer import word_match

    back = rt.asr.transcribe(resample(audio, 24_000, INTERNAL_RATE))
    assert word_match(final.transcript, back) > 0.5, (final.transcript, back)
    assert int(done.response.metadata["quickturn_v2v_ms"]) > 0


def test_sdk_manual_turns_ulaw_text_and_truncate(rt, speech):
    """No server VAD: the client commits the buffer and asks for a response; G.711 mu-law both ways; a typed
    message; then the client truncates the reply it is hearing (barge-in on the client's side)."""
    clip = load_audio(speech / "pocketsphinx_cards/003.wav")
    ulaw = ulaw_encode(resample(clip, INTERNAL_RATE, 8000))

    async def scenario(port):
        events: list = []
        async with client(port).realtime.connect(model="quickturn") as conn:
            await conn.session.update(session={"type": "realtime", "audio": {
                "input": {"format": {"type": "audio/pcmu"}, "turn_detection": None},
                "output": {"format": {"type": "audio/pcmu"}}}})
            await collect(conn, events, lambda e: e.type == "session.updated", 10)
            for i in range(0, len(ulaw), 1600):  # 200 ms appends; no cadence rule without server VAD
                await conn.input_audio_buffer.append(audio=base64.b64encode(ulaw[i:i + 1600]).decode())
            await conn.input_audio_buffer.commit()
            await collect(conn, events, lambda e: e.type == "conversation.item.input_audio_transcription.completed",
                          30)
            await conn.response.create()
            first = await collect(conn, events, lambda e: e.type == "response.output_audio.delta", 60)
            assert first is not None
            # the client has played 100 ms of it when the user interrupts
            await conn.conversation.item.truncate(item_id=first.item_id, content_index=0, audio_end_ms=100)
            # response.done (cancelled) and conversation.item.truncated, in either order
            n = len(events)
            await collect(conn, events, lambda e: {"response.done", "conversation.item.truncated"} <= {
                x.type for x in events[n:]}, 60)
            trunc = next((e for e in events[n:] if e.type == "conversation.item.truncated"), None)
            done1 = next((e for e in events[n:] if e.type == "response.done"), None)
            # a typed message, then a normal response
            await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                      "content": [{"type": "input_text",
                                                                  "text": "Say hello and introduce yourself."}]})
            await conn.response.create()
            done2 = await collect(conn, events, lambda e: e.type == "response.done", 60)
            # a bad event gets an error and the session stays usable
            await conn.send({"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0,
                             "audio_end_ms": 5})
            err = await collect(conn, events, lambda e: e.type == "error", 10)
            return events, trunc, done1, done2, err

    events, trunc, done1, done2, err = asyncio.run(with_server(rt, scenario))
    heard = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed")
    assert "clubs" in heard.transcript.lower()
    assert trunc is not None and trunc.audio_end_ms == 100
    assert done1.response.status == "cancelled" and done1.response.status_details.reason == "client_cancelled"
    assert done2.response.status == "completed"
    deltas = [e for e in events if e.type == "response.output_audio.delta" and e.response_id == done2.response.id]
    audio = ulaw_decode(b"".join(base64.b64decode(e.delta) for e in deltas))
    assert len(audio) > 8000 // 2 and np.abs(audio).max() > 0.05  # mu-law at 8 kHz, > 0.5 s
    assert err.error.code == "item_not_found"


def test_sdk_api_key(rt, monkeypatch):
    """With QUICKTURN_API_KEY set, the SDK's own Authorization header is checked."""
    monkeypatch.setenv("QUICKTURN_API_KEY", "s3cret")

    async def scenario(port):
        got = {}
        for key in ("wrong", "s3cret"):
            c = AsyncOpenAI(api_key=key, websocket_base_url=f"ws://127.0.0.1:{port}/v1")
            try:
                async with c.realtime.connect(model="quickturn") as conn:
                    got[key] = (await asyncio.wait_for(conn.recv(), 10)).type
            except Exception as e:  # the handshake is refused
                got[key] = f"refused: {e}"
        return got

    got = asyncio.run(with_server(rt, scenario))
    assert got["s3cret"] == "session.created"
    assert got["wrong"].startswith("refused") and "401" in got["wrong"], got
