"""The SDE core: closed forms, Monte Carlo agreement, broadcasting, the reverse process."""

import math

import pytest
import torch
import torchsde
from hypothesis import given
from hypothesis import strategies as st
from strategies import sdes, times

from rdm_dynamics.sde import SDES, VESDE, VPSDE, SubVPSDE, make_sde

ALL = [VPSDE(), SubVPSDE(), VESDE()]
IDS = [s.name for s in ALL]


def integrate(fn, a, b, n=20001):
    """Simpson's rule for a scalar function of a float64 tensor."""
    t = torch.linspace(a, b, n, dtype=torch.float64)
    w = torch.ones(n, dtype=torch.float64)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return float((fn(t) * w).sum() * (b - a) / (3 * (n - 1)))


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_closed_forms_solve_the_moment_odes(sde):
    """m(t) = exp(int_0^t f) and v(t) = int_0^t (m(t)/m(u))^2 g(u)^2 du (quadrature)."""
    for t in (0.05, 0.3, 0.7, 1.0):
        log_m = integrate(sde.drift_coef, 0.0, t)
        assert math.isclose(float(sde.log_mean_coef(torch.tensor(t, dtype=torch.float64))),
                            log_m, rel_tol=1e-9, abs_tol=1e-12)
        lm_t = float(sde.log_mean_coef(torch.tensor(t, dtype=torch.float64)))
        v = integrate(lambda u, lm_t=lm_t: torch.exp(2 * (lm_t - sde.log_mean_coef(u)))
                      * sde.diffusion_coef(u) ** 2, 0.0, t)
        v_closed = float(sde.marginal_var(torch.tensor(t, dtype=torch.float64)))
        assert math.isclose(v_closed, v, rel_tol=1e-7), (t, v_closed, v)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_known_values(sde):
    t0 = torch.tensor(0.0, dtype=torch.float64)
    assert float(sde.marginal_var(t0)) == 0.0 and float(sde.mean_coef(t0)) == 1.0
    if isinstance(sde, VESDE):
        t = torch.tensor(0.4, dtype=torch.float64)
        sigma = 0.01 * (50 / 0.01) ** 0.4
        exact = math.sqrt(sigma**2 - 0.01**2)
        assert math.isclose(float(sde.marginal_std(t)), exact, rel_tol=1e-12)
    else:
        m1 = math.exp(-0.25 * 19.9 - 0.05)
        assert math.isclose(float(sde.mean_coef(torch.tensor(1.0, dtype=torch.float64))), m1,
                            rel_tol=1e-12)


class _Forward(torch.nn.Module):
    """The forward SDE in torchsde's interface (additive noise: g depends on t only)."""

    noise_type, sde_type = "additive", "ito"

    def __init__(self, sde, d):
        super().__init__()
        self.sde_, self.d = sde, d

    def f(self, t, y):
        return self.sde_.sde(y, t)[0]

    def g(self, t, y):
        g = self.sde_.diffusion_coef(torch.as_tensor(t, dtype=y.dtype))
        return (g * torch.eye(self.d, dtype=y.dtype)).expand(y.shape[0], -1, -1)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_marginals_match_monte_carlo_of_the_forward_sde(sde):
    """torchsde (SRK, strong order 1.5 for additive noise) simulates the forward SDE from fixed x0;
    sample mean and variance at t agree with marginal_prob within 4.5 standard errors
    (false-alarm rate < 1e-5 per comparison; fixed seed)."""
    n, d = 4000, 2
    x0 = torch.tensor([[1.5, -0.5]], dtype=torch.float64).expand(n, d)
    ts = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    torch.manual_seed(0)
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(n, d), dtype=torch.float64,
                                   levy_area_approximation="space-time", entropy=1)
    xs = torchsde.sdeint(_Forward(sde, d), x0, ts, bm=bm, method="srk", dt=5e-3)
    for k, t in enumerate(ts[1:], start=1):
        mean, std = sde.marginal_prob(x0, t)
        sample = xs[k]
        var = std.pow(2) * torch.ones(d, dtype=torch.float64)
        mean_se = (var / n).sqrt()
        assert ((sample.mean(0) - mean[0]).abs() <= 4.5 * mean_se).all()
        var_hat = sample.var(0)
        var_se = var * math.sqrt(2 / (n - 1))
        assert ((var_hat - var).abs() <= 4.5 * var_se).all(), (t, var_hat, var)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_transition_composes(sde):
    """x_t | x_s composed with x_s | x_0 equals x_t | x_0 (mean coefficient and variance)."""
    s, t = 0.3, 0.8
    r_s, k_s = sde.transition_coefs(0.0, s)
    r_t, k_t = sde.transition_coefs(s, t)
    r, k = sde.transition_coefs(0.0, t)
    assert torch.isclose(r_s * r_t, r, rtol=1e-12)
    assert torch.isclose(r_t**2 * k_s**2 + k_t**2, k**2, rtol=1e-10)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 6, 6), (2, 3, 1, 4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_broadcasting_dtype_and_time_forms(sde, shape, dtype):
    x = torch.randn(shape, dtype=dtype)
    B = shape[0]
    t_vec = torch.linspace(0.1, 0.9, B, dtype=dtype)
    for t in (0.5, torch.tensor(0.5, dtype=dtype), t_vec):
        drift, g = sde.sde(x, t)
        mean, std = sde.marginal_prob(x, t)
        for out in (drift, mean):
            assert out.shape == x.shape and out.dtype == dtype
        for out in (g, std):
            assert out.dtype == dtype
            assert torch.broadcast_shapes(out.shape, x.shape) == x.shape
    drift, _ = sde.sde(x, t_vec)
    for b in range(B):  # a (B,) time equals per-sample scalar times
        assert torch.allclose(drift[b], sde.sde(x[b : b + 1], float(t_vec[b]))[0][0], rtol=1e-5)
    z = sde.prior_sampling(shape, dtype=dtype)
    assert z.shape == shape and z.dtype == dtype
    assert sde.prior_logp(z).shape == (B,)


@given(sde=sdes, d=st.integers(1, 6))
def test_prior_logp_is_the_gaussian_density(sde, d):
    z = torch.randn(3, d, dtype=torch.float64)
    sigma = sde.prior_std()
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64),
                                        torch.tensor(sigma, dtype=torch.float64))
    expected = normal.log_prob(z).sum(1)
    assert torch.allclose(sde.prior_logp(z), expected, rtol=1e-12)


@given(sde=sdes, t=times)
def test_reverse_drifts(sde, t):
    """reverse: f - g^2 s; probability flow: f - g^2 s / 2 and zero diffusion."""
    x = torch.randn(4, 3, dtype=torch.float64)
    score = lambda x, t: -x  # noqa: E731
    f, g = sde.sde(x, t)
    rev, rev_g = sde.reverse(score).sde(x, t)
    pf, pf_g = sde.reverse(score, probability_flow=True).sde(x, t)
    assert torch.allclose(rev, f + g**2 * x) and torch.allclose(rev_g, g)
    assert torch.allclose(pf, f + 0.5 * g**2 * x) and float(pf_g.abs().max()) == 0.0
    assert torch.allclose(sde.reverse(score, True).denoising_field(x, t), -pf)


def test_make_sde_and_defaults():
    assert set(SDES) == {"vp", "subvp", "ve"}
    vp = make_sde("vp")
    assert (vp.beta_min, vp.beta_max, vp.T) == (0.1, 20.0, 1.0)
    ve = make_sde("ve")
    assert (ve.sigma_min, ve.sigma_max) == (0.01, 50.0)
    with pytest.raises(ValueError, match="unknown SDE"):
        make_sde("bogus")
