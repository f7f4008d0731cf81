"""C4 `gate-moments`: closed-form gates, learned gates, and the check's negative controls.

Exact identities are tested with hypothesis over random covariances, SDEs and times, against
references that do not share the formula under test (dopri5 for the PF-ODE map, the Schur
complement of the joint Gaussian for the reverse kernel).  Statistical tests use fixed seeds and
4-sigma rules: a false-alarm rate of about 6e-5 each under the normal approximation.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import gaussians, random_spd, sdes, seeds, times

from rdm_dynamics import verify
from rdm_dynamics.analysis.gate_fitting import (
    forward_trajectories,
    least_squares_gates,
    median_relative_error,
    studentised_gate_error,
    studentised_terms,
    train_gates_by_denoising,
)
from rdm_dynamics.analysis.gaussian_gates import (
    DenoisingCoefficients,
    closed_form_gates,
    eigen_law,
    eigen_stack,
    from_eigen,
    identity,
    install_gates,
    layer_laws,
    to_eigen,
)
from rdm_dynamics.analysis.two_sample import energy_distance
from rdm_dynamics.checks import CheckConfig, registry, run_claim
from rdm_dynamics.checks import gate_moments as c4
from rdm_dynamics.checks.rules import within
from rdm_dynamics.laws import Gaussian, GaussianMixture
from rdm_dynamics.sde import VESDE, VPSDE
from rdm_dynamics.solvers import solve_ode


def random_gaussian(seed: int, dim: int) -> Gaussian:
    g = torch.Generator().manual_seed(seed)
    return Gaussian(torch.randn(dim, generator=g, dtype=torch.float64), random_spd(dim, g))


def time_pair(draw_a: float, draw_b: float) -> tuple[float, float]:
    """(t_from, t_to) with t_from > t_to in [1e-3, 1] (the denoising direction)."""
    hi, lo = max(draw_a, draw_b, 2e-3), min(draw_a, draw_b)
    return hi, min(lo, hi - 1e-3)


# ------------------------------------------------------------------------------------------------
# Closed-form gates are the exact transport
# ------------------------------------------------------------------------------------------------

@settings(max_examples=12)
@given(law=gaussians(max_dim=4), sde=sdes, a=times, b=times, seed=seeds)
def test_closed_form_pf_unit_matches_dopri5(law, sde, a, b, seed):
    """One deterministic unit with closed-form gates = the PF-ODE solved by dopri5."""
    t_from, t_to = time_pair(a, b)
    stack = eigen_stack(law, sde, 1, stochastic=False, span=(t_from, t_to))
    assert install_gates(stack, closed_form_gates(law, sde, stack.times))
    x = law.marginal(sde, t_from).sample(8, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        z = from_eigen(law, stack(to_eigen(law, x)))
    drift = sde.reverse(lambda x, t: law.score(x, t, sde), probability_flow=True).sde
    reference = solve_ode(lambda t, y: drift(y, t)[0], x,
                          torch.tensor([t_from, t_to], dtype=torch.float64))[-1]
    scale = x.norm(dim=-1).max() + reference.norm(dim=-1).max()
    assert float((z - reference).norm(dim=-1).max() / scale) < 1e-7


@given(law=gaussians(max_dim=4), sde=sdes, a=times, b=times)
def test_closed_form_sde_unit_is_the_gaussian_conditional(law, sde, a, b):
    """One stochastic unit's gates = the conditional law of x_s given x_t, from the Schur
    complement of the joint Gaussian of (x_s, x_t) (not from laws.reverse_kernel)."""
    dim = law.dim
    t, s = time_pair(a, b)
    gates = closed_form_gates(law, sde, [t, s], stochastic=True)
    cov_s = law.marginal(sde, s).cov
    r, k = sde.transition_coefs(s, t)
    cov_t = r**2 * cov_s + k**2 * torch.eye(dim, dtype=torch.float64)
    gain = r * cov_s @ torch.linalg.inv(cov_t)  # Cov(x_s, x_t) Cov(x_t)^-1
    cond_cov = cov_s - gain @ (r * cov_s)
    U = law.eigvecs
    assert torch.allclose(U.T @ gain @ U, torch.diag(1 + gates["alpha"][0]), atol=1e-10)
    assert torch.allclose(U.T @ cond_cov @ U, torch.diag(gates["gamma"][0] ** 2),
                          atol=1e-10 * float(cov_s.norm()))
    offset = law.marginal(sde, s).mean - gain @ law.marginal(sde, t).mean
    assert torch.allclose(to_eigen(law, offset), gates["beta"][0], atol=1e-10)


@settings(max_examples=20)
@given(law=gaussians(max_dim=4), sde=sdes, a=times, b=times, seed=seeds,
       depth=st.integers(min_value=1, max_value=40))
def test_composition_over_any_depth_is_exact(law, sde, a, b, seed, depth):
    """L closed-form units compose to the one-step map t_0 -> t_L, deterministic (pathwise)
    and stochastic (every layer's law is p_{t_i})."""
    t_from, t_to = time_pair(a, b)
    det = eigen_stack(law, sde, depth, stochastic=False, span=(t_from, t_to))
    sto = eigen_stack(law, sde, depth, stochastic=True, span=(t_from, t_to))
    install_gates(det, closed_form_gates(law, sde, det.times))
    install_gates(sto, closed_form_gates(law, sde, sto.times, stochastic=True))
    x = law.marginal(sde, t_from).sample(8, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        z = from_eigen(law, det(to_eigen(law, x)))
    exact = law.pf_ode_map(sde, t_from, t_to)(x)
    assert float((z - exact).norm(dim=-1).max()) <= 1e-12 * (1 + float(exact.norm(dim=-1).max()))
    targets = [eigen_law(law, law.marginal(sde, t)) for t in sto.times.tolist()]
    laws = layer_laws(sto, eigen_law(law, law.marginal(sde, t_from)),
                      torch.stack([p.mean for p in targets]), torch.stack([p.cov for p in targets]))
    scale = 1 + torch.stack([p.cov.norm() for p in targets])
    assert bool((laws.cov_error <= 1e-11 * scale).all())
    assert bool((laws.mean_error <= 1e-11 * scale).all())


@given(law=gaussians(max_dim=4), sde=sdes, t=times, seed=seeds, stochastic=st.booleans())
def test_euler_coefficients_read_off_the_denoising_field(law, sde, t, seed, stochastic):
    """a(t) y + b(t) reproduces the denoising field (it is affine for Gaussian data)."""
    dim = law.dim
    coefs = DenoisingCoefficients(law, sde, stochastic=stochastic)
    field = sde.reverse(lambda x, t: law.score(x, t, sde),
                        probability_flow=not stochastic).denoising_field
    x = torch.randn(5, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    tt = torch.tensor(t, dtype=torch.float64)
    lhs = coefs.gain(tt) * to_eigen(law, x) + coefs.bias(tt)
    rhs = to_eigen(law, field(x, tt))
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10 * (1 + float(rhs.abs().max())))
    assert torch.allclose(coefs.noise(tt), sde.diffusion_coef(tt).expand(dim))


def test_closed_form_gates_reject_bad_grids():
    law, sde = random_gaussian(0, 2), VPSDE()
    with pytest.raises(ValueError, match="at least two"):
        closed_form_gates(law, sde, [0.5])
    with pytest.raises(ValueError, match=">= 0"):
        closed_form_gates(law, sde, [0.5, -0.1])
    with pytest.raises(ValueError, match="decrease"):
        closed_form_gates(law, sde, [0.1, 0.5], stochastic=True)


@pytest.mark.parametrize("schedule, learnable", [("rdm", True), ("euler", False),
                                               ("plain", False), ("inv-sqrt", False)])
def test_only_learnable_gates_take_the_closed_form(schedule, learnable):
    law, sde = random_gaussian(1, 2), VPSDE()
    stack = eigen_stack(law, sde, 4, schedule=schedule, stochastic=True, span=(1.0, 1e-3))
    before = {k: v.detach().clone() for k, v in stack.gates().items()}
    gates = closed_form_gates(law, sde, stack.times, stochastic=True)
    assert install_gates(stack, gates) is learnable
    for name, value in stack.gates().items():
        assert torch.equal(value.detach(), gates[name] if learnable else before[name])


def test_layer_laws_of_an_overflowing_stack_are_flagged():
    """Plain gates blow the law up: the layer laws say so (not proper, W2 NaN), no exception."""
    law, sde = random_gaussian(2, 2), VESDE()
    stack = eigen_stack(law, sde, 256, schedule="plain", stochastic=True, span=(1.0, 1e-3))
    p_eps = eigen_law(law, law.marginal(sde, 1e-3))
    laws = layer_laws(stack, eigen_law(law, law.marginal(sde, 1.0)), p_eps.mean, p_eps.cov,
                      layers=-1)
    assert not laws.proper
    assert not math.isfinite(float(laws.w2))


# ------------------------------------------------------------------------------------------------
# Learned gates
# ------------------------------------------------------------------------------------------------

def fitted_problem(n: int, depth: int = 32, seed: int = 0, shift: float = 0.0):
    law, sde = random_gaussian(seed, 3), VPSDE()
    stack = eigen_stack(law, sde, depth, stochastic=True, span=(1.0, 1e-3))
    g = torch.Generator().manual_seed(seed)
    states = to_eigen(law, forward_trajectories(sde, law.sample(n, g), stack.times + shift,
                                                generator=g))
    closed = closed_form_gates(law, sde, stack.times, stochastic=True)
    return law, sde, stack, states, closed


def test_forward_trajectories_have_the_exact_marginals():
    """Every row of a trajectory is a sample of p_t: sample mean within 4 standard errors."""
    law, sde = random_gaussian(3, 2), VESDE()
    times = torch.tensor([1.0, 0.3, 0.5, 1e-3], dtype=torch.float64)  # any order
    x = forward_trajectories(sde, law.sample(4000, torch.Generator().manual_seed(3)), times,
                             generator=torch.Generator().manual_seed(4))
    for row, t in zip(x, times.tolist(), strict=True):
        p = law.marginal(sde, t)
        z = (row.mean(0) - p.mean) / (torch.diagonal(p.cov).sqrt() / math.sqrt(row.shape[0]))
        assert float(z.abs().max()) < 4


def test_least_squares_gates_are_unbiased_and_calibrated():
    """On exact forward pairs the studentised squared bias is 0 within 4 standard errors, and
    on pairs from times shifted by 0.05 it is far from 0 (about 6.6 standard errors at 128
    units: the standard error comes from the spread over the (unit, channel) groups, so under a
    bias concentrated in a few units the z-score grows with the number of units, not with n)."""
    *_, stack, states, closed = fitted_problem(2000)
    fit = least_squares_gates(states, identity, stack.times)
    value, se = studentised_gate_error(studentised_terms(fit.gates(), fit.standard_errors(),
                                                         closed))
    assert abs(value) <= 4 * se
    *_, stack, states, closed = fitted_problem(1000, depth=128, shift=0.05)
    fit = least_squares_gates(states, identity, stack.times)
    value, se = studentised_gate_error(studentised_terms(fit.gates(), fit.standard_errors(),
                                                         closed))
    assert value > 4 * se


def test_least_squares_error_falls_at_the_monte_carlo_rate():
    errors = []
    ns = (250, 1000, 4000)
    for n in ns:
        *_, stack, states, closed = fitted_problem(n, seed=5)
        errors.append(median_relative_error(least_squares_gates(states, identity,
                                                                stack.times).gates(), closed))
    slope = -math.log(errors[-1] / errors[0]) / math.log(ns[-1] / ns[0])
    assert 0.4 < slope < 0.6


def test_gradient_descent_reaches_the_maximum_likelihood_gates():
    """Fisher scoring from the Euler gates converges to the least-squares alpha, beta and to
    gamma^2 = RSS / n (the MLE), to round-off."""
    *_, stack, states, closed = fitted_problem(500, depth=8)
    history = train_gates_by_denoising(stack, states)
    assert 2 < len(history) < 50
    assert history[-1] <= min(history) + 1e-12 * abs(history[-1])
    fit = least_squares_gates(states, identity, stack.times)
    n = states.shape[1]
    assert torch.allclose(stack.alpha.detach(), fit.alpha, rtol=1e-9, atol=1e-12)
    assert torch.allclose(stack.beta.detach(), fit.beta, rtol=1e-9, atol=1e-12)
    assert torch.allclose(stack.gamma.detach().abs(), fit.gamma * math.sqrt((n - 2) / n),
                          rtol=1e-9)


def test_gradient_descent_leaves_fixed_gates_alone():
    law, sde = random_gaussian(0, 2), VPSDE()
    stack = eigen_stack(law, sde, 4, schedule="euler", stochastic=True, span=(1.0, 1e-3))
    before = stack.alpha.clone()
    states = torch.randn(5, 10, 2, dtype=torch.float64)
    assert train_gates_by_denoising(stack, states) == []
    assert torch.equal(stack.alpha, before)


# ------------------------------------------------------------------------------------------------
# Two-sample statistic and mixture moments
# ------------------------------------------------------------------------------------------------

def test_energy_distance_is_zero_between_equal_laws_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(3000, 2, generator=g, dtype=torch.float64) for _ in range(2))
    value, se = energy_distance(x, y)
    assert abs(value) <= 4 * se
    value, se = energy_distance(x, y + 0.3)
    assert value > 4 * se
    with pytest.raises(ValueError, match="two blocks"):
        energy_distance(x[:150], y)


def test_moment_matched_mixture_has_the_mixture_moments():
    g = torch.Generator().manual_seed(1)
    mixture = GaussianMixture(torch.tensor([0.3, 0.7], dtype=torch.float64),
                              torch.randn(2, 3, generator=g, dtype=torch.float64),
                              0.2 * torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    matched = mixture.moment_matched()
    x = mixture.sample(200_000, g)
    assert torch.allclose(matched.mean, x.mean(0), atol=0.01)
    assert torch.allclose(matched.cov, torch.cov(x.T), atol=0.01)


# ------------------------------------------------------------------------------------------------
# The check and its negative controls
# ------------------------------------------------------------------------------------------------

def test_check_is_registered():
    assert registry()["gate-moments"] is c4
    assert c4.CLAIM == "C4"


def test_check_passes_at_the_verify_depth():
    result = run_claim(c4, CheckConfig(depth=256, quick=True))
    assert result.passed, result.summary
    m = result.metrics
    assert m["closed_form_error"] <= 1e-10
    assert 0.85 <= m["euler_order_vp"] <= 1.15 and m["euler_error_vp"] > 1e-4
    assert abs(m["learned_gate_error"]) <= 4 * m["learned_gate_error_se"]
    assert m["mixture_affine_energy"] > 4 * m["mixture_affine_energy_se"]
    assert set(result.expected) <= set(m)


def failed_metrics(result) -> set[str]:
    return {k for k, iv in result.expected.items() if not within(result.metrics[k], iv)}


@pytest.mark.parametrize("schedule, must_fail", [
    ("plain", {"closed_form_error", "learned_gate_error", "learned_gate_error_gd"}),
    ("euler", {"closed_form_error", "learned_gate_error"}),
    ("inv-sqrt", {"closed_form_error", "learned_gate_error"}),
])
def test_fixed_gates_fail(schedule, must_fail):
    """Schedules whose gates cannot take the closed form or a fit fail the check."""
    result = run_claim(c4, CheckConfig(depth=32, quick=True, schedule=schedule))
    assert not result.passed
    assert must_fail <= failed_metrics(result), result.summary


def test_gates_on_the_wrong_times_fail():
    """Gates computed and fitted on a grid shifted by 0.02 (about five steps at L = 256)."""
    result = run_claim(c4, CheckConfig(depth=32, quick=True), time_shift=0.02)
    assert not result.passed
    assert {"closed_form_error", "learned_gate_error"} <= failed_metrics(result), result.summary


def test_a_half_step_shift_breaks_exactness():
    result = run_claim(c4, CheckConfig(depth=32, quick=True), time_shift=0.5 * (1 - 1e-3) / 32)
    assert result.metrics["closed_form_error"] > 1e-6
    assert not result.passed


def test_a_shift_below_zero_is_refused():
    with pytest.raises(ValueError, match="below t = 0"):
        c4.measure(CheckConfig(depth=16, quick=True), time_shift=-0.01)


def test_verify_plain_exits_1(tmp_path, capsys):
    code = verify.main(["--only", "C4", "--quick", "--depth", "32", "--schedule", "plain",
                        "--out", str(tmp_path), "--no-figures"])
    assert code == 1
    assert "FAIL" in capsys.readouterr().out
