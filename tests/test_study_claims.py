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


def _record(gate, depth, seed, *, excess, fd, bf16, sens, status="done", data="digits-gmm",
            norm=None):
    axes = {"gate": gate, "depth": depth, "seed": seed, "data": data}
    if norm is not None:
        axes["norm"] = norm
    return {"id": f"{gate}-{depth}-{seed}-{norm}", "depth": depth, "train_status": status,
            "axes": axes, "quality": {"fd_ratio": fd}, "step0": {"units": depth},
            "checks": {"denoising-risk": {"metrics": {"excess_risk_mean": excess}},
                       "trained-propagation": {"metrics": {"output_error_bf16": bf16}},
                       "trained-sensitivity": {"metrics": {"sensitivity_ratio": sens}}}}


LADDER = (4, 16, 64, 256)
RDM, PLAIN = "digits-gmm,rdm", "digits-gmm,plain,no-norm"


def _scaling(rdm_break=None, plain_break=64, rdm_bf16_slope=0.3, rdm_status="done",
             ladder=LADDER):
    """Records of a deep study with known answers: each gate's excess risk is flat (0.1, with
    seed-to-seed noise of 5%) and triples from its planted break depth on; rdm's bf16 error
    grows as depth^rdm_bf16_slope; ``rdm_status`` is the status of rdm's deepest seed-0 run."""
    out = []
    rng = np.random.default_rng(0)
    for seed in (0, 1, 2):
        for d in ladder:
            w = math.exp(0.05 * rng.standard_normal())
            rdm = 0.1 * w * (3 if rdm_break and d >= rdm_break else 1)
            out.append(_record("rdm", d, seed, excess=rdm, fd=2 * w,
                               bf16=0.01 * w * d ** rdm_bf16_slope, sens=1.5 * w,
                               status=rdm_status if d == ladder[-1] and seed == 0 else "done"))
            plain = 0.1 * w * (3 if plain_break and d >= plain_break else 1)
            out.append(_record("plain", d, seed, excess=plain, fd=2 * w, bf16=0.01 * d,
                               sens=d, norm=False))
    return out


def test_c12_passes_when_rdm_holds_and_the_unnormalised_net_breaks():
    result = c12(_scaling())
    assert result.passed, result.summary
    m = result.metrics
    assert m[f"break_found[{RDM}]"] == 0 and m[f"break_depth[{PLAIN}]"] == 64
    assert m[f"units_max[{RDM}]"] == 256
    assert m[f"slope_bf16_error[{RDM}]"] == pytest.approx(0.3, abs=0.05)
    assert "break none" in result.measured_text and "break 64" in result.measured_text


@pytest.mark.parametrize("case,failed", [
    (dict(rdm_break=64), f"break_found[{RDM}]"),              # the planted break is found
    (dict(plain_break=None), f"break_found[{PLAIN}]"),
    (dict(rdm_status="diverged"), f"break_found[{RDM}]"),      # a divergence is a break
    (dict(rdm_bf16_slope=1.0), f"slope_bf16_error[{RDM}]"),
    (dict(ladder=(2, 4, 8, 16, 32)), f"units_max[{RDM}]"),    # not the deep regime
])
def test_c12_fails_on_each_broken_statement(case, failed):
    result = c12(_scaling(**case))
    assert not result.passed and failed in result.verdict.failed


def test_c12_needs_an_rdm_and_an_unnormalised_plain_cell():
    normalised = [{**r, "axes": {k: v for k, v in r["axes"].items() if k != "norm"}}
                  for r in _scaling()]  # pre-norm plain: reported, not the hypothesis's
    result = c12(normalised)
    assert not result.passed and "plain_no_norm_cells" in result.verdict.failed
    assert "cannot be stated" in result.summary


@pytest.mark.parametrize("series,diverged,expected", [
    ({4: (0.2, 0.01), 16: (0.1, 0.01), 64: (0.1, 0.01)}, {}, (None, 16)),  # shallow: capacity
    ({4: (0.1, 0.001), 16: (0.105, 0.001)}, {}, (None, 4)),       # 2 SE but under 10%
    ({4: (0.1, 0.05), 16: (0.13, 0.05)}, {}, (None, 4)),          # 30% but within 2 SE
    ({4: (0.1, 0.001), 16: (0.13, 0.001), 64: (0.5, 0.01)}, {}, (16, 4)),  # the smallest
    ({4: (0.1, 0.01), 16: (0.1, 0.01), 64: (math.nan, math.nan)}, {64: 3}, (64, 4)),
    ({4: (math.nan, math.nan)}, {4: 3}, (4, None)),               # nothing trained at all
])
def test_break_depth_definition(series, diverged, expected):
    assert depth_scaling.break_depth(series, diverged) == expected


def _swept(all_diverge_at_256=False):
    """Each cell at three learning rates: 3e-3 is best (0.1, 1e-3 gives 0.12) except at 256,
    where it diverges and 1e-3 holds at 0.1 (the cell holds at its best learning rate), unless
    every rate diverges there."""
    records = []
    for r in _scaling(plain_break=16):
        for lr, excess in ((1e-3, 0.12 if r["depth"] < 256 else 0.1), (3e-3, 0.1),
                           (1e-2, 0.3)):
            rec = {**r, "id": f"{r['id']}-{lr}", "axes": {**r["axes"], "lr": lr},
                   "checks": {**r["checks"], "denoising-risk": {"metrics": {
                       "excess_risk_mean": r["checks"]["denoising-risk"]["metrics"][
                           "excess_risk_mean"] * excess / 0.1}}}}
            if r["depth"] == 256 and (lr != 1e-3 or all_diverge_at_256):
                rec["train_status"] = "diverged"
            records.append(rec)
    return records


def test_c12_takes_each_depth_at_its_best_learning_rate():
    m = c12(_swept()).metrics
    assert [m[f"best_lr[{RDM},depth={d}]"] for d in LADDER] == [3e-3, 3e-3, 3e-3, 1e-3]
    assert m[f"best_lr_transfers[{RDM}]"] == 0 and m[f"break_found[{RDM}]"] == 0
    assert m[f"break_depth[{PLAIN}]"] == 16
    assert c12(_swept(all_diverge_at_256=True)).metrics[f"break_depth[{RDM}]"] == 256


def test_c12_not_applicable_checks_give_no_figure():
    records = _scaling()
    for r in records:
        r["checks"]["denoising-risk"]["applicable"] = False
    result = c12(records)
    assert f"slope_excess_risk[{RDM}]" not in result.metrics
    assert math.isfinite(result.metrics[f"slope_fd_ratio[{RDM}]"])  # judged on the FD ratio


def test_c12_figure_reads_at_a_glance():
    """One panel per figure family and the best learning rate; depth ticks at the ladder's
    depths as plain integers; one legend beside the panels, none over the data; the break
    marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(layout="constrained")
    c12(_swept()).figure(fig)
    panels = len(depth_scaling.FIGURES) - len(depth_scaling.QUALITY) + 1 + 1
    assert len(fig.axes) == panels and "best learning rate" in fig.axes[-1].get_title()
    fig.canvas.draw()
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "16", "64", "256"]
        assert ax.get_legend() is None
    assert len(fig.legends) == 1
    marks = [line for line in fig.axes[0].get_lines() if line.get_marker() == "X"]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [16]


def test_c12_draws_no_learning_rate_panel_without_a_sweep():
    from matplotlib.figure import Figure

    fig = Figure(layout="constrained")
    c12(_scaling()).figure(fig)
    assert len(fig.axes) == len(depth_scaling.FIGURES) - len(depth_scaling.QUALITY) + 1


def test_the_study_claims_are_the_registry_of_kind_study():
    from rdm_dynamics.checks import registry

    claims = registry("study")
    assert list(claims) == ["depth-consistency", "depth-scaling"]
    assert [m.CLAIM for m in claims.values()] == ["C11", "C12"]
