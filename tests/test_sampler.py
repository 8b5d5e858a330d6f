"""The sampler's Triton kernel (run by Triton's CPU interpreter) draws the same tokens as the PyTorch
reference, and both draw from the nucleus distribution."""

import os

import pytest
import torch

from tinyreason.generation import sampler

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def kernel():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU test of a Triton kernel: needs TRITON_INTERPRET=1 (tests/conftest.py sets it without a GPU)")
    from tinyreason.generation import sample_kernel

    return sample_kernel


@pytest.mark.parametrize("vocab,dtype", [(4, torch.float32), (1000, torch.float32), (5000, torch.bfloat16),
                                         (9000, torch.float32)])
def test_kernel_draws_the_reference_tokens(kernel, vocab, dtype):
    gen = torch.Generator().manual_seed(vocab)
    n = 24
    logits = (torch.randn(n, vocab, generator=gen) * 4).to(dtype)
    seeds = torch.randint(0, 2**62, (n,), generator=gen)
    positions = torch.randint(0, 40000, (n,), generator=gen)
    for temperature in (0.6, 1.0):
        t = torch.tensor(temperature)
        for top_p in (None, 0.95, 0.5, 0.05):
            p = None if top_p is None else torch.tensor(top_p)
            want = sampler.sample_reference(logits, seeds, positions, t, p)
            got = kernel.sample(logits, seeds, positions, t, p)
            assert torch.equal(got, want), (temperature, top_p)


def test_kernel_reruns_the_race_when_the_winner_is_outside_the_nucleus(kernel):
    # one dominant token and a flat tail: with top_p 0.5 the nucleus is the dominant token alone,
    # while the unrestricted race lands in the tail about half the time
    n, vocab = 64, 300
    logits = torch.zeros(n, vocab)
    logits[:, 7] = torch.log(torch.tensor(float(vocab - 1)))  # p = 0.5 for token 7
    seeds, positions = torch.arange(n), torch.arange(n)
    one = torch.ones(())
    free = kernel.sample(logits, seeds, positions, one, None)
    assert (free != 7).sum() > n // 4  # the race alone often picks the tail
    cut = kernel.sample(logits, seeds, positions, one, torch.tensor(0.4))
    assert torch.equal(cut, torch.full((n,), 7))


@pytest.mark.parametrize("impl", ["reference", pytest.param("kernel", marks=pytest.mark.slow)])
def test_sampled_frequencies_match_the_nucleus_distribution(kernel, impl):
    draw = sampler.sample_reference if impl == "reference" else kernel.sample
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 20000 if impl == "reference" else 6000  # the interpreter runs one program per row in Python
    logits = probs.log().expand(n, 4).contiguous()
    seeds, positions = torch.full((n,), 5), torch.arange(n)
    one = torch.ones(())
    tol = 3 * (0.25 / n) ** 0.5  # three standard errors of a frequency
    freq = torch.bincount(draw(logits, seeds, positions, one, None), minlength=4).float() / n
    assert torch.allclose(freq, probs, atol=tol)
    # top_p 0.7 keeps 0.5 and 0.3 (mass above 0.15 is 0.8), renormalised to 0.625 / 0.375
    freq = torch.bincount(draw(logits, seeds, positions, one, torch.tensor(0.7)), minlength=4).float() / n
    assert freq[2:].sum() == 0 and abs(freq[0] - 0.625) < tol
    # temperature 0.5 squares the probabilities before renormalising
    sharp = probs**2 / (probs**2).sum()
    freq = torch.bincount(draw(logits, seeds, positions, torch.tensor(0.5), None), minlength=4).float() / n
    assert torch.allclose(freq, sharp, atol=tol)
