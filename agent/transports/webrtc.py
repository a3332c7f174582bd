"""Browser WebRTC through aiortc: the page at `/webrtc` (agent/static/webrtc.html) opens a WebSocket to `/webrtc/ws`,
sends its SDP offer, gets our answer; the microphone then arrives as an Opus RTP track and the reply goes back as
one, while transcripts, reply text and per-turn latency travel as JSON on the same WebSocket.

`SignalingProtocol` is sans I/O; `WebRTCHandler` wires it to aiortc and a Session."""

from __future__ import annotations

import asyncio
import fractions
import json
import logging
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .. import events as ev
from ..audio import StreamResampler
from ..protocol import ProtocolError

log = logging.getLogger("quickturn.webrtc")

RTC_RATE = 48_000  # Opus in WebRTC runs at 48 kHz
PTIME = 0.02
FRAME = int(RTC_RATE * PTIME)  # 960 samples per 20 ms frame
MAX_SDP = 64 * 1024
MAX_REPLY_BUFFER_S = 120  # reply audio queued for the outgoing track (it drains in real time); 23 MB at most


@dataclass(frozen=True)
class Offer:
    sdp: str


@dataclass(frozen=True)
class Hangup:
    pass


class SignalingProtocol:
    def __init__(self):
        self.offered = False

    def receive(self, message: str | bytes) -> Offer | Hangup:
        if not isinstance(message, str):
            raise ProtocolError("bad_message", "signaling messages are JSON text")
        if len(message) > MAX_SDP:
            raise ProtocolError("bad_message", f"signaling message over {MAX_SDP} bytes")
        try:
            obj = json.loads(message)
        except (ValueError, TypeError, RecursionError):
            raise ProtocolError("bad_json", "messages must be JSON objects") from None
        if not isinstance(obj, dict):
            raise ProtocolError("bad_json", "messages must be JSON objects")
        kind = obj.get("type")
        if kind == "offer":
            if self.offered:
                raise ProtocolError("already_started", "one offer per connection (renegotiation is not supported)")
            sdp = obj.get("sdp")
            if not isinstance(sdp, str) or not sdp.startswith("v=0") or "m=audio" not in sdp:
                raise ProtocolError("bad_message", "offer.sdp must be an SDP with an audio section")
            self.offered = True
            return Offer(sdp)
        if kind == "hangup":
            return Hangup()
        raise ProtocolError("unknown_type", f"unknown message type {str(kind)[:40]!r} (offer, hangup)")


def frame_to_mono(frame) -> np.ndarray:
    """An av.AudioFrame (s16 packed or fltp, any channel count) -> float32 mono at frame.sample_rate."""
    x = frame.to_ndarray()
    ch = len(frame.layout.channels)
    if x.dtype == np.int16:
        x = x.astype(np.float32) / 32768.0
    else:
        x = x.astype(np.float32)
    if frame.format.is_planar:  # (channels, samples)
        return x.mean(axis=0) if ch > 1 else x[0]
    x = x.reshape(-1)  # packed: (1, samples * channels) interleaved
    return x.reshape(-1, ch).mean(axis=1) if ch > 1 else x


def _reply_track_class():
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
    from av import AudioFrame

    class ReplyTrack(MediaStreamTrack):
        """The agent's voice: reply audio queued by the session, silence when there is none, paced in real time.
        A frame counts as heard when aiortc pulls it to send (audio_sent), so barge-in truncation is accurate."""

        kind = "audio"

        def __init__(self, on_played):
            super().__init__()
            self.buf: deque[np.ndarray] = deque()
            self.pending = np.zeros(0, np.float32)
            self.on_played = on_played  # (n samples at 48 kHz of reply audio that left) -> None
            self._start: float | None = None
            self._ts = 0

        def push(self, x: np.ndarray) -> None:
            """Queue reply audio. The track sends in real time whatever the client does, so this only holds what a
            reply is ahead of playback; past MAX_REPLY_BUFFER_S the audio is dropped (and logged), never held."""
            if sum(len(b) for b in self.buf) + len(x) > MAX_REPLY_BUFFER_S * RTC_RATE:
                log.warning(json.dumps({"event": "webrtc_reply_buffer_full", "dropped_s": len(x) / RTC_RATE}))
                return
            self.buf.append(x)

        def clear(self) -> None:
            self.buf.clear()
            self.pending = np.zeros(0, np.float32)

        async def recv(self):
            if self.readyState != "live":
                raise MediaStreamError
            if self._start is None:
                self._start = time.time()
            else:
                self._ts += FRAME
                await asyncio.sleep(max(0.0, self._start + self._ts / RTC_RATE - time.time()))
            while len(self.pending) < FRAME and self.buf:
                self.pending = np.concatenate([self.pending, self.buf.popleft()])
            out = self.pending[:FRAME]
            self.pending = self.pending[FRAME:]
            if len(out):
                self.on_played(len(out))
            pcm = np.zeros(FRAME, np.int16)
            pcm[:len(out)] = np.clip(out * 32768.0, -32768, 32767).astype(np.int16)
            frame = AudioFrame(format="s16", layout="mono", samples=FRAME)
            frame.planes[0].update(pcm.tobytes())
            frame.pts = self._ts
            frame.sample_rate = RTC_RATE
            frame.time_base = fractions.Fraction(1, RTC_RATE)
            return frame

    return ReplyTrack


class WebRTCHandler:
    def __init__(self, hub):
        self.hub = hub

    async def handle(self, ws: ServerConnection) -> None:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        hub, proto = self.hub, SignalingProtocol()
        sid = session = pc = None
        tasks: list[asyncio.Task] = []
        try:
            async for message in ws:
                try:
                    msg = proto.receive(message)
                except ProtocolError as e:
                    hub.error("webrtc", e.code)
                    await _send(ws, {"type": "error", "code": e.code, "message": e.message})
                    continue
                if isinstance(msg, Hangup):
                    break
                opened = hub.open("webrtc", RTC_RATE)
                if opened is None:
                    code, why = hub.last_refusal  # full, too busy, or a stuck worker
                    await _send(ws, {"type": "error", "code": code, "message": why})
                    break
                sid, session = opened
                if hasattr(ws, "watch_queue"):  # agent/transports/guard.py: bound what waits for the page
                    ws.watch_queue(session.events)
                await session.start()
                pc = RTCPeerConnection()
                out_ratio = session.out_rate / RTC_RATE
                reply = _reply_track_class()(lambda n: session.audio_sent(int(round(n * out_ratio))))
                got_track = asyncio.Event()

                @pc.on("track")
                def on_track(track, session=session):
                    if track.kind == "audio":
                        tasks.append(asyncio.create_task(self._mic(track, session, ws)))
                        got_track.set()

                @pc.on("connectionstatechange")
                async def on_state(pc=pc):
                    log.info(json.dumps({"event": "webrtc_state", "state": pc.connectionState}))
                    await _send(ws, {"type": "state", "state": pc.connectionState})

                await pc.setRemoteDescription(RTCSessionDescription(msg.sdp, "offer"))
                pc.addTrack(reply)
                answer = await pc.createAnswer()
                await pc.setLocalDescription(answer)  # aiortc gathers ICE candidates here (no trickle)
                await _send(ws, {"type": "answer", "sdp": pc.localDescription.sdp,
                                 "output_sample_rate": RTC_RATE})
                tasks.append(asyncio.create_task(self._events(ws, session, reply)))
        except ConnectionClosed:
            pass
        finally:
            for t in tasks:
                t.cancel()
            if pc is not None:
                await pc.close()
            if session is not None:
                await session.close()
            if sid is not None:
                hub.remove(sid)
            await ws.close()

    async def _mic(self, track, session, ws=None) -> None:
        from aiortc.mediastreams import MediaStreamError

        touch = getattr(ws, "touch", None)  # the microphone is the client's activity (the signaling WS is quiet)

        resampler: StreamResampler | None = None
        rate = None
        try:
            while True:
                frame = await track.recv()
                if touch is not None:
                    touch()
                x = frame_to_mono(frame)
                if frame.sample_rate != RTC_RATE:  # the session was opened at 48 kHz
                    if rate != frame.sample_rate:
                        rate, resampler = frame.sample_rate, StreamResampler(frame.sample_rate, RTC_RATE)
                    x = resampler(x)
                await session.feed(x)
        except (MediaStreamError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("webrtc microphone loop failed")

    async def _events(self, ws, session, reply) -> None:
        from ..server import event_to_json

        resampler = StreamResampler(session.out_rate, RTC_RATE)
        try:
            while True:
                e = await session.events.get()
                self.hub.observe("webrtc", e)
                if isinstance(e, ev.ReplyAudio):
                    reply.push(resampler(e.audio))  # audio_sent is called as frames leave (ReplyTrack)
                    await _send(ws, {"type": "reply_audio", "turn": e.turn,
                                     "seconds": round(len(e.audio) / session.out_rate, 3)})
                    continue
                if isinstance(e, ev.Flush):
                    reply.clear()
                    resampler.reset()
                elif isinstance(e, ev.ReplyDone):
                    reply.push(resampler.flush(drop=e.interrupted))  # the reply's last few ms, still in the filter
                await _send(ws, event_to_json(e))
        except ConnectionClosed:
            pass


async def _send(ws, obj: dict) -> None:
    try:
        await ws.send(json.dumps(obj))
    except ConnectionClosed:
        pass
