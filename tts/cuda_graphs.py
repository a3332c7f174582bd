"""CUDA graphs for TorchPiperTTS's three model calls, installed from outside the model (STYLE: the hot step is
a pure function, optimised from outside).

Shapes are bucketed (ids and frames rounded up to a multiple of `step`; padding is masked, so per-item results
do not change) and one graph is captured per (batch, ids[, frames]) the first time it is seen, all sharing one
memory pool. The front graph (encoder + duration predictor) writes static outputs that the back graph (expand +
flow) reads in place; the decoder graph is keyed by (batch, window width). Noise uses the default CUDA generator
(graph-safe); a TorchPiperTTS with its own `seed` generator is not supported here.
"""

from __future__ import annotations

import math

import torch

# The back graph's frame counts that warm-up captures for a front graph of T (bucketed) ids: a phrase's frames per
# id, measured on the Piper voices with their own noise_w and length_scale, fall within ~1.6-2.6 (and a phrase of
# T ids has more than T - step of them); the range below has margin on both sides.
FRAMES_PER_ID = (1.2, 3.0)


def back_frame_buckets(T: int, step: int = 32, frame_step: int = 64) -> list[int]:
    """Frame buckets (multiples of frame_step) that a phrase bucketed to T ids can need: the back graphs warm-up
    captures for that front graph (pure; tests/test_tts_torch.py checks it covers real phrases)."""
    lo = max(1, math.floor(FRAMES_PER_ID[0] * max(1, T - step)))
    hi = math.ceil(FRAMES_PER_ID[1] * T)
    first = -(-lo // frame_step) * frame_step
    return list(range(first, -(-hi // frame_step) * frame_step + 1, frame_step))


def range_keys(front_keys, step: int = 32, frame_step: int = 64) -> tuple[list, list]:
    """What `GraphedTTS.capture_back_range` adds to the graphs warm-up made (pure): the front keys (1, T) of every
    one-sentence id bucket up to the longest front key, and for every front key, old and new, the back keys
    (rows, T, frames) of its `back_frame_buckets`, largest first."""
    have = set(front_keys)
    longest = max((T for _, T in have), default=0)
    fronts = [(1, T) for T in range(step, longest + 1, step) if (1, T) not in have]
    backs = sorted(((rows, T, n) for rows, T in have | set(fronts) for n in back_frame_buckets(T, step, frame_step)),
                   key=lambda k: (k[2], k[1], k[0]), reverse=True)
    return fronts, backs


class _Graph:
    def __init__(self, fn, static_inputs, pool, stream):
        self.inputs = static_inputs
        stream.wait_stream(torch.cuda.current_stream())  # inputs were made on the current stream
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up on a side stream, as torch.cuda.graphs recommends
                fn(*static_inputs)
        stream.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, stream=stream):
            self.outputs = fn(*static_inputs)

    def __call__(self, *inputs):
        for dst, src in zip(self.inputs, inputs):
            if dst is not src:
                dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self.outputs


class GraphedTTS:
    def __init__(self, tts, step: int = 32, max_graphs: int = 256, frame_step: int = 64):
        assert tts.device.type == "cuda" and tts.generator is None
        self.tts, self.step, self.max_graphs, self.frame_step = tts, step, max_graphs, frame_step
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream()
        self.front_graphs, self.back_graphs, self.dec_graphs = {}, {}, {}
        # what each kind of graph holds in the shared pool: growth of the device memory torch reserves across each
        # capture, with the regular cache emptied before and after (the eager warm-up runs allocate from it)
        self.pool_bytes = {"front": 0, "back": 0, "decoder": 0}
        self.eager_front, self.eager_back, self.eager_decode = tts.front, tts.back, tts.decode_fn
        tts.bucket, tts.bucket_frames = self.bucket, self.bucket_frames
        tts.front, tts.back, tts.decode_fn = self.front, self.back, self.decode

    def bucket(self, n: int) -> int:
        return -(-n // self.step) * self.step

    def bucket_frames(self, n: int) -> int:
        return -(-n // self.frame_step) * self.frame_step

    def capture_back_range(self) -> int:
        """For every front graph, the back graphs of every frame bucket its phrases can need
        (`back_frame_buckets`). Without this, warm-up captured one frame count per warm-up phrase, and 44-46 of the 60
        back calls of the benchmark's reply ran eagerly (bench/tts_graph_keys.py). Returns how many
        back graphs there are. A one-sentence phrase of any id bucket up to the longest warm-up one gets its front
        graph here too (a phrase whose front graph is missing runs both stages eagerly)."""
        fronts, backs = range_keys(self.front_graphs, self.step, self.frame_step)
        dev = self.tts.device
        for _, T in fronts:
            if self._room():
                self.front(torch.ones(1, T, dtype=torch.long, device=dev), torch.full((1,), T, dtype=torch.long, device=dev))
        for rows, T, n in backs:  # largest first, meant to let later captures reuse freed blocks; on an H100 each back
            # graph still adds ~23 MiB to the pool (memory_line; docs/perf-notes.md "Nineteenth session")
            if (rows, T) in self.front_graphs and (rows, T, n) not in self.back_graphs and self._room():
                stats, dur = self.front_graphs[(rows, T)].outputs
                self.back(stats, dur, n)
        return len(self.back_graphs)

    def _capture(self, kind: str, fn, static_inputs) -> _Graph:
        torch.cuda.empty_cache()
        before = torch.cuda.memory_reserved()
        g = _Graph(fn, static_inputs, self.pool, self.stream)
        torch.cuda.empty_cache()
        self.pool_bytes[kind] += torch.cuda.memory_reserved() - before
        return g

    def memory_line(self) -> str:
        """ "TTS graphs: front <graphs> (<MiB>), back ..., decoder ..." (the start-up memory plan's note)."""
        counts = {"front": len(self.front_graphs), "back": len(self.back_graphs), "decoder": len(self.dec_graphs)}
        return "TTS graphs: " + ", ".join(f"{k} {counts[k]} ({self.pool_bytes[k] / 2**20:.1f} MiB)" for k in counts)

    def _room(self) -> bool:
        return len(self.front_graphs) + len(self.back_graphs) + len(self.dec_graphs) < self.max_graphs

    def freeze(self) -> int:
        """No more captures: a shape not seen so far runs eagerly. A server calls this after its warm-up, since a
        capture while other threads launch CUDA work (the LLM, the ASR) is not safe. Returns the graph count."""
        self.max_graphs = len(self.front_graphs) + len(self.back_graphs) + len(self.dec_graphs)
        return self.max_graphs

    def front(self, ids, lengths):
        key = tuple(ids.shape)
        if key not in self.front_graphs:
            if not self._room():
                return self.eager_front(ids, lengths)
            self.front_graphs[key] = self._capture("front", self.eager_front, (ids.clone(), lengths.clone()))
        return self.front_graphs[key](ids, lengths)

    def back(self, stats, dur, n_frames: int):
        key = (*dur.shape, n_frames)
        front = self.front_graphs.get(tuple(dur.shape))
        if front is None or front.outputs[1] is not dur:  # only chained to the front graph's static outputs
            return self.eager_back(stats, dur, n_frames)
        if key not in self.back_graphs:
            if not self._room():
                return self.eager_back(stats, dur, n_frames)
            self.back_graphs[key] = self._capture("back", lambda s, d: self.eager_back(s, d, n_frames), (stats, dur))
        return self.back_graphs[key](stats, dur).clone()  # latents outlive the next prepare()

    def decode(self, z):
        key = tuple(z.shape)
        if key not in self.dec_graphs:
            if not self._room():
                return self.eager_decode(z)
            self.dec_graphs[key] = self._capture("decoder", self.eager_decode, (z.clone(),))
        return self.dec_graphs[key](z)
