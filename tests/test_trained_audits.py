"""C10's audits and the gating of C8 to C10 (issue 24): the law against an independent
construction, the training data against the stored law, the sampling design, the label control,
every reported figure gated or derived, and the trained faults of the self-test's library."""

import pytest
import torch

from rdm_dynamics.analysis.law_audit import (
    data_audit,
    independent_denoiser,
    independent_draws,
    quadrature_mv,
)
from rdm_dynamics.checks import denoising_risk as C10
from rdm_dynamics.checks import registry, run_claim
from rdm_dynamics.checks.denoising_audit import LAW_TOL, design_metrics
from rdm_dynamics.checks.faults import CONTROLS, FAULTS, patched
from rdm_dynamics.checks.self_test_subject import small_checkpoint
from rdm_dynamics.checks.trained_subject import load_subject
from rdm_dynamics.laws import GaussianMixture
from rdm_dynamics.sde import VESDE, VPSDE, SubVPSDE
from rdm_dynamics.training.data import known_law_data
from rdm_dynamics.training.known_law import LawSpec


@pytest.fixture(scope="module")
def small():
    """The self-test's small model (two components per class), trained here (seconds)."""
    with small_checkpoint(seed=0, quick=True) as config:
        yield config


def _law():
    return known_law_data(LawSpec(components=2)).law


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_quadrature_coefficients_match_the_closed_forms(sde):
    t = torch.linspace(1e-3, 1.0, 17, dtype=torch.float64)
    m, v = quadrature_mv(sde, t)
    assert torch.allclose(m, sde.mean_coef(t), rtol=1e-13, atol=0)
    assert torch.allclose(v, sde.marginal_var(t), rtol=1e-12, atol=0)


def test_the_independent_denoiser_agrees_and_a_wrong_weight_inside_a_class_cannot_pass():
    law, sde = _law(), VPSDE()
    mix, g = law.mixture, torch.Generator().manual_seed(0)
    x0, k = mix.sample(64, g, with_components=True)
    y = law.classes[k]
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.99 + 1e-3
    x = sde.perturb(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    ind = independent_denoiser(mix.weights, mix.means, mix.covs, law.classes, sde, x, t, y)

    def rel(a, b):
        return float(((a - b).norm(dim=1) / b.norm(dim=1)).max())

    assert rel(mix.optimal_eps(x, t, sde), ind.eps) < LAW_TOL
    assert rel(mix.optimal_eps(x, t, sde, law.class_mask(y)), ind.eps_given_class) < LAW_TOL
    assert (mix.responsibilities(x, t, sde) - ind.responsibilities).abs().max() < LAW_TOL
    w = mix.weights.clone()
    w[0] *= 1.01  # one component's weight 1% off inside class 0 (renormalised by the law)
    wrong = GaussianMixture(w, mix.means, mix.covs)
    assert rel(wrong.optimal_eps(x, t, sde, law.class_mask(y)), ind.eps_given_class) > 1e3 * \
        LAW_TOL
    assert (wrong.responsibilities(x, t, sde) - ind.responsibilities).abs().max() > 1e3 * LAW_TOL


def test_the_data_audit_passes_draws_of_the_law_and_fails_a_variance_used_as_std():
    law = _law()
    mix = law.mixture
    g = torch.Generator().manual_seed(1)
    x, k = independent_draws(mix.weights, mix.means, mix.covs, 1024, g)
    ok = data_audit(mix.weights, mix.means, mix.covs, law.classes, x, law.classes[k], g)
    assert abs(ok["data_logdensity_gap"]) < 4 * ok["data_logdensity_gap_se"]
    assert ok["data_component_p"] > 1e-3 and ok["data_share_p"] > 1e-3
    factors = mix.eigvecs * mix.eigvals.unsqueeze(-2)  # U diag(lam): the variance as the scale
    z = torch.randn(1024, mix.dim, generator=g, dtype=torch.float64)
    bad = mix.means[k] + (factors[k] @ z[:, :, None])[:, :, 0]
    wrong = data_audit(mix.weights, mix.means, mix.covs, law.classes, bad, law.classes[k], g)
    assert abs(wrong["data_logdensity_gap"]) > 10 * wrong["data_logdensity_gap_se"]


def test_the_design_metrics_see_times_outside_their_bins_and_short_bins():
    edges = C10.time_bins(0.01, 1.0, 2)
    t = torch.tensor([0.02, 0.4, 0.6, 0.9], dtype=torch.float64)
    drawn = torch.tensor([0, 0, 1, 1])
    good = design_metrics(edges, t, drawn, [2, 2], 2, 0.01, 1.0)
    assert good["design_outside_bins"] == good["design_count_error"] == 0
    assert good["design_edges_error"] == 0
    bad = design_metrics(edges, t, torch.tensor([0, 1, 1, 1]), [1, 3], 2, 0.01, 1.0)
    assert bad["design_outside_bins"] == 1 and bad["design_count_error"] == 1


def test_c10_gates_its_figures_and_names_the_rest_derived(small):
    result = run_claim(C10, small)
    assert result.passed, result.summary
    prov = result.to_json()["provenance"]
    assert prov["reported"] == []  # every figure gated, derived or a setting
    for name in ("law_conditional_error", "data_logdensity_gap", "data_component_p",
                 "design_outside_bins", "control_identity_residual", "identity_residual_0"):
        assert name in prov["gated"]
    assert "excess_risk_mean" in prov["derived"]  # the depth study's figure
    m = result.metrics
    bins = C10.bins_of(m)
    assert m["excess_risk_mean"] == pytest.approx(
        sum(m[f"excess_risk_{k}"] for k in range(bins)) / bins, rel=1e-12)
    assert 0 < m["identity_resolution"] < 1


def test_a_model_whose_sampler_yields_nan_fails_c10_and_does_not_crash(small, monkeypatch,
                                                                       tmp_path):
    """Non-finite samples are a property of the model: C10 fails on generated_finite (with the
    sampler's message in its summary) and draws its figure; the finite run passes that rule."""
    from rdm_dynamics.checks.report import render_figures
    from rdm_dynamics.training.sampling import NonFiniteSamples

    def nan_sampler(*args, **kwargs):
        raise NonFiniteSamples("the sampler met NaN at step 3")

    monkeypatch.setattr(C10, "generate", nan_sampler)
    result = run_claim(C10, small)
    assert result.status == "fail" and "generated_finite" in result.verdict.failed
    assert "not finite (the sampler met NaN at step 3)" in result.summary
    assert render_figures([result])
    monkeypatch.undo()
    assert run_claim(C10, small).metrics["generated_finite"] == 1.0


def test_a_label_blind_model_cannot_hide_a_swapped_conditional_reference(small):
    """For a predictor that ignores the label, the unconditional reference satisfies the
    identity too; the label-using control (and the law audit) catch it all the same."""
    subject = load_subject(small)
    blind = C10.bayes_predictor(subject, label_blind=True)

    def label_blind_network(x_t, t, y):
        return C10.network_predictor(subject, "cpu")(x_t, t, None if y is None else 0 * y)

    metrics, _ = C10.measure_risk(subject, small, eps_theta=label_blind_network, eps_star=blind)
    held = [abs(metrics[f"identity_residual_{k}"]) <= 4 * metrics[f"identity_residual_{k}_se"]
            for k in range(C10.bins_of(metrics))]
    assert all(held)  # the identity alone is blind to it here
    result = run_claim(C10, small, label_blind_reference=True)
    assert not result.passed
    assert {"control_identity_residual", "law_conditional_error"} <= set(result.verdict.failed)


#: Trained faults run in the fast lane, one per check (C10: the one that needs the law audit's
#: resolution); the slow self-test runs them all.
TRAINED_SAMPLE = ["trained-linear-response-forgets-last", "trained-chain-adjoint-forward",
                  "trained-class-weights-dropped"]


@pytest.mark.parametrize("name", TRAINED_SAMPLE)
def test_a_trained_fault_fails_its_check_by_measurement(small, name):
    fault = next(f for f in FAULTS if f.name == name)
    checks = registry("checkpoint")
    with patched(fault):
        result = run_claim(checks[fault.checks[0]], small)
    assert not result.passed and result.verdict.failed and result.error is None, result.summary


def test_the_self_test_runs_every_trained_check_with_faults_and_a_control():
    """(The controls themselves fail in tests/test_trained_checks.py and above; the slow
    self-test runs all of them.)"""
    checks = set(registry("checkpoint"))
    assert {c.check for c in CONTROLS} >= checks
    assert {cid for f in FAULTS if f.name.startswith("trained-") for cid in f.checks} == checks
