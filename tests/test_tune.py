"""llm/tune.py: the choice between cuBLAS and a Triton GEMV tile from measured times (the timing itself needs a GPU
and runs in bench/llm.py)."""

import pytest
import torch

from llm.tune import choose


def test_cublas_kept_unless_a_tile_beats_it_clearly():
    assert choose({None: 10.0, (4, 512, 4): 9.95, (8, 1024, 8): 10.5}) is None  # 0.5 % is noise
    assert choose({None: 10.0, (4, 512, 4): 9.0, (8, 1024, 8): 8.5}) == (8, 1024, 8)


def test_failed_tiles_are_not_candidates():
    assert choose({None: 10.0, (4, 512, 4): None}) is None
    assert choose({None: 10.0, (4, 512, 4): None, (16, 512, 4): 7.0}) == (16, 512, 4)


def test_without_a_cublas_time_the_fastest_tile_wins():
    assert choose({None: None, (4, 512, 4): 7.0, (16, 512, 4): 6.0}) == (16, 512, 4)
    assert choose({(4, 512, 4): None}) is None


def test_fused_and_plain_candidates_compete_on_time():
    t = (4, 512, 4)
    assert choose({None: 10.0, (t, False): 9.0, (t, True): 8.0}) == (t, True)
    assert choose({None: 10.0, (t, False): 8.0, (t, True): 9.0}) == (t, False)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_every_candidate_computes_the_same_projection(qkv_bias):
    """The functions tune_decode_gemv times are the op as the decode step runs it: for each projection, the
    baseline (the op before it, then cuBLAS), the plain GEMV and the fused GEMV at every tile give the same output
    on a tiny model (on CPU the kernels' torch references run; their equivalence to Triton is tested apart)."""
    from llm.llama import Llama
    from llm.tune import CANDIDATES, op_weights, variants
    from llm.weights import init_synthetic
    from llm.config import tiny

    model = init_synthetic(Llama(tiny(vocab_size=64, qkv_bias=qkv_bias, tie_embeddings=False)), seed=3).eval()
    with torch.inference_mode():
        for op, (ws, bs, norms, k) in op_weights(model).items():
            x = torch.randn(1, 2 * k if op == "w2" else k)
            res = torch.randn(1, k)
            fns = variants(op, ws, bs, norms, x, res, model.cfg.rms_eps, CANDIDATES)
            assert len(fns) == 1 + len(CANDIDATES) * (1 if op == "wo" else 2)
            want = fns[None]()
            assert len(want) == len(ws)
            for key, fn in fns.items():
                for a, b in zip(fn(), want):
                    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (op, key)
