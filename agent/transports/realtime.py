"""An OpenAI-Realtime-compatible WebSocket endpoint (`/v1/realtime`): the subset a voice app uses, with the event
schemas of the `openai` SDK's `openai.types.realtime` (GA interface). docs/transports.md lists what is supported.

Two halves: `RealtimeProtocol` is sans I/O (client JSON in -> typed commands or a RealtimeError; session events in
-> server event dicts out), `RealtimeHandler` wires it to a WebSocket and a Session."""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import dataclasses
import itertools
import json
import logging
import uuid
from dataclasses import dataclass

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .. import events as ev
from ..audio import INTERNAL_RATE, StreamResampler, float_to_pcm16, pcm16_to_float, ulaw_decode, ulaw_encode
from ..audio import AudioError

log = logging.getLogger("quickturn.realtime")

FORMATS = {"audio/pcm": 24_000, "audio/pcmu": 8_000}  # supported audio formats -> their sample rate
MAX_APPEND_BYTES = 1 << 20  # one input_audio_buffer.append, decoded
# Client-supplied text has bounds: instructions become the system prompt and a user message goes into the KV
# cache, both bounded by the LLM's context; ids are echoed back in events
MAX_INSTRUCTIONS_CHARS = 8_000
MAX_USER_TEXT_CHARS = 8_000
MAX_ID_CHARS = 64
MAX_MANUAL_BUFFER_S = 300  # audio held for an input_audio_buffer.commit (turn_detection null): 19 MB at most


def public_name(ref: str) -> str:
    """What a client is told about a configured model: a registry name as it is, a local path by its file name
    only (server paths are not the client's business and never come back from it)."""
    from pathlib import PurePath

    return PurePath(ref).name if ("/" in ref or "\\" in ref) else ref


class RealtimeError(Exception):
    """Sent as an `error` event; the connection stays open."""

    def __init__(self, code: str, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 event_id: str | None = None):
        super().__init__(message)
        self.code, self.message, self.type, self.param, self.event_id = code, message, type_, param, event_id


# ------------------------------------------------------------------------------------------ client commands
@dataclass(frozen=True)
class SessionUpdate:
    changes: dict  # validated subset of the session object


@dataclass(frozen=True)
class Append:
    audio: np.ndarray  # float32 mono at the input format's rate


@dataclass(frozen=True)
class Commit:
    pass


@dataclass(frozen=True)
class Clear:
    pass


@dataclass(frozen=True)
class UserText:
    text: str
    item_id: str


@dataclass(frozen=True)
class ResponseCreate:
    pass


@dataclass(frozen=True)
class ResponseCancel:
    pass


@dataclass(frozen=True)
class Truncate:
    item_id: str
    audio_end_ms: int


Command = SessionUpdate | Append | Commit | Clear | UserText | ResponseCreate | ResponseCancel | Truncate


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def default_session(cfg) -> dict:
    """The session object sent in session.created (a RealtimeSessionCreateRequest)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": new_id("sess"),
        "model": "quickturn",
        "output_modalities": ["audio"],
        "instructions": cfg.llm.system_prompt,
        "max_output_tokens": cfg.llm.max_new_tokens,
        "tools": [],
        "tool_choice": "auto",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24_000},
                "transcription": {"model": public_name(cfg.asr.model), "language": cfg.asr.language},
                "noise_reduction": None,
                "turn_detection": {"type": "server_vad", "threshold": cfg.vad.threshold,
                                   "prefix_padding_ms": 300, "silence_duration_ms": cfg.turn.endpoint_silence_ms,
                                   "create_response": True, "interrupt_response": cfg.turn.barge_in},
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24_000}, "voice": public_name(cfg.tts.voice),
                       "speed": 1.0},
        },
    }


class RealtimeProtocol:
    """Per-connection protocol state, no I/O: the effective session config, the items and the current response."""

    def __init__(self, cfg):
        self.session = default_session(cfg)
        self._seq = itertools.count(1)
        self.last_item_id: str | None = None
        self.assistant_items: dict[str, int] = {}  # assistant item id -> session turn
        self.speaking_item: str | None = None  # the user item of the speech being heard
        self.response: dict | None = None  # response in progress
        self.resp_state: dict | None = None

    # ------------------------------------------------------------------------------------- config views
    @property
    def input_format(self) -> str:
        return self.session["audio"]["input"]["format"]["type"]

    @property
    def output_format(self) -> str:
        return self.session["audio"]["output"]["format"]["type"]

    @property
    def input_rate(self) -> int:
        return FORMATS[self.input_format]

    @property
    def output_rate(self) -> int:
        return FORMATS[self.output_format]

    @property
    def turn_detection(self) -> dict | None:
        return self.session["audio"]["input"]["turn_detection"]

    # ------------------------------------------------------------------------------------------- input
    def receive(self, message: str | bytes) -> Command:
        if not isinstance(message, str):
            raise RealtimeError("invalid_event", "binary messages are not part of the Realtime API; send JSON")
        try:
            obj = json.loads(message)
        except (ValueError, TypeError, RecursionError):  # RecursionError: absurdly deep nesting
            raise RealtimeError("invalid_json", "messages must be JSON objects") from None
        if not isinstance(obj, dict):
            raise RealtimeError("invalid_json", "messages must be JSON objects")
        kind, eid = obj.get("type"), obj.get("event_id")
        eid = eid if isinstance(eid, str) and len(eid) <= MAX_ID_CHARS else None
        try:
            return self._command(kind, obj)
        except RealtimeError as e:
            e.event_id = eid
            raise

    def _command(self, kind, obj: dict) -> Command:
        if kind == "input_audio_buffer.append":
            audio = obj.get("audio")
            if not isinstance(audio, str):
                raise RealtimeError("invalid_value", "audio must be a base64 string", param="audio")
            if len(audio) > MAX_APPEND_BYTES * 4 // 3 + 4:
                raise RealtimeError("invalid_value", f"one append may carry at most {MAX_APPEND_BYTES} bytes",
                                    param="audio")
            try:
                blob = base64.b64decode(audio, validate=True)
            except (binascii.Error, ValueError):
                raise RealtimeError("invalid_value", "audio is not valid base64", param="audio") from None
            if self.input_format == "audio/pcmu":
                return Append(ulaw_decode(blob))
            try:
                return Append(pcm16_to_float(blob))
            except AudioError as e:
                raise RealtimeError("invalid_value", f"audio/pcm: {e}", param="audio") from None
        if kind == "input_audio_buffer.commit":
            return Commit()
        if kind == "input_audio_buffer.clear":
            return Clear()
        if kind == "session.update":
            return SessionUpdate(self._session_changes(obj.get("session")))
        if kind == "conversation.item.create":
            return self._item_create(obj.get("item"))
        if kind == "response.create":
            return ResponseCreate()
        if kind == "response.cancel":
            return ResponseCancel()
        if kind == "conversation.item.truncate":
            item, end = obj.get("item_id"), obj.get("audio_end_ms")
            if not isinstance(item, str) or item not in self.assistant_items:
                raise RealtimeError("item_not_found", f"no assistant item {str(item)[:60]!r} to truncate",
                                    param="item_id")
            if not isinstance(end, int) or isinstance(end, bool) or end < 0:
                raise RealtimeError("invalid_value", "audio_end_ms must be a non-negative integer",
                                    param="audio_end_ms")
            return Truncate(item, end)
        if kind in ("conversation.item.delete", "conversation.item.retrieve", "output_audio_buffer.clear"):
            raise RealtimeError("unsupported_event", f"{kind} is not supported by Quickturn")
        raise RealtimeError("invalid_event", f"unknown event type {str(kind)[:60]!r}", param="type")

    def _session_changes(self, s) -> dict:
        """Every field a client may set is checked here; nothing a client sends names a file or a model: the models
        and the voice are the server's configuration (a client may repeat their names, never choose others)."""
        if not isinstance(s, dict):
            raise RealtimeError("invalid_value", "session must be an object", param="session")
        if s.get("type", "realtime") != "realtime":
            raise RealtimeError("unsupported_value", "only realtime sessions are supported (not transcription)",
                                param="session.type")
        new = copy.deepcopy(self.session)
        if "model" in s and s["model"] is not None and not isinstance(s["model"], str):
            raise RealtimeError("invalid_value", "model must be a string", param="session.model")
        # session.model is accepted and ignored: the LLM is chosen by the server's config, never by a client
        if "instructions" in s:
            if not isinstance(s["instructions"], str):
                raise RealtimeError("invalid_value", "instructions must be a string", param="session.instructions")
            if len(s["instructions"]) > MAX_INSTRUCTIONS_CHARS:
                raise RealtimeError("invalid_value", f"instructions may be at most {MAX_INSTRUCTIONS_CHARS} "
                                    "characters", param="session.instructions")
            new["instructions"] = s["instructions"]
        if "output_modalities" in s and s["output_modalities"] not in (["audio"], None):
            raise RealtimeError("unsupported_value", "only output_modalities ['audio'] is supported",
                                param="session.output_modalities")
        if s.get("tools"):
            raise RealtimeError("unsupported_value", "tools (function calling) are not supported over this "
                                "endpoint; see docs/embedding.md for tool hooks", param="session.tools")
        audio = s.get("audio") or {}
        if not isinstance(audio, dict):
            raise RealtimeError("invalid_value", "audio must be an object", param="session.audio")
        for side in ("input", "output"):
            conf = audio.get(side) or {}
            if not isinstance(conf, dict):
                raise RealtimeError("invalid_value", f"audio.{side} must be an object", param=f"session.audio.{side}")
            if "format" in conf:
                new["audio"][side]["format"] = _format(conf["format"], f"session.audio.{side}.format")
            if side == "output" and "voice" in conf and conf["voice"] != new["audio"]["output"]["voice"]:
                raise RealtimeError("unsupported_value", f"the only voice is {new['audio']['output']['voice']!r} "
                                    "(voices are chosen in the server's config)", param="session.audio.output.voice")
            if side == "input" and "turn_detection" in conf:
                new["audio"]["input"]["turn_detection"] = _turn_detection(
                    conf["turn_detection"], new["audio"]["input"]["turn_detection"])
            if side == "input" and "transcription" in conf:
                tr = conf["transcription"]
                if tr is not None and (not isinstance(tr, dict) or not all(
                        isinstance(tr.get(k), (str, type(None))) for k in ("model", "language", "prompt"))):
                    raise RealtimeError("invalid_value", "transcription must be null or an object of strings",
                                        param="session.audio.input.transcription")
                # accepted and ignored: transcription always runs (it is the ASR) with the server's model; a model
                # name or path from a client is never looked up
        return new

    def _item_create(self, item) -> UserText:
        if not isinstance(item, dict) or item.get("type") != "message" or item.get("role") != "user":
            raise RealtimeError("unsupported_value", "only user messages with input_text can be created",
                                param="item")
        content = item.get("content")
        texts = [c.get("text") for c in content if isinstance(c, dict) and c.get("type") == "input_text"] \
            if isinstance(content, list) else []
        if not texts or not all(isinstance(t, str) for t in texts):
            raise RealtimeError("invalid_value", "a user message needs input_text content", param="item.content")
        if sum(len(t) for t in texts) > MAX_USER_TEXT_CHARS:
            raise RealtimeError("invalid_value", f"a user message may be at most {MAX_USER_TEXT_CHARS} characters",
                                param="item.content")
        iid = item.get("id")
        if iid is not None and (not isinstance(iid, str) or not 0 < len(iid) <= MAX_ID_CHARS):
            raise RealtimeError("invalid_value", f"item.id must be a string of 1 to {MAX_ID_CHARS} characters",
                                param="item.id")
        iid = iid or new_id("item")
        return UserText(" ".join(texts), iid)

    # ------------------------------------------------------------------------------------------ output
    def event(self, type_: str, **fields) -> dict:
        return {"type": type_, "event_id": f"event_{next(self._seq)}", **fields}

    def error(self, e: RealtimeError) -> dict:
        err = {"type": e.type, "code": e.code, "message": e.message}
        if e.param:
            err["param"] = e.param
        if e.event_id:
            err["event_id"] = e.event_id
        return self.event("error", error=err)

    def session_event(self, kind: str) -> dict:
        return self.event(kind, session=copy.deepcopy(self.session))

    def _add_item(self, item: dict) -> list[dict]:
        prev, self.last_item_id = self.last_item_id, item["id"]
        return [self.event("conversation.item.added", previous_item_id=prev, item=item)]

    def user_item(self, item_id: str, transcript: str | None, audio: bool) -> dict:
        content = {"type": "input_audio", "transcript": transcript} if audio else \
            {"type": "input_text", "text": transcript}
        return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
                "status": "completed", "content": [content]}

    def committed(self, item_id: str) -> list[dict]:
        """The input buffer became a user item."""
        out = [self.event("input_audio_buffer.committed", item_id=item_id, previous_item_id=self.last_item_id)]
        return out + self._add_item(self.user_item(item_id, None, True))

    def transcribed(self, item_id: str, text: str, seconds: float, already: str = "") -> list[dict]:
        """The final transcript. `already`: what partial deltas have said; deltas only append, so a final text
        that does not extend it gets no delta (completed has the truth)."""
        out = []
        if text.startswith(already) and len(text) > len(already):
            out.append(self.event("conversation.item.input_audio_transcription.delta", item_id=item_id,
                                  content_index=0, delta=text[len(already):]))
        return out + [
                self.event("conversation.item.input_audio_transcription.completed", item_id=item_id,
                           content_index=0, transcript=text,
                           usage={"type": "duration", "seconds": round(max(0.0, seconds), 3)}),
                self.event("conversation.item.done", previous_item_id=None,
                           item=self.user_item(item_id, text, True))]

    def text_item(self, item_id: str, text: str) -> list[dict]:
        item = self.user_item(item_id, text, False)
        return self._add_item(item) + [self.event("conversation.item.done", item=item)]

    def _response_obj(self, status: str, reason: str | None = None, items: list | None = None,
                      metadata: dict | None = None) -> dict:
        st = self.resp_state
        r = {"id": st["id"], "object": "realtime.response", "status": status, "output": items or [],
             "output_modalities": ["audio"], "conversation_id": "conv_quickturn",
             "audio": {"output": {"format": copy.deepcopy(self.session["audio"]["output"]["format"]),
                                  "voice": self.session["audio"]["output"]["voice"]}},
             "max_output_tokens": self.session["max_output_tokens"], "metadata": metadata}
        if status != "in_progress":
            r["status_details"] = {"type": status, "reason": reason} if reason else {"type": status}
            r["usage"] = {"input_tokens": st.get("input_tokens", 0), "output_tokens": st.get("output_tokens", 0),
                          "total_tokens": st.get("input_tokens", 0) + st.get("output_tokens", 0)}
        return r

    def _assistant_item(self, status: str, transcript: str | None) -> dict:
        st = self.resp_state
        return {"id": st["item_id"], "object": "realtime.item", "type": "message", "role": "assistant",
                "status": status, "content": [{"type": "output_audio", "transcript": transcript}]}

    def response_started(self, turn: int) -> list[dict]:
        """The first output of a reply: response.created and the assistant item it fills."""
        self.resp_state = {"id": new_id("resp"), "item_id": new_id("item"), "turn": turn, "transcript": ""}
        self.assistant_items[self.resp_state["item_id"]] = turn
        st = self.resp_state
        item = self._assistant_item("in_progress", None)
        item["content"] = []
        ids = {"response_id": st["id"], "item_id": st["item_id"], "output_index": 0}
        return ([self.event("response.created", response=self._response_obj("in_progress")),
                 self.event("response.output_item.added", response_id=st["id"], output_index=0, item=item)]
                + self._add_item(item)
                + [self.event("response.content_part.added", content_index=0,
                              part={"type": "audio", "transcript": ""}, **ids)])

    def _ids(self) -> dict:
        st = self.resp_state
        return {"response_id": st["id"], "item_id": st["item_id"], "output_index": 0, "content_index": 0}

    def transcript_delta(self, text: str) -> dict:
        self.resp_state["transcript"] += text
        return self.event("response.output_audio_transcript.delta", delta=text, **self._ids())

    def audio_delta(self, payload: bytes) -> dict:
        return self.event("response.output_audio.delta", delta=base64.b64encode(payload).decode(), **self._ids())

    def response_finished(self, full_text: str, cancelled: bool, reason: str | None) -> list[dict]:
        """Everything up to response.done, which waits for the turn's latency (see `response_done`)."""
        ids = self._ids()
        status = "cancelled" if cancelled else "completed"
        item = self._assistant_item("incomplete" if cancelled else "completed", full_text)
        self.resp_state.update(final_item=item, status=status, reason=reason)
        return [self.event("response.output_audio.done", **ids),
                self.event("response.output_audio_transcript.done", transcript=full_text, **ids),
                self.event("response.content_part.done", part={"type": "audio", "transcript": full_text}, **ids),
                self.event("response.output_item.done", response_id=ids["response_id"], output_index=0, item=item),
                self.event("conversation.item.done", item=item)]

    def response_done(self, latency: ev.TurnLatency | None = None) -> dict:
        st = self.resp_state
        meta = None
        if latency is not None:  # Quickturn's measurement of this turn, as metadata (strings, as the schema says)
            meta = {f"quickturn_{k}_ms": str(round(v)) for k, v in latency.ms.items() if v is not None}
            if latency.v2v_ms is not None:
                meta["quickturn_v2v_ms"] = str(round(latency.v2v_ms))
            st["input_tokens"] = latency.info.get("prefill_tokens", 0) or 0
            st["output_tokens"] = latency.info.get("reply_tokens", 0) or 0
        out = self.event("response.done", response=self._response_obj(st["status"], st["reason"],
                                                                      [st["final_item"]], meta))
        self.resp_state = None
        return out

    def truncated(self, item_id: str, audio_end_ms: int) -> dict:
        return self.event("conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=audio_end_ms)


def _format(f, param: str) -> dict:
    if not isinstance(f, dict) or not isinstance(f.get("type"), str) or f["type"] not in FORMATS:
        t = f.get("type") if isinstance(f, dict) else f
        raise RealtimeError("unsupported_value", f"audio format {str(t)[:40]!r} is not supported "
                            f"(supported: {', '.join(FORMATS)})", param=param)
    if f["type"] == "audio/pcm":
        if f.get("rate", 24_000) != 24_000:
            raise RealtimeError("unsupported_value", "audio/pcm is 24000 Hz", param=param + ".rate")
        return {"type": "audio/pcm", "rate": 24_000}
    return {"type": f["type"]}


def _turn_detection(td, current: dict | None) -> dict | None:
    if td is None:
        return None
    if not isinstance(td, dict) or td.get("type") not in ("server_vad", "semantic_vad"):
        raise RealtimeError("unsupported_value", "turn_detection must be null or {type: server_vad}",
                            param="session.audio.input.turn_detection")
    base = dict(current) if current else {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                          "silence_duration_ms": 500, "create_response": True,
                                          "interrupt_response": True}
    base["type"] = "server_vad"  # semantic_vad runs as server_vad (Quickturn's own endpointing)
    if "threshold" in td:
        t = td["threshold"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t < 1.0:
            raise RealtimeError("invalid_value", "threshold must be a number between 0 and 1",
                                param="session.audio.input.turn_detection.threshold")
        base["threshold"] = float(t)
    if "silence_duration_ms" in td:
        d = td["silence_duration_ms"]
        if isinstance(d, bool) or not isinstance(d, int) or not 100 <= d <= 10_000:
            raise RealtimeError("invalid_value", "silence_duration_ms must be an integer in [100, 10000]",
                                param="session.audio.input.turn_detection.silence_duration_ms")
        base["silence_duration_ms"] = d
    for k in ("create_response", "interrupt_response"):
        if k in td:
            if not isinstance(td[k], bool):
                raise RealtimeError("invalid_value", f"{k} must be a boolean",
                                    param=f"session.audio.input.turn_detection.{k}")
            base[k] = td[k]
    return base


# -------------------------------------------------------------------------------------------------- I/O
class RealtimeHandler:
    """One WebSocket connection <-> one Session."""

    def __init__(self, hub):
        self.hub = hub

    async def handle(self, ws: ServerConnection) -> None:
        hub = self.hub
        proto = RealtimeProtocol(hub.rt.config)
        opened = hub.open("realtime", INTERNAL_RATE)  # the handler resamples every format to 16 kHz itself
        if opened is None:
            code, why = hub.last_refusal  # full, too busy, or a stuck worker
            await _send(ws, proto.error(RealtimeError(code, why, "server_error")))
            await ws.close(1013, code.replace("_", " "))
            return
        sid, session = opened
        if hasattr(ws, "watch_queue"):  # agent/transports/guard.py: bound what waits for a slow client
            ws.watch_queue(session.events)
        conn = _Conn(ws, proto, session, hub)
        try:
            await session.start()
            await conn.send(proto.session_event("session.created"))
            conn.sender = asyncio.create_task(conn.pump())
            async for message in ws:
                try:
                    await conn.command(proto.receive(message))
                except RealtimeError as e:
                    hub.error("realtime", e.code)
                    await conn.send(proto.error(e))
        except ConnectionClosed:
            pass
        finally:
            await session.close()
            await asyncio.sleep(0.05)
            if conn.sender is not None:
                conn.sender.cancel()
            hub.remove(sid)
            await ws.close()


class _Conn:
    def __init__(self, ws, proto: RealtimeProtocol, session, hub):
        self.ws, self.proto, self.session, self.hub = ws, proto, session, hub
        self.sender: asyncio.Task | None = None
        self.in_resampler = StreamResampler(proto.input_rate, INTERNAL_RATE)
        self.out_resampler = StreamResampler(session.out_rate, proto.output_rate)
        self.manual_buf: list[np.ndarray] = []  # 16 kHz audio since the last commit (no turn detection)
        self.pending_items: list[str] = []  # user items waiting for their transcript, in order
        self.truncated: set[str] = set()
        self.speech_start = 0.0
        self.item_seconds: dict[str, float] = {}  # user item -> seconds of speech in it
        self.partial_sent: dict[str, str] = {}  # user item -> transcript text sent as deltas so far
        self.lock = asyncio.Lock()

    async def send(self, obj: dict) -> None:
        try:
            await self.ws.send(json.dumps(obj))
        except ConnectionClosed:
            pass

    async def send_all(self, objs: list[dict]) -> None:
        for o in objs:
            await self.send(o)

    def _apply_turn_detection(self) -> None:
        td = self.proto.turn_detection
        answer = bool(td and td.get("create_response", True))
        if hasattr(self.session, "hook_auto"):  # an embed.Conversation: its hook answers, after the hook
            self.session.hook_auto = answer
        else:
            self.session.auto_respond = answer
        if td:  # the session's turn taker reads these per frame (agent/turn.py TurnParams)
            self.session.turns.p = dataclasses.replace(
                self.session.turns.p, barge_in=bool(td.get("interrupt_response", True)),
                threshold=float(td["threshold"]), neg_threshold=max(0.01, float(td["threshold"]) - 0.15),
                endpoint_silence_s=td["silence_duration_ms"] / 1000)

    async def command(self, c: Command) -> None:
        p, s = self.proto, self.session
        if isinstance(c, Append):
            x = self.in_resampler(c.audio)
            if p.turn_detection is None:
                held = sum(len(b) for b in self.manual_buf)
                if held + len(x) > MAX_MANUAL_BUFFER_S * INTERNAL_RATE:
                    raise RealtimeError("input_audio_buffer_full", f"the input audio buffer holds at most "
                                        f"{MAX_MANUAL_BUFFER_S} s; commit or clear it (this append was dropped)")
                self.manual_buf.append(x)
            else:
                await s.feed(x)
        elif isinstance(c, SessionUpdate):
            old = p.session
            p.session = c.changes
            if c.changes["instructions"] != old["instructions"]:
                await s.set_instructions(c.changes["instructions"])
            if c.changes["audio"]["input"]["format"] != old["audio"]["input"]["format"]:
                self.in_resampler = StreamResampler(p.input_rate, INTERNAL_RATE)
            if c.changes["audio"]["output"]["format"] != old["audio"]["output"]["format"]:
                self.out_resampler = StreamResampler(s.out_rate, p.output_rate)
            self._apply_turn_detection()
            await self.send(p.session_event("session.updated"))
        elif isinstance(c, Commit):
            item = new_id("item")
            if p.turn_detection is None:
                audio = np.concatenate(self.manual_buf) if self.manual_buf else np.zeros(0, np.float32)
                self.manual_buf.clear()
                if len(audio) < INTERNAL_RATE // 10:
                    raise RealtimeError("input_audio_buffer_commit_empty",
                                        "the input audio buffer holds less than 100 ms of audio")
                await self.send_all(p.committed(item))
                rt = s.rt
                text = (await rt.run(rt.asr_pool, rt.asr.transcribe, audio)).strip()
                await self.send_all(p.transcribed(item, text, len(audio) / INTERNAL_RATE))
                if text:
                    await s.add_user_text(text, respond=False)
            else:
                self.pending_items.append(item)
                await self.send_all(p.committed(item))
                await s.commit_input(respond=False)
        elif isinstance(c, Clear):
            self.manual_buf.clear()
            await self.send(p.event("input_audio_buffer.cleared"))
        elif isinstance(c, UserText):
            await self.send_all(p.text_item(c.item_id, c.text))
            await s.add_user_text(c.text, respond=False)
        elif isinstance(c, ResponseCreate):
            if p.resp_state is not None:
                raise RealtimeError("conversation_already_has_active_response",
                                    "a response is in progress; cancel it first (response.cancel)")
            await s.respond()
        elif isinstance(c, ResponseCancel):
            await s.cancel_reply()
        elif isinstance(c, Truncate):
            if c.item_id in self.truncated:
                await self.send(p.truncated(c.item_id, c.audio_end_ms))
                return
            turn = p.assistant_items[c.item_id]
            played = c.audio_end_ms * s.out_rate // 1000
            if s.reply is not None and s.reply.turn == turn:
                if played > s.reply.samples:
                    raise RealtimeError("invalid_value", f"audio_end_ms {c.audio_end_ms} is past the "
                                        f"{s.reply.samples * 1000 // s.out_rate} ms of audio sent",
                                        param="audio_end_ms")
                self.truncated.add(c.item_id)
                await s.truncate_reply(played)  # emits Flush + ReplyTruncated; pump answers truncated
                await self.send(p.truncated(c.item_id, c.audio_end_ms))
            else:
                raise RealtimeError("item_not_found", "only the latest assistant item can be truncated",
                                    param="item_id")

    async def pump(self) -> None:
        """Session events -> Realtime server events."""
        p, s = self.proto, self.session
        try:
            while True:
                e = await s.events.get()
                self.hub.observe("realtime", e)
                if isinstance(e, ev.SpeechStarted):
                    p.speaking_item = new_id("item")
                    self.speech_start = e.t
                    await self.send(p.event("input_audio_buffer.speech_started", item_id=p.speaking_item,
                                            audio_start_ms=int(e.t * 1000)))
                elif isinstance(e, ev.SpeechStopped):
                    item = p.speaking_item or new_id("item")
                    p.speaking_item = None
                    self.item_seconds[item] = e.t - self.speech_start
                    await self.send(p.event("input_audio_buffer.speech_stopped", item_id=item,
                                            audio_end_ms=int(e.t * 1000)))
                    self.pending_items.append(item)
                    await self.send_all(p.committed(item))
                elif isinstance(e, ev.TranscriptEvent) and e.final:
                    item = self.pending_items.pop(0) if self.pending_items else new_id("item")
                    await self.send_all(p.transcribed(item, e.text, self.item_seconds.pop(item, 0.0),
                                                      self.partial_sent.pop(item, "")))
                elif isinstance(e, ev.TranscriptEvent):  # a partial (pause-time ASR): send what it adds
                    item = p.speaking_item or (self.pending_items[-1] if self.pending_items else None)
                    sent = self.partial_sent.get(item, "")
                    if item is not None and e.text.startswith(sent) and len(e.text) > len(sent):
                        self.partial_sent[item] = e.text
                        await self.send(p.event("conversation.item.input_audio_transcription.delta", item_id=item,
                                                content_index=0, delta=e.text[len(sent):]))
                elif isinstance(e, ev.ReplyDelta):
                    await self._ensure_response(e.turn)
                    await self.send(p.transcript_delta(e.text))
                elif isinstance(e, ev.ReplyAudio):
                    await self._ensure_response(e.turn)
                    x = self.out_resampler(e.audio)
                    payload = ulaw_encode(x) if p.output_format == "audio/pcmu" else float_to_pcm16(x)
                    if payload:
                        await self.send(p.audio_delta(payload))
                    s.audio_sent(len(e.audio))
                elif isinstance(e, ev.Flush):
                    self.out_resampler.reset()
                elif isinstance(e, ev.ReplyDone):
                    await self._ensure_response(e.turn)
                    if len(x := self.out_resampler.flush(drop=e.interrupted)):  # the reply's last few ms, in the filter
                        await self.send(p.audio_delta(ulaw_encode(x) if p.output_format == "audio/pcmu"
                                                      else float_to_pcm16(x)))
                    reason = None
                    if e.interrupted:  # a barge-in the server detected, or the client's cancel / truncate
                        r = s.reply
                        by_vad = (r is not None and r.turn == e.turn and r.interrupted
                                  and p.resp_state["item_id"] not in self.truncated)
                        reason = "turn_detected" if by_vad else "client_cancelled"
                    await self.send_all(p.response_finished(e.full_text or e.text, e.interrupted, reason))
                elif isinstance(e, ev.TurnLatency):
                    if p.resp_state is not None and p.resp_state["turn"] == e.turn:
                        await self.send(p.response_done(e))
                elif isinstance(e, ev.ReplyTruncated):
                    pass  # answered when the truncate arrives; a server-side barge-in is the client's to truncate
                elif isinstance(e, ev.ErrorEvent):
                    await self.send(p.error(RealtimeError(e.code, e.message, "server_error")))
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("realtime event pump failed")
            await self.send(p.error(RealtimeError("internal_error", "the server failed; see its log", "server_error")))
            await self.ws.close(1011, "internal error")

    async def _ensure_response(self, turn: int) -> None:
        p = self.proto
        if p.resp_state is None or p.resp_state["turn"] != turn:
            await self.send_all(p.response_started(turn))


async def _send(ws, obj: dict) -> None:
    try:
        await ws.send(json.dumps(obj))
    except ConnectionClosed:
        pass
