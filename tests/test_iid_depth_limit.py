"""C7 `iid-depth-limit`: kappa against independent integrals, the weight sampler's law, the
torchsde reference, and the check: it passes with the true limit SDE and fails under its negative
controls (a wrong kappa, weights shared across depth)."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate

from rdm_dynamics.analysis.iid_limit import (
    IIDLimitSDE,
    KappaTable,
    TanhWeightLaw,
    brownian_increments,
    iid_stack_output,
    kappa_table,
    layer_noise,
    solve_limit_sde,
    tanh_square_mean,
    tanh_square_mean_slope,
)
from rdm_dynamics.checks import CheckConfig, iid_depth_limit, registry, run_claim
from rdm_dynamics.stats import jackknife_se, mean_se

F64 = torch.float64
SMALL = CheckConfig(depth=128, quick=True)


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# kappa
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("q", [1e-4, 0.01, 0.3, 1.0, 4.0, 25.0, 64.0])
def test_kappa_matches_adaptive_quadrature(q):
    s = math.sqrt(q)
    exact, _ = integrate.quad(lambda x: math.tanh(s * x) ** 2 * math.exp(-x * x / 2)
                              / math.sqrt(2 * math.pi), -12, 12, points=[0.0], limit=400,
                              epsabs=1e-15, epsrel=1e-13)
    assert abs(float(tanh_square_mean(q)) - exact) < 1e-13


@pytest.mark.parametrize("q", [0.05, 0.5, 3.0])
def test_kappa_matches_monte_carlo_of_tanh_squared(q):
    xi = torch.randn(400_000, generator=generator(1), dtype=F64)
    m, se = mean_se(torch.tanh(math.sqrt(q) * xi) ** 2)
    assert abs(float(tanh_square_mean(q)) - m) < 5 * se


def test_kappa_small_and_large_variance_expansions():
    """tanh^2 x = x^2 - 2 x^4/3 + 17 x^6/45 - ..., E xi^{2k} = (2k-1)!!: K = q - 2 q^2 + 17 q^3 / 3
    + O(q^4); for large q, K = 1 - E sech^2(sqrt(q) xi) = 1 - sqrt(2 / (pi q)) + O(q^{-3/2})."""
    for q in (1e-3, 1e-2):
        assert abs(float(tanh_square_mean(q)) - (q - 2 * q**2 + 17 * q**3 / 3)) < 80 * q**4
    for q in (1e3, 1e4):
        assert abs(float(tanh_square_mean(q)) - (1 - math.sqrt(2 / (math.pi * q)))) < 2 * q**-1.5


def test_kappa_slope_is_the_derivative_in_the_standard_deviation():
    s, h = np.array([0.1, 0.7, 2.0, 5.0]), 1e-5
    fd = (tanh_square_mean((s + h) ** 2) - tanh_square_mean((s - h) ** 2)) / (2 * h)
    np.testing.assert_allclose(tanh_square_mean_slope(s), fd, rtol=1e-7, atol=1e-9)


def test_table_interpolates_the_quadrature_on_and_beyond_its_grid():
    table = KappaTable()
    q = torch.cat([torch.rand(5000, generator=generator(2), dtype=F64) ** 2 * 64,
                   torch.tensor([0.0, 1e-12, 63.99, 64.01, 400.0], dtype=F64)])
    err = (table(q) - torch.as_tensor(tanh_square_mean(q.numpy()))).abs().max()
    assert err < 1e-8


def test_table_gives_nan_for_a_nan_variance_and_one_at_infinity():
    """A diverged state (NaN) is measured as NaN, not turned into an index error; q = inf is
    tanh^2 = 1."""
    q = torch.tensor([0.5, math.nan, math.inf, 100.0], dtype=F64)
    out = kappa_table()(q)
    assert out.isnan().tolist() == [False, True, False, False]
    assert out[2] == 1.0 and out[0] == pytest.approx(float(tanh_square_mean(0.5)), abs=1e-9)


@given(st.floats(0.0, 50.0), st.floats(0.0, 50.0))
def test_kappa_is_increasing_below_one_and_below_q(a, b):
    lo, hi = sorted((a, b))
    k_lo, k_hi = tanh_square_mean(lo), tanh_square_mean(hi)
    assert 0.0 <= k_lo <= k_hi < 1.0
    assert k_lo <= lo + 1e-15  # tanh^2 x <= x^2


# ------------------------------------------------------------------------------------------------
# Sigma = kappa I, and the coupled weight draws
# ------------------------------------------------------------------------------------------------

LAW = TanhWeightLaw(dim=3, weight_std=1.5, bias_std=0.5)


@pytest.mark.parametrize("z", [[0.3, -0.2, 0.9], [2.0, 0.0, 0.0]])
def test_second_moment_of_the_branch_is_kappa_times_identity(z):
    """E F = 0 and E F F^T = kappa(|z|) I, by Monte Carlo over fresh weight draws."""
    n = 200_000
    z = torch.tensor(z, dtype=F64)
    W, b = LAW.draw(n, generator(3))
    F = torch.tanh((W @ z) + b)  # (n, d)
    kappa = float(LAW.kappa(z.norm()))
    for j in range(3):
        m, se = mean_se(F[:, j])
        assert abs(m) < 5 * se
        for k in range(3):
            m, se = mean_se(F[:, j] * F[:, k])
            assert abs(m - (kappa if j == k else 0.0)) < 5 * se, (j, k)


@given(st.lists(st.floats(-3, 3), min_size=3, max_size=3),
       st.lists(st.floats(-3, 3), min_size=3, max_size=3), st.integers(0, 100))
def test_coupled_draw_makes_the_standardised_preactivation_the_given_noise(z, xi, seed):
    z, xi = torch.tensor([z], dtype=F64), torch.tensor([xi], dtype=F64)
    W, b = LAW.draw_coupled(z, xi, generator(seed))
    u = (W @ z.unsqueeze(-1)).squeeze(-1) + b
    q = LAW.preactivation_variance((z * z).sum(-1, keepdim=True))
    torch.testing.assert_close(u / q.sqrt(), xi, atol=1e-12, rtol=1e-12)


def test_coupled_draws_have_the_weight_law_whatever_the_state():
    """For xi ~ N(0, I) the conditioned draws are N(0, s_w^2/d) and N(0, s_b^2) entries with
    the same moments for every state z, uncorrelated entries."""
    n, g = 100_000, generator(4)
    for z in ([0.1, 0.0, 0.0], [1.0, -2.0, 0.5]):
        z = torch.tensor(z, dtype=F64).expand(n, 3)
        W, b = LAW.draw_coupled(z, torch.randn(n, 3, generator=g, dtype=F64), g)
        Wf = W.reshape(n, -1) * math.sqrt(LAW.dim) / LAW.weight_std
        bf = b / LAW.bias_std
        x = torch.cat([Wf, bf], -1).numpy()
        cov = np.cov(x, rowvar=False)
        assert np.abs(x.mean(0)).max() < 5 / math.sqrt(n)
        assert np.abs(cov - np.eye(x.shape[1])).max() < 6 * math.sqrt(2 / n)


def test_coupled_stack_has_the_law_of_the_uncoupled_stack():
    """Coupling the draws to a Brownian path changes no expectation of z_L (fresh draws with
    independent samples against coupled ones, 4 standard errors)."""
    law, n, L = iid_depth_limit.LAW, 20_000, 16
    g = generator(5)
    z0 = 0.3 * torch.randn(n, law.dim, generator=g, dtype=F64) / math.sqrt(law.dim)
    xi = layer_noise(brownian_increments(n, law.dim, L, g), L)
    coupled = iid_stack_output(law, z0, L, "inv-sqrt", xi=xi, generator=g)
    fresh = iid_stack_output(law, z0, L, "inv-sqrt", generator=g)
    a, b = iid_depth_limit.test_functions(coupled), iid_depth_limit.test_functions(fresh)
    for j in range(a.shape[1]):
        (ma, sa), (mb, sb) = mean_se(a[:, j]), mean_se(b[:, j])
        assert abs(ma - mb) < 4 * math.hypot(sa, sb), j


def test_layer_noise_is_standard_normal_block_sums_of_one_path():
    inc = brownian_increments(4000, 2, 64, generator(6))
    xi = layer_noise(inc, 16)
    assert xi.shape == (16, 4000, 2)
    torch.testing.assert_close(xi[3] / 4, inc[12:16].sum(0))
    assert abs(float(xi.var()) - 1) < 0.03 and abs(float(xi.mean())) < 0.02
    with pytest.raises(ValueError, match="does not divide"):
        layer_noise(inc, 48)


# ------------------------------------------------------------------------------------------------
# The torchsde reference
# ------------------------------------------------------------------------------------------------

def test_reference_with_constant_kappa_is_scaled_brownian_motion():
    """s_w = 0: kappa = K(s_b^2) is constant, and Euler-Maruyama is exact on the given path."""
    law = TanhWeightLaw(dim=2, weight_std=0.0, bias_std=0.7)
    inc = brownian_increments(50, 2, 32, generator(7))
    z0 = torch.randn(50, 2, generator=generator(8), dtype=F64)
    z1 = solve_limit_sde(IIDLimitSDE(law), z0, inc, 16)
    expected = z0 + math.sqrt(float(tanh_square_mean(0.49))) * inc.sum(0)
    torch.testing.assert_close(z1, expected, atol=1e-8, rtol=0)


def test_reference_is_euler_maruyama_on_the_given_increments():
    law = iid_depth_limit.LAW
    inc = brownian_increments(20, law.dim, 8, generator(9))
    z = z0 = 0.1 * torch.randn(20, law.dim, generator=generator(10), dtype=F64)
    for dB in inc:
        q = law.preactivation_variance((z * z).sum(-1, keepdim=True))
        z = z + torch.as_tensor(tanh_square_mean(q.numpy())).sqrt() * dB
    torch.testing.assert_close(solve_limit_sde(IIDLimitSDE(law), z0, inc, 8), z,
                               atol=1e-8, rtol=0)


def test_jackknife_of_a_mean_is_its_standard_error():
    x = np.random.default_rng(0).standard_normal((4000, 1))
    _, se = mean_se(x)
    assert abs(jackknife_se(x, lambda m: m[0], batches=40) / se - 1) < 0.3


# ------------------------------------------------------------------------------------------------
# The check
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def true_result():
    return run_claim(iid_depth_limit, SMALL)


def test_registered_as_c7_and_independent_of_the_gating():
    assert registry()["iid-depth-limit"] is iid_depth_limit and iid_depth_limit.CLAIM == "C7"
    assert iid_depth_limit.USES_SCHEDULE is False
    a = run_claim(iid_depth_limit, CheckConfig(depth=32, quick=True, schedule="plain"))
    b = run_claim(iid_depth_limit, CheckConfig(depth=32, quick=True, schedule="rdm"))
    assert a.metrics == b.metrics and "--schedule does not change it" in a.summary


def test_true_limit_passes_at_weak_order_one(true_result):
    r, m = true_result, true_result.metrics
    assert r.passed, (r.verdict.failed, r.summary)
    assert abs(m["weak_order"] - 1) < 0.2 and m["weak_order_se"] > 0
    assert m["weak_error"] > 3 * m["weak_error_se"]  # resolved above the Monte-Carlo floor
    assert r.expected["weak_order"] == pytest.approx([0.75 + m["weak_order_se"],
                                                      1.25 - m["weak_order_se"]])
    assert abs(m["inv_depth_collapse_order"] - 0.5) < 0.05
    assert m["plain_growth_order"] > 0.9 and m["plain_weak_order"] < 0
    assert m["reference_correction"] < m["weak_error"]


def _kappa_of(law):
    table = kappa_table()
    return lambda sq: table(law.preactivation_variance(sq))


@pytest.mark.parametrize("fault", ["missing-sqrt", "variance-not-over-d", "kappa-linearised",
                                   "shared-weights"])
def test_negative_controls_fail(fault):
    """A diffusion kappa instead of sqrt(kappa); kappa with s_w^2 instead of s_w^2/d; kappa
    replaced by its linearisation q (tanh taken as the identity); one weight draw reused at
    every layer.  Each makes the measured order of the weak distance fail."""
    law = iid_depth_limit.LAW
    kwargs = {
        "missing-sqrt": {"diffusion": _kappa_of(law)},
        "variance-not-over-d": {"reference_law": dataclasses.replace(
            law, weight_std=law.weight_std * math.sqrt(law.dim))},
        "kappa-linearised": {"diffusion": lambda sq: law.preactivation_variance(sq).sqrt()},
        "shared-weights": {"weights": "shared"},
    }[fault]
    r = run_claim(iid_depth_limit, SMALL, **kwargs)
    assert not r.passed
    assert "weak_order" in r.verdict.failed or "weak_order_span" in r.verdict.failed, \
        r.verdict.failed
