"""Exact Gaussian transports computed two ways, and the moment machinery of C2/C3.

Hypothesis draws random Gaussian laws, SDEs and times in [eps, T] (tests/strategies.py); every
property compares two independent computations.  (The closed-form maps against dopri5 at fixed
times, the pushforward of p_a to p_b and the reverse kernel as Bayes are in test_laws.py.)
"""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from strategies import gaussians, sdes, seeds, times

from rdm_dynamics.checks import CheckConfig
from rdm_dynamics.checks.problems import denoising_stack
from rdm_dynamics.laws import Gaussian, gaussian_w2
from rdm_dynamics.sde import EPS, make_sde
from rdm_dynamics.solvers import solve_ode
from rdm_dynamics.stack import GatedResidualStack
from rdm_dynamics.stats import empirical_moments, gaussian_w2_moments, moment_z_scores

F64 = torch.float64
EULER = CheckConfig(schedule="euler")


def fixed_law(seed: int, dim: int) -> Gaussian:
    return Gaussian.random(dim, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=15)
@given(law=gaussians(max_dim=3), sde=sdes, a=times, b=times, seed=seeds)
def test_pf_ode_map_matches_dopri5_between_random_times(law, sde, a, b, seed):
    """Gaussian.pf_ode_map(a -> b) = dopri5 of the PF-ODE with the exact score, either way."""
    assume(abs(a - b) > 1e-6)
    x_a = law.marginal(sde, a).sample(4, generator=torch.Generator().manual_seed(seed))
    pf = sde.reverse(lambda x, t: law.score(x, t, sde), probability_flow=True)
    x_b = solve_ode(lambda t, x: pf.sde(x, t)[0], x_a, torch.tensor([a, b], dtype=F64))[-1]
    scale = 1.0 + x_b.abs().max()
    assert torch.allclose(law.pf_ode_map(sde, a, b)(x_a), x_b, rtol=0, atol=1e-7 * scale)


@given(law=gaussians(max_dim=4), sde=sdes, a=times, b=times, c=times)
def test_pf_ode_map_is_a_flow(law, sde, a, b, c):
    """map(b -> c) o map(a -> b) = map(a -> c)."""
    ab, bc, ac = (law.pf_ode_map(sde, a, b), law.pf_ode_map(sde, b, c),
                  law.pf_ode_map(sde, a, c))
    assert torch.allclose(bc.A @ ab.A, ac.A, atol=1e-9)
    assert torch.allclose(bc.A @ ab.c + bc.c, ac.c, atol=1e-9 * (1 + ac.c.abs().max()))


@given(law=gaussians(max_dim=4), sde=sdes, s=times, t=times)
def test_reverse_kernel_carries_p_t_back_to_p_s(law, sde, s, t):
    s, t = min(s, t), max(s, t)
    kernel = law.reverse_kernel(sde, s, t)
    p_s = law.marginal(sde, s)
    back = law.marginal(sde, t).pushforward(kernel.A, kernel.c, kernel.cov)
    scale = 1 + p_s.cov.abs().max()
    assert torch.allclose(back.mean, p_s.mean, atol=1e-8 * scale)
    assert torch.allclose(back.cov, p_s.cov, atol=1e-8 * scale)


@settings(max_examples=20)
@given(law=gaussians(max_dim=3), sde=sdes, t=st.floats(0.1, 1.0))
def test_one_unit_matches_the_exact_kernels_to_first_order(law, sde, t):
    """One unit of the C2/C3 stacks from t to t - h (probed as an affine map) against the exact
    PF-ODE map / reverse kernel: they differ by O(h^2), the local error of Euler(-Maruyama), so
    halving h divides each difference (linear part, offset, noise covariance) by about 4."""

    def unit_errors(h, probability_flow):
        reverse = sde.reverse(lambda x, u: law.score(x, u, sde), probability_flow)
        unit = GatedResidualStack(reverse.denoising_field, 1, schedule="euler", span=(t, t - h),
                                  noise=None if probability_flow else sde.diffusion_coef)
        A, c, noise = (x[0] for x in unit.affine_units(law.dim))
        exact = (law.pf_ode_map(sde, t, t - h) if probability_flow
                 else law.reverse_kernel(sde, t - h, t))
        errors = [(A - exact.A).abs().max(), (c - exact.c).abs().max()]
        if not probability_flow:
            errors.append((noise - exact.cov).abs().max())
        return torch.stack(errors)

    for probability_flow in (True, False):
        coarse, fine = unit_errors(1e-3, probability_flow), unit_errors(5e-4, probability_flow)
        for e_coarse, e_fine in zip(coarse, fine, strict=True):
            if e_coarse < 1e-11:  # exact up to rounding (e.g. the mean map of VE)
                continue
            assert 3.5 < float(e_coarse / e_fine) < 4.5


@settings(max_examples=20)
@given(seed=seeds, dim=st.integers(1, 4), batch=st.integers(1, 5))
def test_batched_w2_matches_gaussian_w2(seed, dim, batch):
    g = torch.Generator().manual_seed(seed)
    ps = [Gaussian.random(dim, generator=g) for _ in range(batch)]
    qs = [Gaussian.random(dim, generator=g) for _ in range(batch)]
    batched = gaussian_w2_moments(torch.stack([p.mean for p in ps]),
                                  torch.stack([p.cov for p in ps]),
                                  torch.stack([q.mean for q in qs]),
                                  torch.stack([q.cov for q in qs]))
    single = torch.stack([gaussian_w2(p, q) for p, q in zip(ps, qs, strict=True)])
    assert torch.allclose(batched, single, atol=1e-10)


def test_w2_of_diverged_moments_is_nan_not_an_exception():
    m, S = torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64)
    assert math.isnan(gaussian_w2_moments(m, S * math.inf, m, S))
    assert math.isnan(gaussian_w2_moments(m * math.nan, S, m, S))
    assert float(gaussian_w2_moments(m, 0 * S, m, 0 * S)) == 0.0  # degenerate laws are fine


def test_w2_of_huge_finite_moments_does_not_raise():
    """The moments of a diverging stack (plain gates) are finite but near the largest float:
    the distance is a number or NaN, never a solver failure."""
    m = torch.zeros(2, dtype=F64)
    huge = torch.tensor([[1e307, 1e306], [1e306, 1e-300]], dtype=F64)
    assert math.isnan(gaussian_w2_moments(m, huge, m, torch.eye(2, dtype=F64))) or \
        gaussian_w2_moments(m, huge, m, torch.eye(2, dtype=F64)) > 1e150
    from rdm_dynamics.analysis.gaussian_gates import layer_laws

    law = fixed_law(0, 4)
    for name in ("subvp", "ve"):
        sde = make_sde(name)
        stack = denoising_stack(sde, law, 256, CheckConfig(schedule="plain"),
                                probability_flow=False)
        w2 = layer_laws(stack, law.marginal(sde, sde.T),
                        *law.marginal_moments(sde, stack.times)).w2
        assert not bool((w2[1:] < 1).any())  # diverged: huge or NaN, and no exception


def test_empirical_moments_are_batched_sample_moments():
    x = torch.randn(3, 50, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    mean, cov = empirical_moments(x)
    for i in range(3):
        assert torch.allclose(mean[i], x[i].mean(0))
        assert torch.allclose(cov[i], torch.cov(x[i].T))


@settings(max_examples=10)
@given(law=gaussians(max_dim=3), sde=sdes)
def test_marginal_moments_is_the_batched_marginal(law, sde):
    ts = torch.linspace(1.0, EPS, 7, dtype=F64)
    means, covs = law.marginal_moments(sde, ts)
    for t, m, S in zip(ts, means, covs, strict=True):
        p = law.marginal(sde, t)
        assert torch.allclose(m, p.mean) and torch.allclose(S, p.cov)


@settings(max_examples=10)
@given(law=gaussians(max_dim=3), sde=sdes, stochastic=st.booleans())
def test_propagate_moments_is_the_chain_of_pushforwards(law, sde, stochastic):
    """The stack's exact moment propagation = Gaussian.pushforward unit after unit."""
    stack = denoising_stack(sde, law, 8, EULER, probability_flow=not stochastic)
    p = law.marginal(sde, 1.0)
    means, covs = stack.propagate_moments(p.mean, p.cov)
    A, c, noise = stack.affine_units(law.dim)
    assert bool((noise == 0).all()) != stochastic
    for i in range(8):
        p = p.pushforward(A[i], c[i], noise[i])
        scale = 1 + p.cov.abs().max()
        assert torch.allclose(means[i + 1], p.mean, atol=1e-10 * scale)
        assert torch.allclose(covs[i + 1], p.cov, atol=1e-10 * scale)


def test_sampled_stack_and_exact_reverse_chain_have_their_moments():
    """Statistical cross-check, fixed seed: 20000 samples through a VE reverse-SDE stack of depth
    16 have, at every layer, the moments ``propagate_moments`` gives; 20000 samples of the exact
    reverse chain on the same noise have the moments of p_{t_i}.  max |z| over 2 x 17 x 9
    z-scores against the Bonferroni bound for a family-wise false-alarm rate of 1e-4.  At depth
    16 the stack's law is not p_t, and the same comparison sees that."""
    g = torch.Generator().manual_seed(3)
    law, sde, n = fixed_law(11, 3), make_sde("ve"), 20000
    stack = denoising_stack(sde, law, 16, EULER, probability_flow=False)
    p_T = law.marginal(sde, 1.0)
    x_T = p_T.sample(n, generator=g)
    xi = torch.randn(16, n, 3, generator=g, dtype=F64)
    means, covs = stack.propagate_moments(p_T.mean, p_T.cov)
    exact_means, exact_covs = law.marginal_moments(sde, stack.times)
    sampled = empirical_moments(stack(x_T, xi=xi, return_all=True))
    z_stack = moment_z_scores(*sampled, n, means, covs)
    z_chain = moment_z_scores(*empirical_moments(law.reverse_chain(sde, stack.times, x_T, xi)),
                              n, exact_means, exact_covs)
    bound = norm.isf(1e-4 / (2 * (z_stack.numel() + z_chain.numel())))
    assert z_stack.abs().max() < bound and z_chain.abs().max() < bound
    assert moment_z_scores(*sampled, n, exact_means, exact_covs).abs().max() > bound


def test_moment_z_scores_are_standard_normal_under_the_null():
    """2000 replicates of 200 draws from a correlated Gaussian in R^2: each of the 5 z-scores has
    mean 0 and variance 1 within 5 standard errors (false-alarm rate < 1e-5 per assertion,
    about 1e-4 for the test)."""
    g = torch.Generator().manual_seed(5)
    law = Gaussian(torch.tensor([1.0, -2.0], dtype=F64),
                   torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=F64))
    reps, n = 2000, 200
    x = law.sample(reps * n, generator=g).reshape(reps, n, 2)
    z = moment_z_scores(*empirical_moments(x), n, law.mean, law.cov)
    assert (z.mean(0).abs() < 5 / math.sqrt(reps)).all()
    assert ((z.var(0) - 1).abs() < 5 * math.sqrt(2 / reps)).all()


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_reverse_chain_without_noise_is_the_kernel_mean_map(name):
    law, sde = fixed_law(1, 2), make_sde(name)
    ts = torch.linspace(1.0, EPS, 5, dtype=F64)
    x = law.marginal(sde, 1.0).sample(3, generator=torch.Generator().manual_seed(0))
    chain = law.reverse_chain(sde, ts, x, torch.zeros(4, 3, 2, dtype=F64))
    assert chain.shape == (5, 3, 2)
    for i in range(4):
        assert torch.allclose(chain[i + 1], law.reverse_kernel(sde, ts[i + 1], ts[i])(chain[i]))
