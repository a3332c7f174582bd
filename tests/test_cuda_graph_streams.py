"""Every CUDA graph the runtime captures names its own capture stream.

torch keys the cuBLAS workspace by stream, a captured graph keeps the workspace of the stream it was captured on, and
`torch.cuda.graph` without `stream=` uses one default stream per process. Graphs of two components captured there
share one workspace: replayed at once from two worker threads their GEMMs corrupt each other's results
(bench/graph_streams.py on the H100: 26 % and 44 % of the two graphs' replays wrong), the likely cause of the GPU
that stopped finishing its work at 64-96 callers (docs/perf-notes.md, eleventh session). In newer torch, destroying a
graph also releases its capture stream's workspace (pytorch#193402). The check is on the source, so it runs without
a GPU."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def graph_calls():
    for pkg in ("agent", "asr", "llm", "tts", "kernels"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "graph"
                        and ast.unparse(node.func.value) in ("torch.cuda", "cuda")):
                    yield path.relative_to(ROOT), node


def test_the_runtime_captures_graphs_and_each_capture_names_a_stream():
    calls = list(graph_calls())
    assert len(calls) >= 4, calls  # the LLM's decode graphs, the ASR's, the TTS's and the judge's
    unnamed = [f"{p}:{n.lineno}" for p, n in calls if not any(k.arg == "stream" for k in n.keywords)]
    assert not unnamed, f"torch.cuda.graph without stream= (the process-wide default capture stream): {unnamed}"
