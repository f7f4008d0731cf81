"""Exact laws: scores, diffused marginals, the PF-ODE flow map and the reverse kernel."""

import math

import pytest
import torch
from hypothesis import given
from strategies import gaussians, mixtures, sdes, seeds, times

from rdm_dynamics.laws import Gaussian, GaussianMixture, gaussian_w2
from rdm_dynamics.sde import VESDE, VPSDE, SubVPSDE
from rdm_dynamics.solvers import solve_ode


def autograd_score(log_prob, x):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_prob(x).sum(), x)
    return grad


@given(law=gaussians(), sde=sdes, t=times, seed=seeds)
def test_gaussian_score_is_grad_log_density(law, sde, t, seed):
    g = torch.Generator().manual_seed(seed)
    x = law.marginal(sde, t).sample(16, generator=g)
    expected = autograd_score(lambda x: law.marginal_log_prob(x, t, sde), x)
    assert torch.allclose(law.score(x, t, sde), expected, rtol=1e-9, atol=1e-9)


@given(law=mixtures(), sde=sdes, t=times, seed=seeds)
def test_mixture_score_is_grad_log_density(law, sde, t, seed):
    g = torch.Generator().manual_seed(seed)
    x = law.marginal(sde, t).sample(16, generator=g)
    expected = autograd_score(lambda x: law.marginal_log_prob(x, t, sde), x)
    assert torch.allclose(law.score(x, t, sde), expected, rtol=1e-8, atol=1e-8)


@given(law=mixtures(), seed=seeds)
def test_mixture_log_prob_against_torch_distributions(law, seed):
    g = torch.Generator().manual_seed(seed)
    x = law.sample(8, generator=g)
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=law.weights),
        torch.distributions.MultivariateNormal(law.means, covariance_matrix=law.covs))
    assert torch.allclose(law.log_prob(x), ref.log_prob(x), rtol=1e-9, atol=1e-9)


@given(law=gaussians(), sde=sdes, t=times)
def test_gaussian_marginal_closed_form(law, sde, t):
    """p_t = N(m mu, m^2 Sigma + v I), and the mixture of one component agrees."""
    tt = torch.tensor(t, dtype=torch.float64)
    m, v = sde.mean_coef(tt), sde.marginal_var(tt)
    pt = law.marginal(sde, t)
    assert torch.allclose(pt.mean, m * law.mean, rtol=1e-12)
    assert torch.allclose(pt.cov, m**2 * law.cov + v * torch.eye(law.dim, dtype=torch.float64),
                          rtol=1e-10, atol=1e-10)
    mix = GaussianMixture(torch.ones(1, dtype=torch.float64), law.mean[None], law.cov[None])
    x = pt.sample(5)
    assert torch.allclose(mix.marginal_log_prob(x, t, sde), pt.log_prob(x), rtol=1e-10)


def test_sampling_matches_moments():
    """Sample mean and covariance of Gaussian and mixture samplers within 5 standard errors
    (per-entry false-alarm rate < 1e-6; fixed seed)."""
    g = torch.Generator().manual_seed(1)
    law = GaussianMixture(torch.tensor([0.3, 0.7], dtype=torch.float64),
                          torch.tensor([[2.0, 0.0], [-1.0, 1.0]], dtype=torch.float64),
                          torch.stack([torch.eye(2, dtype=torch.float64) * 0.5,
                                       torch.tensor([[1.0, 0.3], [0.3, 0.4]],
                                                    dtype=torch.float64)]))
    n = 50_000
    x = law.sample(n, generator=g)
    mean = (law.weights[:, None] * law.means).sum(0)
    second = (law.weights[:, None, None] * (law.covs + law.means[:, :, None] * law.means[:, None])
              ).sum(0)
    cov = second - mean[:, None] * mean[None]
    assert ((x.mean(0) - mean).abs() <= 5 * (cov.diagonal() / n).sqrt()).all()
    assert ((torch.cov(x.T) - cov).abs() <= 5 * 3 * cov.diagonal().max() / math.sqrt(n)).all()


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_gaussian_pf_ode_map_solves_the_pf_ode(sde):
    """The closed-form flow map agrees with torchdiffeq dopri5 on the PF-ODE to 1e-8."""
    g = torch.Generator().manual_seed(3)
    d = 3
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    law = Gaussian(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64),
                   (Q * torch.tensor([0.1, 1.0, 2.5], dtype=torch.float64)) @ Q.T)
    pf = sde.reverse(lambda x, t: law.score(x, t, sde), probability_flow=True)
    x_T = law.marginal(sde, 1.0).sample(8, generator=g)
    ts = torch.tensor([1.0, 0.5, 0.1, 1e-3], dtype=torch.float64)
    path = solve_ode(lambda t, x: pf.sde(x, t)[0], x_T, ts, rtol=1e-11, atol=1e-12)
    for k in range(1, len(ts)):
        exact = law.pf_ode_map(sde, 1.0, float(ts[k]))(x_T)
        scale = 1 + exact.abs().max()
        assert (path[k] - exact).abs().max() <= 1e-8 * scale
    # and the map runs both ways: eps -> T inverts T -> eps
    back = law.pf_ode_map(sde, 1e-3, 1.0)(law.pf_ode_map(sde, 1.0, 1e-3)(x_T))
    assert torch.allclose(back, x_T, atol=1e-10)


@given(law=gaussians(max_dim=4), sde=sdes, t=times)
def test_pf_ode_map_pushes_p_a_to_p_b(law, sde, t):
    a, b = 1.0, min(t, 0.999)
    A = law.pf_ode_map(sde, a, b)
    pushed = law.marginal(sde, a).pushforward(A.A, A.c)
    target = law.marginal(sde, b)
    assert torch.allclose(pushed.mean, target.mean, atol=1e-9)
    assert torch.allclose(pushed.cov, target.cov, rtol=1e-8, atol=1e-9)


@given(law=gaussians(max_dim=4), sde=sdes, s=times, t=times)
def test_reverse_kernel_is_bayes(law, sde, s, t):
    """x_s | x_t from the joint Gaussian of (x_s, x_t) by block conditioning."""
    s, t = min(s, t), max(s, t)
    if t - s < 1e-3:
        t = s + 1e-3
    ps = law.marginal(sde, s)
    r, k = sde.transition_coefs(s, t)
    d = law.dim
    S_ss = ps.cov
    S_ts = r * S_ss
    S_tt = r**2 * S_ss + k**2 * torch.eye(d, dtype=torch.float64)
    K = S_ts.T @ torch.linalg.inv(S_tt)  # Cov(x_s, x_t) Var(x_t)^{-1}
    kern = law.reverse_kernel(sde, s, t)
    assert torch.allclose(kern.A, K, rtol=1e-7, atol=1e-9)
    assert torch.allclose(kern.c, ps.mean - K @ (r * ps.mean), rtol=1e-7, atol=1e-8)
    assert torch.allclose(kern.cov, S_ss - K @ S_ts, rtol=1e-6, atol=1e-9)


def test_gaussian_w2_closed_forms():
    I = torch.eye(3, dtype=torch.float64)
    p = Gaussian(torch.zeros(3, dtype=torch.float64), 4 * I)
    q = Gaussian(torch.ones(3, dtype=torch.float64), I)
    # commuting covariances: W2^2 = |dmu|^2 + sum (sqrt(l_p) - sqrt(l_q))^2 = 3 + 3
    assert math.isclose(float(gaussian_w2(p, q)), math.sqrt(6.0), rel_tol=1e-12)
    assert float(gaussian_w2(q, q)) < 1e-7
    fitted = Gaussian.fit(q.sample(20_000, generator=torch.Generator().manual_seed(0)))
    assert float(gaussian_w2(fitted, q)) < 0.05


def test_bad_laws_are_rejected():
    with pytest.raises(ValueError):
        Gaussian(torch.zeros(2), torch.zeros(2, 2))
    with pytest.raises(ValueError):
        GaussianMixture(torch.ones(2), torch.zeros(3, 2), torch.eye(2).expand(3, 2, 2))
