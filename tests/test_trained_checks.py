"""Known-law data and the checks on checkpoints (C8 trained-propagation, C9 trained-sensitivity,
C10 denoising-risk): each passes on a tiny trained model and fails on its planted fault."""

import copy
import json

import pytest
import torch
from tiny_models import tiny_model

from rdm_dynamics.checks import denoising_risk as C10
from rdm_dynamics.checks import registry, run_claim
from rdm_dynamics.checks import trained_propagation as C8
from rdm_dynamics.checks import trained_sensitivity as C9
from rdm_dynamics.checks.rules import within
from rdm_dynamics.checks.trained_subject import checkpoint_config, load_subject
from rdm_dynamics.laws import GaussianMixture
from rdm_dynamics.sde import VPSDE
from rdm_dynamics.training.checkpoint import load_checkpoint, save_checkpoint
from rdm_dynamics.training.data import digits, known_law_data, load_dataset
from rdm_dynamics.training.known_law import LawModule, LawSpec, law_from_tensors
from rdm_dynamics.training.loop import train
from rdm_dynamics.training.settings import TrainConfig
from rdm_dynamics.verify import main

TINY_DIT = {"depth": 2, "width": 32, "heads": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny RDM-DiT (4 units) trained for 25 steps on digits-gmm."""
    out = tmp_path_factory.mktemp("gmm-run")
    cfg = TrainConfig(model="RDM-DiT-T/2", model_options=TINY_DIT, data="digits-gmm", steps=25,
                      batch_size=16, warmup=0, lr=3e-3, log_every=10, n_samples=4,
                      sample_steps=2, progress=False, out=str(out), device="cpu")
    train(cfg)
    return checkpoint_config(str(out), quick=True)


def untrained_checkpoint(folder, name, data="digits-gmm", **model_kw):
    """A checkpoint of an untrained model with every weight perturbed (so no head is zero):
    for checks where training is not the point."""
    cfg = TrainConfig(model=name, data=data)
    net = tiny_model(name, **model_kw)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    modules = {"model": net, "ema": copy.deepcopy(net)}
    if data == "digits-gmm":
        modules["law"] = LawModule(known_law_data(LawSpec()).law)
    save_checkpoint(folder, 1, modules, None, {"train_config": cfg.to_json(),
                                               "model_config": net.config, "labelled": True})
    return str(folder)


# ------------------------------------------------------------------------------------------------
# Known-law data
# ------------------------------------------------------------------------------------------------

def test_the_law_is_a_function_of_its_spec_and_images_of_seed_and_index():
    a = known_law_data(LawSpec(components=2, covariance="full"))
    assert a.law.mixture.means.shape == (20, 64) and sorted(set(a.law.classes.tolist())) == \
        list(range(10))
    assert torch.allclose(a.law.mixture.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    x1, y1 = a.batch(torch.arange(5, 10))
    x2, y2 = a.batch(torch.arange(5, 10))
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape == (5, 1, 8, 8)
    assert not torch.equal(known_law_data(LawSpec(components=1), seed=1).batch(torch.arange(3))[0],
                           known_law_data(LawSpec(components=1), seed=0).batch(torch.arange(3))[0])
    sched = a.schedule(4)
    assert not set(sched.indices(0).tolist()) & set(sched.indices(1).tolist())  # fresh
    # class 0's one component: the full form is its sample covariance plus the floor; the
    # low-rank form keeps every pixel's variance and stays above the floor
    images = digits("train").images
    x0 = images[digits("train").labels == 0].reshape(-1, 64).double()
    S = torch.cov(x0.T)
    full = known_law_data(LawSpec(covariance="full")).law.mixture.covs[0]
    assert torch.allclose(full, S + 0.01 * torch.eye(64), atol=1e-12)
    lowrank = known_law_data(LawSpec(rank=3)).law.mixture
    assert torch.allclose(torch.diag(lowrank.covs[0]), torch.diag(S) + 0.01, atol=1e-12)
    assert lowrank.eigvals.min() >= 0.01 - 1e-12
    big = load_dataset("digits-gmm", size=16)
    assert big.sample_shape == (1, 16, 16) and big.law.mixture.dim == 256


def test_exact_denoiser_and_class_conditional_score_against_independent_forms():
    g = torch.Generator().manual_seed(0)
    mix = GaussianMixture.random(4, 3, generator=g)
    sde = VPSDE()
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.9 + 0.05
    per_time = torch.stack([mix.optimal_eps(x[i:i + 1], float(t[i]), sde)[0] for i in range(6)])
    std = sde.marginal_std(t).unsqueeze(1)
    assert torch.allclose(mix.optimal_eps(x, t, sde), per_time, atol=1e-12)
    assert torch.allclose(per_time, -std * torch.stack(
        [mix.score(x[i:i + 1], float(t[i]), sde)[0] for i in range(6)]), atol=1e-12)
    allowed = torch.tensor([[True, True, False, False]] * 6)
    sub = GaussianMixture(mix.weights[:2], mix.means[:2], mix.covs[:2])
    assert torch.allclose(mix.score(x, 0.3, sde, allowed), sub.score(x, 0.3, sde), atol=1e-12)


def test_a_run_on_digits_gmm_stores_its_law_in_every_checkpoint(trained):
    ckpt = load_checkpoint(trained.ckpt)
    stored = law_from_tensors(ckpt.state_dict("law"))
    fitted = known_law_data(LawSpec()).law
    assert torch.equal(stored.mixture.means, fitted.mixture.means)
    assert torch.equal(stored.classes, fitted.classes)


# ------------------------------------------------------------------------------------------------
# The checks and their negative controls
# ------------------------------------------------------------------------------------------------

def reapplied(result) -> bool:
    return all(within(result.metrics.get(k), band) for k, band in result.expected.items())


def test_denoising_risk_identity_holds_and_a_wrong_noise_level_breaks_it(trained):
    result = run_claim(C10, trained)
    assert result.passed, result.summary
    assert reapplied(result)
    m = result.metrics
    assert m["excess_risk_mean"] > 0 and m["bayes_risk_mean"] > 0
    assert m["risk_mean"] == pytest.approx(m["bayes_risk_mean"] + m["excess_risk_mean"],
                                           abs=5 * m["risk_mean_se"])
    planted = run_claim(C10, trained, bayes_sde=VPSDE(beta_max=10.0))  # a wrong noise level
    assert not planted.passed
    assert any(f.startswith("identity_residual") for f in planted.verdict.failed)


def test_the_bayes_predictor_has_zero_excess_risk(trained):
    subject = load_subject(trained)
    best = C10.bayes_predictor(subject)
    metrics, _ = C10.measure_risk(subject, trained, eps_theta=best)
    assert metrics["excess_risk_mean"] == 0.0
    assert metrics["risk_mean"] == pytest.approx(metrics["bayes_risk_mean"], rel=1e-12)


def test_linear_response_explains_the_rounding_and_skipping_a_unit_does_not(trained):
    result = run_claim(C8, trained)
    assert result.passed, result.summary
    assert reapplied(result)
    m = result.metrics
    assert 0 < m["output_error_fp16"] < m["output_error_bf16"] < 0.5
    assert m["amplification_max"] > 0 and m["units"] == 4
    planted = run_claim(C8, trained, skip_units=(0,))
    assert not planted.passed and "linear_response_residual" in planted.verdict.failed


def test_autograd_is_the_discrete_adjoint_and_a_skipped_vjp_is_not(trained):
    result = run_claim(C9, trained)
    assert result.passed and reapplied(result)
    assert result.metrics["sensitivity_ratio"] > 0
    assert result.metrics["chain_adjoint_error"] <= 1e-8  # the transformer is a chain of units
    planted = run_claim(C9, trained, skip_vjp=(1,))
    assert not planted.passed and planted.metrics["adjoint_agreement_error"] > 1e-3
    assert "chain_adjoint_error" in planted.verdict.failed


def test_the_unet_is_checked_through_its_units_too(tmp_path):
    config = checkpoint_config(untrained_checkpoint(tmp_path, "RDM-UNet-T"), quick=True)
    assert config.depth == len(load_subject(config).net.residual_units()) > 4
    for module in (C8, C9):
        result = run_claim(module, config)
        assert result.passed, result.summary
    unet = run_claim(C9, config)
    assert "chain_adjoint_error" not in unet.metrics  # transitions and skips: no chain
    assert not run_claim(C9, config, skip_vjp=(2,)).passed


# ------------------------------------------------------------------------------------------------
# verify --ckpt
# ------------------------------------------------------------------------------------------------

def test_verify_ckpt_writes_the_contract_and_not_applicable_does_not_fail(tmp_path, capsys):
    run = untrained_checkpoint(tmp_path / "digits", "RDM-DiT-T/2", data="digits",
                               **{"depth": 1, "width": 32, "heads": 2})
    code = main(["--ckpt", run, "--quick", "--only", "C9,C10", "--out", str(tmp_path / "r"),
                 "--no-figures", "--seed", "3"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["passed"] is True and report["seed"] == 3 and report["checkpoint"]
    by_id = {c["id"]: c for c in report["checks"]}
    assert set(by_id) == {"trained-sensitivity", "denoising-risk"}
    na = by_id["denoising-risk"]
    assert na["applicable"] is False and "known" in na["reason"] and na["expected"] == {}
    assert "applicable" not in by_id["trained-sensitivity"]
    assert "N/A" in capsys.readouterr().out


def test_verify_without_ckpt_keeps_the_theory_checks_and_bad_ckpt_is_exit_2(tmp_path, capsys):
    assert set(registry()) & set(registry("checkpoint")) == set()
    assert [m.CLAIM for m in registry("checkpoint").values()] == ["C8", "C9", "C10"]
    assert all(int(m.CLAIM[1:]) <= 7 for m in registry().values())
    capsys.readouterr()
    assert main(["--ckpt", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ckpt" in err[0]


def test_a_resumed_digits_gmm_run_repeats_the_uninterrupted_losses(tmp_path):
    def cfg(out):
        return TrainConfig(model="RDM-DiT-T/2", model_options={"depth": 1, "width": 32,
                                                               "heads": 2},
                           data="digits-gmm", steps=4, batch_size=8, warmup=0, log_every=1,
                           ckpt_every=2, n_samples=2, sample_steps=1, progress=False,
                           out=str(out), device="cpu")

    def losses(out):
        return [json.loads(s)["loss"] for s in (out / "log.jsonl").read_text().splitlines()]

    train(cfg(tmp_path / "full"))

    def kill(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path / "cut"), on_step=kill)
    train(cfg(tmp_path / "cut"), resume=True)
    full = losses(tmp_path / "full")
    assert losses(tmp_path / "cut") == full and len(full) == 4
