"""Properties of the dyadically refined Brownian path that every rung of C3's ladder shares,
beyond the fixed cases of test_noise.py: refinement sums for random grids and spans, and the
independence of the two halves of every refined step."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from rdm_dynamics.noise import BrownianPath


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), base=st.integers(1, 6), levels=st.integers(1, 6),
       span=st.floats(0.01, 10.0), batch=st.integers(1, 4))
def test_refinement_sums_exactly_to_the_coarse_increments(seed, base, levels, span, batch):
    """Each pair of fine increments sums to the coarse increment it refines (the Levy
    construction right = D - left; equality up to one rounding per level)."""
    path = BrownianPath(span, (batch, 2), base_steps=base,
                        generator=torch.Generator().manual_seed(seed))
    finest = path.increments(base * 2**levels)
    for k in range(levels):
        coarse = path.increments(base * 2**k)
        summed = finest.reshape(base * 2**k, 2**(levels - k), batch, 2).sum(1)
        tol = 8 * levels * torch.finfo(torch.float64).eps * (1 + finest.abs().max())
        assert torch.allclose(summed, coarse, rtol=0, atol=float(tol))
    # and the path's total increment is the same at every level
    assert torch.allclose(finest.sum(0), path.increments(base).sum(0), atol=1e-12 * (1 + span))


@pytest.mark.parametrize("steps", [4, 64, 1024])
def test_refined_increments_are_independent_normals_with_variance_dt(steps):
    """Statistical test, fixed seed: 4000 paths from one coarse step, refined to ``steps``
    steps.  Normalised increments xi = dW / sqrt(dt) must have mean 0, variance 1, no lag-1
    correlation (in particular between the two halves of a refined step), and independent
    paths.  Each statistic is compared with 5.5 standard errors of its null distribution: a
    false-alarm rate below 4e-8 per assertion, below 1e-6 over this test's assertions."""
    n = 4000
    path = BrownianPath(0.7, (n,), base_steps=1, generator=torch.Generator().manual_seed(2024))
    xi = path.normalised_increments(steps)  # (steps, n)
    m = xi.numel()
    assert abs(float(xi.mean())) < 5.5 / math.sqrt(m)
    # variance of the sample variance of normals: 2 / m
    assert abs(float(xi.var()) - 1) < 5.5 * math.sqrt(2 / m)
    # every step separately: its n increments have variance dt (Bonferroni over the steps)
    per_step = xi.var(dim=1)
    z = norm.isf(4e-8 / (2 * steps))
    assert float((per_step - 1).abs().max()) < z * math.sqrt(2 / n)
    lag1 = (xi[1:] * xi[:-1]).mean()
    assert abs(float(lag1)) < 5.5 / math.sqrt(n * (steps - 1))
    halves = (xi[0::2] * xi[1::2]).mean()  # the two halves of each refined step
    assert abs(float(halves)) < 5.5 / math.sqrt(n * steps / 2)
    across = (xi[:, 1:] * xi[:, :-1]).mean()  # neighbouring paths
    assert abs(float(across)) < 5.5 / math.sqrt(steps * (n - 1))
    # the total over the whole span is N(0, span) for every refinement
    total = path.increments(steps).sum(0)
    assert abs(float(total.var()) / 0.7 - 1) < 5.5 * math.sqrt(2 / n)
