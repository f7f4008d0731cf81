"""Exact Gaussian transports computed two ways, and the moment machinery of C2/C3.

Hypothesis draws random Gaussian laws (dimension, mean, eigenvalues, rotation from a seed),
random SDEs and random times in [eps, T]; every property compares two independent computations.
"""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rdm_dynamics.checks import CheckConfig
from rdm_dynamics.checks._denoising import EPS, denoising_stack
from rdm_dynamics.laws import (
    Gaussian,
    empirical_moments,
    gaussian_w2,
    gaussian_w2_moments,
    moment_z_scores,
)
from rdm_dynamics.paths import solve_ode
from rdm_dynamics.sde import make_sde
from rdm_dynamics.stack import GatedResidualStack

F64 = torch.float64

sde_names = st.sampled_from(["vp", "subvp", "ve"])
seeds = st.integers(0, 2**31 - 1)
times = st.floats(EPS, 1.0)


def random_law(seed: int, dim: int) -> Gaussian:
    g = torch.Generator().manual_seed(seed)
    return Gaussian.random(dim, eigen_range=(0.1, 3.0), mean_scale=2.0, generator=g)


@settings(max_examples=15, deadline=None)
@given(seed=seeds, dim=st.integers(1, 3), name=sde_names, a=times, b=times)
def test_pf_ode_map_closed_form_matches_dopri5(seed, dim, name, a, b):
    """Gaussian.pf_ode_map(a -> b) = dopri5 of the PF-ODE with the exact score (either way)."""
    assume(abs(a - b) > 1e-6)
    law, sde = random_law(seed, dim), make_sde(name)
    x_a = law.marginal(sde, a).sample(4, generator=torch.Generator().manual_seed(seed))
    reverse = sde.reverse(lambda x, t: law.score(x, t, sde), probability_flow=True)
    x_b = solve_ode(lambda t, x: reverse.sde(x, t)[0], x_a, torch.tensor([a, b], dtype=F64),
                    stay_inside=True)[-1]
    scale = 1.0 + x_b.abs().max()
    assert torch.allclose(law.pf_ode_map(sde, a, b)(x_a), x_b, rtol=0, atol=1e-7 * scale)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, dim=st.integers(1, 4), name=sde_names, a=times, b=times, c=times)
def test_pf_ode_map_is_a_flow(seed, dim, name, a, b, c):
    """Flow property: map(b -> c) o map(a -> b) = map(a -> c), and it carries p_a to p_b."""
    law, sde = random_law(seed, dim), make_sde(name)
    ab, bc, ac = (law.pf_ode_map(sde, a, b), law.pf_ode_map(sde, b, c),
                  law.pf_ode_map(sde, a, c))
    assert torch.allclose(bc.A @ ab.A, ac.A, atol=1e-9)
    assert torch.allclose(bc.A @ ab.c + bc.c, ac.c, atol=1e-9 * (1 + ac.c.abs().max()))
    p_a, p_b = law.marginal(sde, a), law.marginal(sde, b)
    pushed = p_a.pushforward(ab.A, ab.c)
    assert float(gaussian_w2(pushed, p_b)) <= 1e-6 * (1 + p_b.cov.trace().sqrt())


@settings(max_examples=30, deadline=None)
@given(seed=seeds, dim=st.integers(1, 4), name=sde_names, s=times, t=times)
def test_reverse_kernel_matches_joint_gaussian_conditioning(seed, dim, name, s, t):
    """reverse_kernel (eigenbasis formula) = conditioning the joint Gaussian of (x_s, x_t) with
    full matrices: E[x_s | x_t] = mu_s + r S_s S_t^-1 (x_t - mu_t), Cov = S_s - r^2 S_s S_t^-1 S_s;
    and the kernel carries p_t back to p_s."""
    s, t = min(s, t), max(s, t)
    if t - s < 1e-6:
        t = min(1.0, s + 1e-3)
    law, sde = random_law(seed, dim), make_sde(name)
    p_s, p_t = law.marginal(sde, s), law.marginal(sde, t)
    r, _ = sde.transition_coefs(s, t)
    gain = r * torch.linalg.solve(p_t.cov, p_s.cov).T  # r S_s S_t^-1 (all symmetric)
    kernel = law.reverse_kernel(sde, s, t)
    scale = 1 + p_s.cov.abs().max()
    assert torch.allclose(kernel.A, gain, atol=1e-9 * scale)
    assert torch.allclose(kernel.c, p_s.mean - gain @ p_t.mean, atol=1e-9 * scale)
    assert torch.allclose(kernel.cov, p_s.cov - r * gain @ p_s.cov, atol=1e-9 * scale)
    back = p_t.pushforward(kernel.A, kernel.c, kernel.cov)
    assert torch.allclose(back.mean, p_s.mean, atol=1e-8 * scale)
    assert torch.allclose(back.cov, p_s.cov, atol=1e-8 * scale)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, dim=st.integers(1, 3), name=sde_names, t=st.floats(0.1, 1.0))
def test_one_unit_matches_the_exact_kernels_to_first_order(seed, dim, name, t):
    """One unit of the C2/C3 stacks from t to t - h: its affine map differs from the exact
    PF-ODE map / reverse kernel by O(h^2) (the local error of Euler(-Maruyama)): halving h
    divides the difference by about 4."""
    law, sde = random_law(seed, dim), make_sde(name)

    def unit_errors(h, probability_flow):
        reverse = sde.reverse(lambda x, u: law.score(x, u, sde), probability_flow)
        unit = GatedResidualStack(reverse.denoising_field, 1, gating="euler", span=(t, t - h),
                                  noise=None if probability_flow else sde.diffusion_coef)
        A, c, noise = (x[0] for x in unit.affine_units(dim))
        exact = (law.pf_ode_map(sde, t, t - h) if probability_flow
                 else law.reverse_kernel(sde, t - h, t))
        errors = [(A - exact.A).abs().max(), (c - exact.c).abs().max()]
        if not probability_flow:
            errors.append((noise - exact.cov).abs().max())
        return torch.stack(errors)

    for probability_flow in (True, False):
        h = 1e-3
        coarse, fine = unit_errors(h, probability_flow), unit_errors(h / 2, probability_flow)
        for e_coarse, e_fine in zip(coarse, fine, strict=True):
            if e_coarse < 1e-11:  # exact up to rounding (e.g. the mean map of VE)
                continue
            assert 3.5 < float(e_coarse / e_fine) < 4.5


@settings(max_examples=25, deadline=None)
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
    assert float(gaussian_w2(ps[0], ps[0])) < 1e-6


def test_w2_of_diverged_moments_is_nan_not_an_exception():
    m, S = torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64)
    assert math.isnan(gaussian_w2_moments(m, S * math.inf, m, S))
    assert math.isnan(gaussian_w2_moments(m * math.nan, S, m, S))


def test_empirical_moments_match_torch_cov():
    x = torch.randn(3, 50, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    mean, cov = empirical_moments(x)
    for i in range(3):
        assert torch.allclose(mean[i], x[i].mean(0))
        assert torch.allclose(cov[i], torch.cov(x[i].T))
    fitted = Gaussian.fit(x[0])
    assert torch.allclose(fitted.cov, torch.cov(x[0].T))


@settings(max_examples=10, deadline=None)
@given(seed=seeds, name=sde_names)
def test_marginal_moments_is_the_batched_marginal(seed, name):
    law, sde = random_law(seed, 3), make_sde(name)
    ts = torch.linspace(1.0, EPS, 7, dtype=F64)
    means, covs = law.marginal_moments(sde, ts)
    for t, m, S in zip(ts, means, covs, strict=True):
        p = law.marginal(sde, t)
        assert torch.allclose(m, p.mean) and torch.allclose(S, p.cov)


@settings(max_examples=10, deadline=None)
@given(seed=seeds, name=sde_names, stochastic=st.booleans())
def test_propagate_moments_is_the_chain_of_pushforwards(seed, name, stochastic):
    """The stack's exact moment propagation = Gaussian.pushforward unit after unit."""
    law, sde = random_law(seed, 3), make_sde(name)
    stack = denoising_stack(sde, law, 8, CheckConfig(gating="euler"),
                            probability_flow=not stochastic)
    p = law.marginal(sde, 1.0)
    means, covs = stack.propagate_moments(p.mean, p.cov)
    A, c, noise = stack.affine_units(3)
    for i in range(8):
        p = p.pushforward(A[i], c[i], noise[i])
        assert torch.allclose(means[i + 1], p.mean) and torch.allclose(covs[i + 1], p.cov)


def test_sampled_stack_and_exact_reverse_chain_have_the_propagated_moments():
    """Statistical cross-check with a fixed seed: 20000 samples through a VE reverse-SDE stack
    of depth 16 have, at every layer, the moments ``propagate_moments`` gives; 20000 samples of
    the exact reverse chain have the moments of p_{t_i}.  max |z| over 2 x 17 x 9 z-scores is
    compared with the Bonferroni bound for a family-wise false-alarm rate of 1e-4."""
    from scipy.stats import norm

    g = torch.Generator().manual_seed(3)
    law, sde, n = random_law(11, 3), make_sde("ve"), 20000
    stack = denoising_stack(sde, law, 16, CheckConfig(gating="euler"), probability_flow=False)
    p_T = law.marginal(sde, 1.0)
    x_T = p_T.sample(n, generator=g)
    xi = torch.randn(16, n, 3, generator=g, dtype=F64)
    means, covs = stack.propagate_moments(p_T.mean, p_T.cov)
    exact_means, exact_covs = law.marginal_moments(sde, stack.times)
    z_stack = moment_z_scores(*empirical_moments(stack(x_T, xi=xi, return_all=True)), n,
                              means, covs)
    z_chain = moment_z_scores(*empirical_moments(law.reverse_chain(sde, stack.times, x_T, xi)),
                              n, exact_means, exact_covs)
    bound = norm.isf(1e-4 / (2 * (z_stack.numel() + z_chain.numel())))
    assert z_stack.abs().max() < bound and z_chain.abs().max() < bound
    # the propagated law is not p_t at depth 16: the cross-check can tell them apart
    z_wrong = moment_z_scores(*empirical_moments(stack(x_T, xi=xi, return_all=True)), n,
                              exact_means, exact_covs)
    assert z_wrong.abs().max() > bound


def test_moment_z_scores_are_standard_normal_under_the_null():
    """2000 replicates of 200 draws from a correlated Gaussian in R^2: the 5 z-scores have mean
    0 and variance 1 within 5 standard errors (false-alarm rate < 1e-5 for each of the 10
    assertions, about 1e-4 together)."""
    g = torch.Generator().manual_seed(5)
    law = Gaussian(torch.tensor([1.0, -2.0], dtype=F64),
                   torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=F64))
    reps, n = 2000, 200
    x = law.sample(reps * n, generator=g).reshape(reps, n, 2)
    z = moment_z_scores(*empirical_moments(x), n, law.mean, law.cov)
    mean_se = 1 / math.sqrt(reps)
    var_se = math.sqrt(2 / reps)
    assert (z.mean(0).abs() < 5 * mean_se).all()
    assert ((z.var(0) - 1).abs() < 5 * var_se).all()


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_exact_reverse_chain_on_a_grid_is_deterministic_given_noise(name):
    law, sde = random_law(1, 2), make_sde(name)
    ts = torch.linspace(1.0, EPS, 5, dtype=F64)
    x = law.marginal(sde, 1.0).sample(3, generator=torch.Generator().manual_seed(0))
    noise = torch.zeros(4, 3, 2, dtype=F64)
    chain = law.reverse_chain(sde, ts, x, noise)
    # with zero noise each step is the kernel's mean map
    k = law.reverse_kernel(sde, ts[1], ts[0])
    assert torch.allclose(chain[1], k(x))
    assert chain.shape == (5, 3, 2)
