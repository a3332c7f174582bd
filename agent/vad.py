"""Silero VAD (v6, ONNX) over a live 16 kHz stream: one speech probability per 32 ms window."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WINDOW = 512  # samples at 16 kHz = 32 ms
CONTEXT = 64  # the model sees the previous window's last 64 samples too


class SileroVAD:
    sample_rate = 16_000
    window = WINDOW

    def __init__(self, model_path: str | Path):
        import onnxruntime

        path = Path(model_path)
        if path.is_dir():
            path = path / "silero_vad.onnx"
        if not path.exists():
            raise FileNotFoundError(f"Silero VAD model missing: {path}")
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), sess_options=opts,
                                                    providers=["CPUExecutionProvider"])

    def stream(self) -> "VADStream":
        return VADStream(self)

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Offline: P(speech) for each full window of `audio`."""
        s = self.stream()
        return np.array(s.feed(audio), dtype=np.float32)


class VADStream:
    def __init__(self, vad: SileroVAD):
        self.session = vad.session
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros((1, CONTEXT), dtype=np.float32)
        self.pending = np.zeros(0, dtype=np.float32)
        self.sr = np.array(16_000, dtype=np.int64)

    def feed(self, audio: np.ndarray) -> list[float]:
        """Add audio; returns one probability per completed window, in order."""
        probs = []
        for frame in self.windows(audio):
            x = np.concatenate([self.context, frame[None, :]], axis=1)
            out, self.state = self.session.run(None, {"input": x, "state": self.state, "sr": self.sr})
            self.context = x[:, -CONTEXT:]
            probs.append(float(out[0, 0]))
        return probs

    def windows(self, audio: np.ndarray) -> list[np.ndarray]:
        """Add audio; returns the windows it completed (not yet run: feed or a VADBatcher runs them)."""
        buf = np.concatenate([self.pending, audio.astype(np.float32, copy=False)])
        n = len(buf) // WINDOW
        self.pending = buf[n * WINDOW:]
        return [buf[i * WINDOW:(i + 1) * WINDOW] for i in range(n)]


class VADBatcher:
    """Many sessions' windows in one ONNX call, on its own thread. A server with many callers would otherwise run
    one call per 32 ms window per caller on its event loop: 0.14 ms each (~7 ms of loop time per second of audio
    per caller, measured here), vs 0.05 ms per window in a batch of 64 off the loop; the results are identical (the
    batch rows are independent: the recurrent state is per row).

        probs = await batcher.feed(stream, audio)    # what stream.feed(audio) returns
    """

    def __init__(self, vad: SileroVAD, max_batch: int = 64):
        import concurrent.futures as cf

        self.session, self.max_batch = vad.session, max_batch
        self.sr = np.array(16_000, dtype=np.int64)
        self.pool = cf.ThreadPoolExecutor(1, "qt-vad")
        self._queue: list[tuple[VADStream, list[np.ndarray], object]] = []
        self._running = False
        self.calls = self.windows = 0

    async def feed(self, stream: VADStream, audio: np.ndarray) -> list[float]:
        import asyncio

        frames = stream.windows(audio)
        if not frames:
            return []
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((stream, frames, fut))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain(), name="vad-batcher")
        return await fut

    async def _drain(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, seen = [], set()
                for item in self._queue[: self.max_batch]:  # one item per stream: its windows are sequential
                    if id(item[0]) in seen:
                        break
                    seen.add(id(item[0]))
                    batch.append(item)
                self._queue = self._queue[len(batch):]
                try:
                    probs = await loop.run_in_executor(self.pool, self._run, [(s, f) for s, f, _ in batch])
                except Exception as e:  # every waiting session hears it
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for (_, _, fut), p in zip(batch, probs):
                    if not fut.done():
                        fut.set_result(p)
        finally:
            self._running = False

    def _run(self, items: list[tuple[VADStream, list[np.ndarray]]]) -> list[list[float]]:
        """Round r runs window r of every item that has one (a stream's windows are sequential)."""
        out: list[list[float]] = [[] for _ in items]
        for r in range(max(len(f) for _, f in items)):
            rows = [i for i, (_, f) in enumerate(items) if r < len(f)]
            streams = [items[i][0] for i in rows]
            x = np.concatenate([np.concatenate([s.context, items[i][1][r][None, :]], axis=1)
                                for i, s in zip(rows, streams)])
            state = np.concatenate([s.state for s in streams], axis=1)
            p, state = self.session.run(None, {"input": x, "state": state, "sr": self.sr})
            self.calls += 1
            self.windows += len(rows)
            for j, (i, s) in enumerate(zip(rows, streams)):
                s.state = np.ascontiguousarray(state[:, j:j + 1])
                s.context = x[j:j + 1, -CONTEXT:]
                out[i].append(float(p[j, 0]))
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def speech_bounds(vad: SileroVAD, audio: np.ndarray, threshold: float = 0.5) -> tuple[float, float] | None:
    """(start_s, end_s) of speech in a clip by the same model, or None: the clip's 'true end of speech'."""
    probs = vad.probabilities(audio)
    idx = np.flatnonzero(probs >= threshold)
    if not len(idx):
        return None
    return idx[0] * WINDOW / 16_000, (idx[-1] + 1) * WINDOW / 16_000
