"""`quickturn chat`: microphone -> session -> speaker, through PortAudio (sounddevice)."""

from __future__ import annotations

import asyncio
import collections
import threading

import numpy as np

from . import events as ev


class AudioDeviceError(RuntimeError):
    pass


def _sounddevice():
    try:
        import sounddevice as sd
    except OSError as e:  # the PortAudio shared library is missing
        raise AudioDeviceError(f"no audio I/O available: {e} (on Debian/Ubuntu: apt install libportaudio2)") from None
    return sd


def list_devices() -> int:
    sd = _sounddevice()
    devices = sd.query_devices()
    if not len(devices):
        print("no audio devices found")
        return 1
    print(devices)
    return 0


def _check_device(sd, device, kind: str) -> dict:
    try:
        return sd.query_devices(device, kind=kind)
    except (ValueError, sd.PortAudioError) as e:
        raise AudioDeviceError(f"no usable {kind} audio device ({e}); see `quickturn chat --list-devices`") from None


class _Speaker:
    """Reply audio waiting to be played; the PortAudio callback drains it."""

    def __init__(self):
        self.buf: collections.deque[np.ndarray] = collections.deque()
        self.lock = threading.Lock()

    def push(self, audio: np.ndarray) -> None:
        with self.lock:
            self.buf.append(audio)

    def clear(self) -> None:
        with self.lock:
            self.buf.clear()

    def callback(self, out, frames, _time, _status) -> None:
        out.fill(0)
        filled = 0
        with self.lock:
            while filled < frames and self.buf:
                head = self.buf[0]
                n = min(frames - filled, len(head))
                out[filled:filled + n, 0] = head[:n]
                filled += n
                if n == len(head):
                    self.buf.popleft()
                else:
                    self.buf[0] = head[n:]


def run_chat(cfg, load_runtime, barge_in: bool = False, input_device=None, output_device=None) -> int:
    sd = _sounddevice()
    in_info = _check_device(sd, input_device, "input")
    _check_device(sd, output_device, "output")
    rt = load_runtime(cfg)
    rate = int(in_info["default_samplerate"])
    print(f"listening on {in_info['name']} at {rate} Hz — speak; Ctrl-C to quit"
          + ("" if barge_in else " (half duplex: the mic is ignored while Quickturn talks)"))
    try:
        asyncio.run(_chat(sd, rt, rate, barge_in, input_device, output_device))
    except KeyboardInterrupt:
        pass
    finally:
        rt.close()
    return 0


async def _chat(sd, rt, rate: int, barge_in: bool, input_device, output_device) -> None:
    from .session import Session

    loop = asyncio.get_running_loop()
    mic: asyncio.Queue = asyncio.Queue(maxsize=200)
    speaker = _Speaker()
    session = Session(rt, rate, barge_in=barge_in)
    await session.start()

    def on_mic(indata, frames, _time, _status):
        chunk = indata[:, 0].copy()
        loop.call_soon_threadsafe(lambda: mic.full() or mic.put_nowait(chunk))

    async def show_events():
        while True:
            e = await session.events.get()
            if isinstance(e, ev.ReplyAudio):
                speaker.push(e.audio)
                session.audio_sent(len(e.audio))
            elif isinstance(e, ev.Flush):
                speaker.clear()
                print("  [interrupted]")
            elif isinstance(e, ev.TranscriptEvent) and e.final and e.text:
                print(f"you: {e.text}")
            elif isinstance(e, ev.ReplyDone) and e.text:
                print(f"quickturn: {e.text}")
            elif isinstance(e, ev.TurnLatency) and e.v2v_ms:
                print(f"  (voice-to-voice {e.v2v_ms:.0f} ms)")
            elif isinstance(e, ev.ErrorEvent):
                print(f"  error: {e.message}")

    printer = asyncio.create_task(show_events())
    with sd.InputStream(device=input_device, channels=1, samplerate=rate, dtype="float32", blocksize=rate // 50,
                        callback=on_mic), \
            sd.OutputStream(device=output_device, channels=1, samplerate=rt.tts.sample_rate, dtype="float32",
                            callback=speaker.callback):
        try:
            while True:
                await session.feed(await mic.get())
        finally:
            printer.cancel()
            await session.close()
