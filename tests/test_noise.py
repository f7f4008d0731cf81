"""Brownian paths shared across depths (dyadic Levy refinement): fixed cases."""

import math

import pytest
import torch
from scipy import stats

from rdm_dynamics.noise import BrownianPath


def test_refinements_sum_to_the_coarse_increments():
    path = BrownianPath(0.999, (64, 3), base_steps=4, generator=torch.Generator().manual_seed(0))
    fine = path.increments(4 * 2**6)
    for k in range(6):
        coarse = path.increments(4 * 2**k)
        ratio = fine.shape[0] // coarse.shape[0]
        summed = fine.reshape(coarse.shape[0], ratio, 64, 3).sum(1)
        assert (summed - coarse).abs().max() <= 1e-13


def test_path_does_not_depend_on_the_order_levels_are_asked_for():
    a = BrownianPath(1.0, (8,), generator=torch.Generator().manual_seed(3))
    b = BrownianPath(1.0, (8,), generator=torch.Generator().manual_seed(3))
    a_fine = a.increments(64)
    b.increments(4)
    assert torch.equal(a_fine, b.increments(64))


@pytest.mark.parametrize("steps", [1, 8, 256])
def test_increments_are_independent_normals_of_variance_dt(steps):
    """Normalised increments over many samples are N(0, 1): a Kolmogorov-Smirnov test at
    false-alarm rate 1e-4, a chi-square test of the variance at 1e-4, and lag-one correlation
    within 4.5 standard errors (fixed seed)."""
    span = 0.5
    path = BrownianPath(span, (2000,), generator=torch.Generator().manual_seed(11))
    xi = path.increments(steps) / math.sqrt(span / steps)
    flat = xi.flatten().numpy()
    assert stats.kstest(flat, "norm").pvalue > 1e-4
    n = flat.size
    chi2 = float((flat**2).sum())
    assert stats.chi2.sf(chi2, n) > 5e-5 and stats.chi2.cdf(chi2, n) > 5e-5
    if steps > 1:
        corr = float((xi[1:] * xi[:-1]).mean())
        assert abs(corr) < 4.5 / math.sqrt(xi[1:].numel())


def test_bad_step_counts():
    path = BrownianPath(1.0, (2,), base_steps=3)
    for bad in (2, 4, 9, 1):
        with pytest.raises(ValueError, match="base_steps"):
            path.increments(bad)
    assert path.increments(12).shape == (12, 2)
