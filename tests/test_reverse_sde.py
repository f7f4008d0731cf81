"""C3 `reverse-sde`: the stochastic stack is Euler-Maruyama; the check passes with the true reverse
SDE and fails under every negative control; its reference agrees with torchsde.

As for C2, the check's own code runs on VP with a small ladder (L = 16..128, quick samples) where
the true stack is in its asymptotic regime; the full check runs in ``verify``.
"""

import math

import pytest
import torch
import torchsde

from rdm_dynamics.checks import CheckConfig, registry, reverse_sde, run_claim
from rdm_dynamics.checks.problems import data_laws, denoising_stack, sample_prior, score_fn
from rdm_dynamics.checks.rules import within
from rdm_dynamics.sde import EPS, make_sde
from rdm_dynamics.solvers import TorchsdeReverse

SMALL = CheckConfig(depth=128, ladder=(16, 32, 64, 128), quick=True)
F64 = torch.float64


@pytest.fixture(scope="module")
def true_result():
    return run_claim(reverse_sde, SMALL, sdes=("vp",))


def test_registered_as_c3():
    assert registry()["reverse-sde"] is reverse_sde and reverse_sde.CLAIM == "C3"


def test_strong_and_weak_orders_on_a_small_ladder_are_in_range(true_result):
    r = true_result
    assert r.passed, r.summary
    for name in ("strong_order_vp_gaussian", "strong_order_vp_mixture", "weak_order_vp"):
        assert r.expected[name] == [0.85, 1.15] and 0.85 <= r.metrics[name] <= 1.15
    assert r.expected["layer_w2_order_vp"] == [0.85, None]
    for name in ("layer_w2_order_deep_vp", "weak_order_deep_vp", "strong_order_vp_mixture_span"):
        lo, _ = r.expected[name]  # within 3 standard errors of the band (rules.order_rules)
        assert lo <= 0.85 and r.metrics[name] >= lo
    for name in ("path_bonferroni_p", "torchsde_reference_error", "output_energy_vp",
                 "output_share_z_vp"):  # the independent references are gated
        assert name in r.expected and name not in r.verdict.failed
    assert r.metrics["reference_steps"] == 16 * 128


def test_sampled_figures_carry_standard_errors(true_result):
    m = true_result.metrics
    assert all(k[:-3] in m for k in m if k.endswith("_se"))
    for name in ("strong_error_vp_gaussian", "weak_error_sampled_vp", "layer_w2_max_sampled_vp",
                 "layer_w2_floor_vp", "layer_w2_excess_vp"):
        assert math.isfinite(m[name]) and m[f"{name}_se"] > 0
    assert m["layer_w2_floor_vp"] > 0  # Monte-Carlo floor: exact samples are not exact moments
    assert m["moment_z_max"] <= m["moment_z_bound"]
    assert true_result.expected["moment_z_max"] == [0.0, m["moment_z_bound"]]


@pytest.mark.parametrize("control", [{"score_sign": -1.0}, {"noise_power": 1.0}],
                         ids=["wrong-score-sign", "noise-scaled-by-h"])
def test_negative_controls_fail(control):
    """Wrong score sign: the stack follows another SDE.  Noise g h instead of g sqrt(h): the
    stack's noise vanishes in the limit (the PF-ODE's drift without its 1/2, with no noise), so
    neither its paths nor its laws converge to the reverse SDE's.  Every order fails."""
    r = run_claim(reverse_sde, SMALL, sdes=("vp",), **control)
    assert not r.passed
    assert_every_claim_fails(r)


@pytest.mark.parametrize("schedule", ["plain", "inv-sqrt"])
def test_gates_that_are_not_ode_consistent_fail(schedule):
    r = run_claim(reverse_sde, CheckConfig(depth=128, ladder=SMALL.ladder, quick=True,
                                           schedule=schedule), sdes=("vp",))
    assert not r.passed
    assert_every_claim_fails(r)


def assert_every_claim_fails(r):
    """Strong convergence, weak convergence and layer consistency each fail (a claim fails when
    any of its pass rules does; the moment cross-check may still pass, since it compares the
    sampled stack with the exact moments of that same, wrong, stack)."""
    for claim in ("strong_order", "weak_order", "layer_w2_order"):
        rules = [k for k in r.expected if k.startswith(claim)]
        assert rules and any(not within(r.metrics[k], r.expected[k]) for k in rules), claim


def test_strong_error_and_its_standard_error():
    z = torch.zeros(4, 2, dtype=F64)
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 3.0]], dtype=F64)
    rms, se = reverse_sde.strong_error(z, ref)
    assert rms == pytest.approx(math.sqrt(5.0))
    sq = torch.tensor([1.0, 1.0, 9.0, 9.0], dtype=F64)
    assert se == pytest.approx(float(sq.std()) / 2 / (2 * math.sqrt(5.0)))


def _torchsde_grid(span: float, steps: int) -> list[torch.Tensor]:
    """The times torchsde's fixed-step solvers step on: s_{i+1} = min(s_i + dt, span)."""
    dt, end = span / steps, torch.tensor(span, dtype=F64)
    grid = [torch.tensor(0.0, dtype=F64)]
    for _ in range(steps):
        grid.append(torch.minimum(grid[-1] + dt, end))
    return grid


def _problem(name, law_name, batch, seed):
    config = CheckConfig(schedule="euler", quick=True)
    g = torch.Generator().manual_seed(seed)
    law = data_laws(config, g)[law_name]
    sde = make_sde(name)
    x_T = sample_prior(law, sde, batch, g, config)
    span = sde.T - EPS
    bm = torchsde.BrownianInterval(t0=0.0, t1=span, size=x_T.shape, dtype=F64, entropy=seed,
                                   levy_area_approximation="space-time")
    reverse = TorchsdeReverse(sde.reverse(score_fn(law, sde), probability_flow=False))
    return config, sde, law, x_T, span, bm, reverse


def _stack_on(bm, sde, law, x_T, span, steps, config):
    grid = _torchsde_grid(span, steps)
    dW = torch.stack([bm(grid[i], grid[i + 1]) for i in range(steps)])
    stack = denoising_stack(sde, law, steps, config, probability_flow=False)
    return stack(x_T, xi=dW / math.sqrt(span / steps))


@pytest.mark.parametrize("name,law_name", [("ve", "gaussian"), ("subvp", "mixture")])
def test_stack_is_torchsde_euler_maruyama(name, law_name):
    """On the same BrownianInterval the stack and torchsde.sdeint(method="euler") agree to
    rounding: the stochastic units are Euler-Maruyama as torchsde implements it."""
    config, sde, law, x_T, span, bm, reverse = _problem(name, law_name, 8, 1)
    z = _stack_on(bm, sde, law, x_T, span, 32, config)
    grid = torch.stack(_torchsde_grid(span, 32))  # so torchsde takes no extra rounding step
    ys = torchsde.sdeint(reverse, x_T, grid, method="euler", dt=span / 32, bm=bm)
    assert float((ys[-1] - z).abs().max()) < 1e-10 * (1 + float(z.abs().max()))


def test_fine_reference_agrees_with_torchsde_srk():
    """The C3 reference (Euler-Maruyama with 16 x the steps of the deepest rung, same path)
    against torchsde's SRK (strong order 1.5 for additive noise) on the same BrownianInterval,
    VP reverse SDE of the Gaussian mixture: the reference's error is about 1/16 of the deepest
    rung's (at most 1/8 here), so it resolves the rung's strong error."""
    config, sde, law, x_T, span, bm, reverse = _problem("vp", "mixture", 16, 2)
    depth = 32
    rung = _stack_on(bm, sde, law, x_T, span, depth, config)
    reference = _stack_on(bm, sde, law, x_T, span, 16 * depth, config)
    srk = torchsde.sdeint(reverse, x_T, torch.tensor([0.0, span], dtype=F64), method="srk",
                          dt=span / (16 * depth), bm=bm)[-1]

    def rms(d):
        return float(d.pow(2).sum(-1).mean().sqrt())

    assert rms(reference - srk) < rms(rung - srk) / 8
    assert rms(reference - srk) < 0.02
