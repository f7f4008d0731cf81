"""C2 `pf-ode`: the check passes with the true PF-ODE and fails under every negative control.

The full check (three SDEs, --depth 256) runs in ``verify``; here the same code runs on VP (and
sub-VP) with a small ladder (L = 16..128, quick samples), where the true PF-ODE stack is in its
asymptotic regime, so that each negative control is seen to fail where the true one passes.
"""

import json
import math

import pytest
import torch

from rdm_dynamics.analysis.gaussian_gates import layer_laws
from rdm_dynamics.checks import CheckConfig, pf_ode, registry, run_claim
from rdm_dynamics.checks.problems import data_laws, denoising_stack, sample_prior
from rdm_dynamics.laws import GaussianMixture
from rdm_dynamics.sde import EPS, make_sde

SMALL = CheckConfig(depth=128, ladder=(16, 32, 64, 128), quick=True)
SDES = ("vp", "subvp")


@pytest.fixture(scope="module")
def true_result():
    return run_claim(pf_ode, SMALL, sdes=SDES)


def test_registered_as_c2():
    assert registry()["pf-ode"] is pf_ode and pf_ode.CLAIM == "C2"


def test_true_pf_ode_passes_with_order_one(true_result):
    r = true_result
    assert r.passed, r.summary
    orders = {f"order_{s}_{law}" for s in SDES for law in ("gaussian", "mixture")}
    assert orders <= set(r.expected)
    for key in orders:
        assert r.expected[key] == [0.85, 1.15]
        assert 0.85 <= r.metrics[key] <= 1.15
        for kind in ("span", "deep"):  # end-to-end and deepest local orders, gated too
            lo, hi = r.expected[f"{key}_{kind}"]
            assert lo < 0.85 and hi > 1.15 and lo <= r.metrics[f"{key}_{kind}"] <= hi
    for s in SDES:  # the independent references are gated
        for name in ("law_density_error", "law_score_error", "fokker_planck_residual",
                     "output_energy", "output_share_z", "transport_order_deep"):
            assert f"{name}_{s}" in r.expected
    assert r.metrics["eps"] == EPS == 1e-3


def test_report_contract(true_result):
    r = true_result
    payload = json.loads(json.dumps(r.to_json()))
    assert set(r.expected) <= set(r.metrics)
    assert all(k[:-3] in r.metrics for k in r.metrics if k.endswith("_se"))
    assert payload["id"] == "pf-ode" and payload["claim"] == "C2"
    assert all(isinstance(v, (int, float)) for v in payload["metrics"].values())
    assert r.summary and r.measured_text and r.theory_text and r.figure is not None


@pytest.mark.parametrize("control", [{"score_sign": -1.0}, {"pf_weight": 1.0}],
                         ids=["wrong-score-sign", "no-one-half"])
def test_negative_controls_fail(control):
    """A score of the wrong sign and the PF-ODE drift without its 1/2 (the reverse-SDE drift
    without noise) converge to another flow: the error against the PF-ODE does not vanish."""
    r = run_claim(pf_ode, SMALL, sdes=("vp",), **control)
    assert not r.passed
    orders = [f"order_vp_{law}" for law in ("gaussian", "mixture")]
    assert all(not 0.85 <= r.metrics[k] <= 1.15 for k in orders), r.metrics
    # the score-free reference of the output law rejects them too
    assert {"output_energy_vp", "output_share_z_vp"} & set(r.verdict.failed), r.verdict.failed


@pytest.mark.parametrize("schedule", ["plain", "inv-sqrt"])
def test_gates_that_are_not_ode_consistent_fail(schedule):
    config = CheckConfig(depth=128, ladder=SMALL.ladder, quick=True, schedule=schedule)
    r = run_claim(pf_ode, config, sdes=("vp",))
    assert not r.passed
    assert all(not 0.85 <= r.metrics[k] <= 1.15 for k in r.expected)


def test_rdm_gates_start_as_euler_gates():
    law = data_laws(SMALL, SMALL.generator(2))["gaussian"]
    rdm, euler = (denoising_stack(make_sde("vp"), law, 16, CheckConfig(schedule=g),
                                  probability_flow=True) for g in ("rdm", "euler"))
    assert torch.equal(rdm.alpha.detach(), euler.alpha) and rdm.alpha.requires_grad
    assert torch.allclose(euler.alpha, torch.full((16,), (1 - EPS) / 16, dtype=torch.float64))


def test_dopri5_reference_reproduces_the_closed_form_flow():
    """The mixture reference (dopri5 of the stack's continuous limit, never below eps) on a
    one-component mixture equals the closed-form Gaussian flow map."""
    config = CheckConfig(quick=True)
    law = data_laws(config, config.generator(2))["gaussian"]
    mixture = GaussianMixture(torch.ones(1), law.mean[None], law.cov[None])
    for name in ("subvp", "ve"):  # sub-VP: g(t) is undefined below t = 0
        sde = make_sde(name)
        x_T = sample_prior(law, sde, 4, torch.Generator().manual_seed(0), config)
        times = denoising_stack(sde, law, 32, config, probability_flow=True).times
        closed = pf_ode.exact_trajectory(sde, law, x_T, times, config)
        numeric = pf_ode.exact_trajectory(sde, mixture, x_T, times, config)
        scale = 1 + float(closed.abs().max())
        assert float((closed - numeric).abs().max()) < 1e-8 * scale, name


def test_output_law_w2_falls_with_h():
    """The stack's exact output law (z_0 ~ p_T, Gaussian data) against p_eps, as C2 measures it:
    its W2 distance is positive and halves when h does."""
    config = CheckConfig(quick=True, schedule="euler")
    law = data_laws(config, config.generator(2))["gaussian"]
    sde = make_sde("vp")
    p_T, p_eps = law.marginal(sde, sde.T), law.marginal(sde, EPS)
    errors = [float(layer_laws(denoising_stack(sde, law, L, config, probability_flow=True), p_T,
                               p_eps.mean, p_eps.cov, layers=-1).w2)
              for L in (32, 64)]
    assert 1.8 < errors[0] / errors[1] < 2.2  # W2(p_eps) halves with h
    assert all(math.isfinite(e) and e > 0 for e in errors)


def test_quick_ladder_to_64_runs_its_dopri5_reference_to_the_end():
    """Regression: with one torchdiffeq solve over the whole grid (every time in ``step_t``), a
    dopri5 step that landed exactly on an output time left the later times unenforced; the
    mixture reference then stepped past eps and stopped with 'underflow in dt'.  The run must
    finish, with a finite order for every SDE and law."""
    result = run_claim(pf_ode, CheckConfig(depth=64, quick=True))
    orders = [result.metrics[f"order_{s}_{law}"] for s in ("vp", "subvp", "ve")
              for law in ("gaussian", "mixture")]
    assert len(orders) == 6 and all(math.isfinite(v) for v in orders)
