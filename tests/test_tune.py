"""llm/tune.py: the choice between cuBLAS and a Triton GEMV tile from measured times (the timing itself needs a GPU
and runs in bench/llm.py)."""

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
