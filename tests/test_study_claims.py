"""C11 and C12 judged on constructed studies whose answers are known.

C11: checkpoints built from the depth-smooth initialisation, "trained" by a known perturbation:
theta_N(tau) = f(tau) + g(tau) + e_N with |e_N| ~ c / N (a discretised flow: the N-vs-2N
distance falls at order 1) or ~ c (no convergence).  The check must recover the order, pass the
first, and fail when N and 2N started from different functions (different initial seeds): the
negative control of the issue.  C12: run records with known slopes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rdm_dynamics.checks import depth_consistency, depth_scaling, run_claim
from rdm_dynamics.checks.rules import judge
from rdm_dynamics.depth_study import StudyClaimConfig
from rdm_dynamics.models import build_model, initialize
from rdm_dynamics.models.depth_init import unit_groups
from rdm_dynamics.training.checkpoint import save_checkpoint

DEPTHS = (2, 4, 8)


def c11(records, folder):
    """C11 on run records whose run folders are under ``folder/runs``."""
    return run_claim(depth_consistency, StudyClaimConfig(records, folder / "runs"))


def c12(records):
    """C12 on run records (it reads no run folder)."""
    return run_claim(depth_scaling, StudyClaimConfig(records))


def _save(folder, net):
    import copy

    save_checkpoint(folder, 1, {"model": net, "ema": copy.deepcopy(net)},
                    meta={"model_config": net.config, "train_config": {}})


def _run(tmp_path, rid, axes, *, init_seed, noise, noise_order, noise_seed, gate="rdm",
         init="smooth"):
    depth = axes["depth"]
    net = build_model("RDM-DiT-T/2", gate=gate, depth=depth, width=16, heads=2)
    if init == "smooth":
        initialize(net, "smooth", init_seed)
    g = torch.Generator().manual_seed(noise_seed)
    with torch.no_grad():
        for units in unit_groups(net).values():
            for u in units:
                for p in u.branch.parameters():
                    if p.std() > 0:
                        p.add_(noise * depth ** -noise_order * p.std()
                               * torch.randn(p.shape, generator=g))
    _save(tmp_path / "runs" / rid, net)
    return {"id": rid, "axes": axes, "depth": depth, "train_status": "done"}


def _study(tmp_path, *, order=1.0, mismatch=False, iid_control=True):
    records = []
    for seed in (0, 1):
        for depth in DEPTHS:
            axes = {"gate": "rdm", "init": "smooth", "seed": seed, "depth": depth}
            init_seed = seed + (100 * depth if mismatch else 0)
            records.append(_run(tmp_path, f"s{seed}d{depth}", axes, init_seed=init_seed,
                                noise=0.05, noise_order=order, noise_seed=1000 * seed + depth))
            if iid_control:
                axes = {**axes, "init": "iid"}
                torch.manual_seed(7 * depth + seed)
                records.append(_run(tmp_path, f"iid-s{seed}d{depth}", axes, init_seed=0,
                                    noise=0.05, noise_order=order, noise_seed=depth, init="iid"))
    return records


def test_c11_recovers_order_one_and_passes(tmp_path):
    result = c11(_study(tmp_path, order=1.0), tmp_path)
    m = result.metrics
    assert m["distance_order[rdm,smooth]"] == pytest.approx(1.0, abs=0.1)
    assert m["distance_order[rdm,smooth]_se"] < 0.1
    assert abs(m["distance_order[rdm,iid]"]) < 0.2
    assert m["gate_sum_min[rdm,smooth]"] == pytest.approx(1.0)  # alpha = 1/L untouched
    assert result.passed, result.summary
    assert judge(m, depth_consistency_rules(result)).passed == result.passed


def depth_consistency_rules(result):
    """The rules as the report states them (expected bands re-applied)."""
    from rdm_dynamics.checks.rules import Rule

    return [Rule(k, tuple(v)) for k, v in result.expected.items()]


def test_c11_fails_when_n_and_2n_start_from_different_functions(tmp_path):
    result = c11(_study(tmp_path, mismatch=True), tmp_path)
    assert not result.passed
    assert "distance_order[rdm,smooth]" in result.verdict.failed
    assert abs(result.metrics["distance_order[rdm,smooth]"]) < 0.3


def test_c11_fails_when_the_distance_does_not_fall(tmp_path):
    result = c11(_study(tmp_path, order=0.0), tmp_path)
    assert "distance_order[rdm,smooth]" in result.verdict.failed


def test_c11_without_a_control_cannot_pass(tmp_path):
    result = c11(_study(tmp_path, iid_control=False), tmp_path)
    assert not result.passed and "control_cells" in result.verdict.failed
    assert "iid control cell" in result.summary


def _record(gate, depth, seed, *, excess, fd, bf16, sens, status="done", data="digits-gmm"):
    return {"id": f"{gate}-{depth}-{seed}", "depth": depth, "train_status": status,
            "axes": {"gate": gate, "depth": depth, "seed": seed, "data": data},
            "quality": {"fd_ratio": fd},
            "checks": {"denoising-risk": {"metrics": {"excess_risk_mean": excess}},
                       "trained-propagation": {"metrics": {"output_error_bf16": bf16}},
                       "trained-sensitivity": {"metrics": {"sensitivity_ratio": sens}}}}


def _scaling(rdm_slope=0.0, plain_slope=1.0, rdm_status="done"):
    out = []
    rng = np.random.default_rng(0)
    for seed in (0, 1, 2):
        for d in (2, 4, 8, 16):
            wiggle = math.exp(0.05 * rng.standard_normal())  # seed-to-seed noise
            out.append(_record("rdm", d, seed, excess=0.1 * wiggle * d ** rdm_slope,
                               fd=2 * wiggle, bf16=0.01 * wiggle, sens=1.5 * wiggle,
                               status=rdm_status if d == 16 and seed == 0 else "done"))
            out.append(_record("plain", d, seed, excess=0.1 * wiggle * d ** plain_slope,
                               fd=2 * wiggle * d ** plain_slope, bf16=0.01 * d, sens=d))
    return out


def test_c12_passes_when_rdm_holds_and_plain_degrades():
    result = c12(_scaling())
    assert result.passed, result.summary
    assert result.metrics["slope_excess_risk[digits-gmm,plain]"] == pytest.approx(1.0, abs=0.1)
    assert abs(result.metrics["slope_excess_risk[digits-gmm,rdm]"]) < 0.05


@pytest.mark.parametrize("case,failed", [
    (dict(rdm_slope=0.5), "slope_excess_risk[digits-gmm,rdm]"),
    (dict(plain_slope=0.0), "slope_excess_risk[digits-gmm,plain]"),
    (dict(rdm_status="diverged"), "diverged_runs[digits-gmm,rdm]"),
])
def test_c12_fails_on_each_broken_statement(case, failed):
    result = c12(_scaling(**case))
    assert not result.passed and failed in result.verdict.failed


def test_c12_needs_both_gates():
    result = c12([r for r in _scaling() if r["axes"]["gate"] == "rdm"])
    assert not result.passed and "plain_cells" in result.verdict.failed
    assert "cannot be stated" in result.summary


def test_c12_not_applicable_checks_give_no_figure():
    records = _scaling()
    for r in records:
        r["checks"]["denoising-risk"]["applicable"] = False
    result = c12(records)
    assert "slope_excess_risk[digits-gmm,rdm]" not in result.metrics
    assert math.isfinite(result.metrics["slope_fd_ratio[digits-gmm,plain]"])  # plain judged on FD


def test_c12_reports_and_draws_the_best_learning_rate_when_it_is_swept():
    """Constructed sweep: at depth d the excess risk is lowest at lr = 1e-3 / d for rdm (the best
    lr moves with depth) and at 1e-3 at every depth for plain (it transfers)."""
    records = []
    for gate in ("rdm", "plain"):
        for seed in (0, 1):
            for d in (2, 4, 8):
                best = 1e-3 / d if gate == "rdm" else 1e-3
                for lr in (1e-3 / 8, 1e-3 / 4, 1e-3 / 2, 1e-3):
                    r = _record(gate, d, seed, excess=0.1 + abs(math.log(lr / best)),
                                fd=2.0, bf16=0.01, sens=1.5)
                    r["axes"]["lr"] = lr
                    r["id"] += f"-{lr}"
                    records.append(r)
    result = c12(records)
    m = result.metrics
    assert [m[f"best_lr[digits-gmm,rdm,depth={d}]"] for d in (2, 4, 8)] == \
        pytest.approx([1e-3 / 2, 1e-3 / 4, 1e-3 / 8])
    assert m["best_lr_transfers[digits-gmm,rdm]"] == 0
    assert m["best_lr_transfers[digits-gmm,plain]"] == 1
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure()
    result.figure(fig)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == len(depth_scaling.FIGURES) + 1 and "best learning rate" in titles[-1]
    assert len(fig.axes[-1].get_lines()) == 2  # one line per cell without lr
    plain = next(line for line in fig.axes[-1].get_lines() if "plain" in line.get_label())
    assert list(plain.get_ydata()) == pytest.approx([1e-3] * 3)


def test_c12_draws_no_learning_rate_panel_without_a_sweep():
    from matplotlib.figure import Figure

    fig = Figure()
    c12(_scaling()).figure(fig)
    assert len(fig.axes) == len(depth_scaling.FIGURES)


def test_the_study_claims_are_the_registry_of_kind_study():
    from rdm_dynamics.checks import registry

    claims = registry("study")
    assert list(claims) == ["depth-consistency", "depth-scaling"]
    assert [m.CLAIM for m in claims.values()] == ["C11", "C12"]
