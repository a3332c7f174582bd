import pytest
import torch
from kutil import needs_interpreter, poison

from kernels.sampling import exp_noise, sample, sample_ref, sample_triton, top_p_cutoff


def test_greedy_rows_are_argmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g)
    temp = torch.tensor([0.0, 1.0, 0.0, 0.7, 0.0, 1.3])
    ids = sample(logits, temp, torch.full((6,), 0.9), generator=g, impl="torch")
    assert ids.dtype == torch.int64 and ids.shape == (6,)
    greedy = temp == 0
    assert torch.equal(ids[greedy], logits.argmax(-1)[greedy])


def test_top_p_cutoff_matches_plain_sort():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 30, generator=g) * 2
    temp = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.7])
    top_p = torch.tensor([0.1, 0.5, 0.9, 1.0, 1e-9])
    cut = top_p_cutoff(logits, temp, top_p)
    for i in range(5):
        p, idx = (logits[i] / temp[i]).softmax(-1).double().sort(descending=True)
        kept, mass = [], 0.0  # smallest prefix of most probable tokens whose mass reaches top_p (>= 1 token)
        for pj, j in zip(p.tolist(), idx.tolist()):
            if kept and mass >= top_p[i].item():
                break
            kept.append(j)
            mass += pj
        assert set((logits[i] >= cut[i]).nonzero().flatten().tolist()) == set(kept)


def test_sampled_frequencies_follow_softmax_and_top_p():
    # 40,000 draws of one 6-token row; counts within 5 sigma of the expected frequencies
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n, temp = 40_000, 0.8
    g = torch.Generator().manual_seed(2)
    for top_p in (None, 0.8):
        tp = None if top_p is None else torch.full((n,), top_p)
        ids = sample_ref(logits.expand(n, 6).contiguous(), torch.full((n,), temp), tp, generator=g)
        p = (logits / temp).softmax(-1).double()
        if top_p is not None:  # keep the smallest prefix reaching 0.8, renormalise
            keep = (p.cumsum(0) - p) < top_p
            p = torch.where(keep, p, 0.0)
            p /= p.sum()
        freq = torch.bincount(ids, minlength=6).double() / n
        sigma = (p * (1 - p) / n).sqrt()
        assert ((freq - p).abs() <= 5 * sigma + 1e-12).all(), (top_p, freq, p)


def test_generator_makes_it_reproducible():
    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(3))
    temp, tp = torch.ones(4), torch.full((4,), 0.95)
    a = sample(logits, temp, tp, generator=torch.Generator().manual_seed(9), impl="torch")
    b = sample(logits, temp, tp, generator=torch.Generator().manual_seed(9), impl="torch")
    assert torch.equal(a, b)


@needs_interpreter
@pytest.mark.parametrize("use_top_p", [False, True])
@pytest.mark.parametrize("dtype,num_splits", [(torch.float32, 1), (torch.float16, 3), (torch.float32, None)])
def test_triton_matches_reference(use_top_p, dtype, num_splits):
    g = torch.Generator().manual_seed(4)
    b, v = 8, 300  # V not a multiple of the block
    logits = (3 * torch.randn(b, v, generator=g)).to(dtype)
    temp = torch.tensor([0.0, 1.0, 0.5, 0.0, 2.0, 1.0, 0.9, 1e-3])
    top_p = torch.tensor([1.0, 0.9, 0.5, 0.3, 1.0, 0.05, 0.99, 0.7]) if use_top_p else None
    for trial in range(3):  # fresh noise each time; identical noise for both paths
        noise = exp_noise((b, v), "cpu", g)
        out = poison(torch.empty(b, dtype=torch.int64))
        got = sample_triton(logits, temp, top_p, noise=noise, out=out, block=64,
                           num_splits=num_splits)
        assert got is out
        assert torch.equal(got, sample_ref(logits, temp, top_p, noise=noise))


@needs_interpreter
def test_triton_greedy_ties_pick_the_first_index_across_slices():
    logits = torch.randn(2, 256, generator=torch.Generator().manual_seed(5))
    logits[0, [70, 200]] = 10.0  # tie in two different slices
    logits[1, [3, 5]] = 10.0  # tie inside one block
    got = sample_triton(logits, torch.zeros(2), None, noise=exp_noise((2, 256), "cpu"), block=32, num_splits=4)
    assert got.tolist() == [70, 3] == logits.argmax(-1).tolist()


@needs_interpreter
def test_argmax_matches_torch_with_ties():
    from kernels.sampling import argmax

    g = torch.Generator().manual_seed(9)
    logits = torch.randn(3, 5000, generator=g).to(torch.float16)  # half: the kernel must compile for it
    logits[1, 4000] = logits[1, 123] = 50.0  # a tie across slices: the first index wins
    got = argmax(logits, impl="triton")
    assert torch.equal(got, logits.argmax(-1)) and got[1].item() == 123
