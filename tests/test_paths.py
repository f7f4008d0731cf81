"""Brownian paths shared across depths (dyadic Levy refinement)."""

import math

import pytest
import torch
from scipy import stats

from rdm_dynamics.paths import ODE_METHODS, BrownianPath, is_adaptive, solve_ode


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


@pytest.mark.parametrize("steps", [4, 16, 64])
def test_solve_ode_stops_on_every_output_time_and_never_evaluates_beyond(steps):
    """dz/dt = z / (t - 0.5) on t from 1 down to 0.5 + 1e-3: the field blows up at t = 0.5, just
    past the last time.  Every output matches the exact solution z(t) = z(1) (t - 0.5) / 0.5 at
    the tolerances, and no evaluation lies outside [t_end, t_start]."""
    seen = []

    def field(t, z):
        seen.append(float(t))
        return z / (t - 0.5)

    times = torch.linspace(1.0, 0.501, steps + 1, dtype=torch.float64)
    z0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    z = solve_ode(field, z0, times, rtol=1e-10, atol=1e-12)
    exact = z0 * ((times - 0.5) / 0.5)[:, None]
    assert torch.allclose(z, exact, rtol=1e-8, atol=1e-10)
    assert min(seen) >= float(times[-1]) and max(seen) <= float(times[0])


def test_ode_methods_come_from_torchdiffeq_solver_classes():
    assert {"dopri5", "dopri8", "bosh3", "euler", "rk4"} <= set(ODE_METHODS)
    assert is_adaptive("dopri5") and is_adaptive("bosh3") and not is_adaptive("rk4")
    assert "scipy_solver" not in ODE_METHODS  # interpolates its outputs: not offered
    with pytest.raises(ValueError, match="unknown ODE method"):
        is_adaptive("nope")
