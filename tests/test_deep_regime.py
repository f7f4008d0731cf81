"""The deep regime (issue 21, DESIGN.md section 3c): the residual MLP, the gates without their
normalisation, signal propagation at step 0, the deep presets and their bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from rdm_dynamics import study as study_command
from rdm_dynamics.depth_study import load_study, plan
from rdm_dynamics.models import build_model, initialize
from rdm_dynamics.models.gates import GATE_KINDS, make_gate
from rdm_dynamics.models.mlp import MAX_DEPTH


def _mlp(gate="rdm", depth=4, **kw):
    torch.manual_seed(0)
    return build_model("RDM-MLP-T", gate=gate, depth=depth, width=16, **kw)


def _stream(net, n=32):
    """(z_0, z_L) of the residual stream on random inputs (hooks on the first and last unit)."""
    units, seen = net.residual_units(), {}
    hooks = [units[0].register_forward_hook(lambda m, a, o: seen.setdefault("z0", a[0])),
             units[-1].register_forward_hook(lambda m, a, o: seen.setdefault("zL", o))]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        net(torch.randn(n, 1, 8, 8, generator=g), torch.rand(n, generator=g),
            torch.randint(0, 10, (n,), generator=g))
    for h in hooks:
        h.remove()
    return seen["z0"], seen["zL"]


def _growth(net) -> float:
    z0, zL = _stream(net)
    return float(((zL - z0).norm(dim=1) / z0.norm(dim=1)).mean())


def test_every_unit_is_a_gated_residual_unit_in_forward_order():
    net = _mlp(depth=5)
    units = net.residual_units()
    assert [u.name for u in units] == [f"units.{i}" for i in range(5)]
    assert net.config["depth"] == 5 and net.config["norm"] is None
    again = build_model(**net.config)
    assert again.state_dict().keys() == net.state_dict().keys()


@pytest.mark.parametrize("gate", [g for g in GATE_KINDS if g != "rezero"])
def test_norm_false_removes_every_normalisation(gate):
    with_norm, without = _mlp(gate), _mlp(gate, norm=False)
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm)
    assert any(isinstance(m, norms) for m in with_norm.modules())
    assert not any(isinstance(m, norms) for m in without.modules())


def test_the_textbook_residual_net_explodes_in_depth_and_rdm_does_not():
    """z + F(z) without normalisation: the stream grows geometrically in depth at init (C5's
    regime); rdm's ODE-consistent gates keep it of order one at every depth."""
    plain = [_growth(_mlp("plain", d, norm=False)) for d in (4, 16, 64)]
    rdm = [_growth(_mlp("rdm", d)) for d in (4, 16, 64)]
    assert plain[2] > 1e3 * plain[0] and plain[1] > 10 * plain[0]
    assert max(rdm) < 1.0


def test_the_smooth_initialisation_is_one_function_of_tau_at_every_depth():
    small, large = _mlp("rdm", 4), _mlp("rdm", 8)
    initialize(small, "smooth", 3)
    initialize(large, "smooth", 3)
    for j, unit in enumerate(small.residual_units()):
        twin = large.residual_units()[2 * j]
        for a, b in zip(unit.branch.parameters(), twin.branch.parameters(), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs,message", [
    (dict(gate="rezero", norm=False), "rezero has no normalisation"),
    (dict(gate="rezero", norm=True), "rezero has no normalisation"),
    (dict(norm="yes"), "takes true or false"),
    (dict(depth=MAX_DEPTH + 1), f"more than the {MAX_DEPTH} units"),
    (dict(depth=0), "depth must be a positive integer"),
])
def test_bad_architectures_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model("RDM-MLP-T", **kwargs)


def test_make_gate_builds_rezero_without_a_norm_option():
    assert not make_gate("rezero", 8, 8).normalised
    assert make_gate("plain", 8, 8).normalised and not make_gate("plain", 8, 8, norm=False) \
        .normalised


def test_the_deep_preset_is_the_deep_regime():
    """Ladder to >= 256 units, the five gates with the un-normalised residual net, >= 3 seeds,
    at least three learning rates 3 to 4x apart in every (gate, depth) cell, C11's control,
    known law."""
    study = load_study("deep")
    runs = plan(study, "/nonexistent/deep")
    assert len(runs) == 252
    cells = {}
    for r in runs:
        key = (r.axes["gate"], r.axes.get("norm"), r.axes["init"], r.depth)
        cells.setdefault(key, set()).add((r.axes["lr"], r.axes["seed"]))
        assert r.config.model == "RDM-MLP-T" and r.config.data == "digits-gmm"
    gates = {(g, n) for g, n, i, _ in cells if i == "smooth"}
    assert gates == {("plain", False), ("post-ln", None), ("rezero", None),
                     ("adaln-zero", None), ("rdm", None)}
    assert max(d for *_, d in cells) >= 256
    for (_, _, init, _), grid in cells.items():
        lrs = sorted({lr for lr, _ in grid})
        assert len({s for _, s in grid}) >= 3
        if init == "smooth":
            assert len(lrs) >= 3
            assert all(3 <= b / a <= 4 for a, b in zip(lrs, lrs[1:], strict=False))
    assert [r.config.model_options.get("norm") for r in runs if r.axes["gate"] == "plain"] == \
        [False] * 48
    assert study.measure.only and study.measure.bf16_error and study.measure.step0


def test_the_gpu_deep_preset_plans_for_the_cpu():
    """The DiT at 16x16 from 8 to 64 blocks, bf16, compiled; plans under --device cpu
    --max-steps 2 (its runs are trained in the slow lane)."""
    args = study_command.build_parser().parse_args(
        ["--preset", "gpu-deep", "--device", "cpu", "--max-steps", "2", "--out", "/none/g"])
    study, runs = study_command._plan(args)
    assert {r.depth for r in runs} == {8, 16, 32, 64}
    for r in runs:
        c = r.config
        assert (c.device, c.steps, c.image_size, c.bf16, c.compile) == ("cpu", 2, 16, True, True)
        assert c.model.startswith("RDM-DiT")
    assert {r.axes["gate"] for r in runs} >= {"plain", "rdm"}


def _study(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rdm_dynamics.study", *args],
                          capture_output=True, text=True, env=env, **kw)


DEEP_BAD = [
    ('gate = ["rezero"]\nnorm = [false]', "[4, 8]", "rezero has no normalisation"),
    ('gate = ["rdm"]\nnorm = ["no"]', "[4, 8]", "norm must list true and/or false"),
    ('gate = ["rdm"]\nnorm = [true, true]', "[4, 8]", "norm must list true and/or false"),
    ('gate = ["rdm"]', "[4, 2048]", f"more than the {MAX_DEPTH} units"),
]


@pytest.mark.parametrize("grid,depth,message", DEEP_BAD)
def test_a_study_that_does_not_fit_is_refused_before_any_run(tmp_path, capsys, grid, depth,
                                                             message):
    (tmp_path / "s.toml").write_text(
        f'[train]\nmodel = "RDM-MLP-T"\nsteps = 2\n\n[[grid]]\n{grid}\ndepth = {depth}\n')
    code = study_command.main(["--file", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


TINY_DEEP = """
[train]
model = "RDM-MLP-T"
model_options = { width = 16 }
data = "digits-gmm"
steps = 4
batch_size = 16
warmup = 1
log_every = 2
ckpt_every = 4
n_samples = 4
sample_steps = 2
device = "cpu"

[[grid]]
gate = ["plain"]
norm = [false]
depth = [2, 4]
init = ["smooth"]
seed = [0, 1]
lr = [1e-3, 3e-3]

[[grid]]
gate = ["rdm"]
depth = [2, 4]
init = ["smooth"]
seed = [0, 1]
lr = [1e-3, 3e-3]

[measure]
fd_samples = 0
bf16_error = true
"""


@pytest.mark.slow  # 16 tiny MLP runs with every check: about a minute under -n 2
def test_a_deep_study_end_to_end(tmp_path):
    """A small deep study: every run records its step-0 propagation, the study's own bf16
    error equals C8's (one definition), and C12 reports each cell at its best learning rate
    with its break depth."""
    (tmp_path / "d.toml").write_text(TINY_DEEP)
    out = tmp_path / "o"
    result = _study("--file", str(tmp_path / "d.toml"), "--out", str(out), "--jobs", "2",
                    "--no-figures")
    assert result.returncode in (0, 1), result.stderr
    records = [json.loads(p.read_text()) for p in (out / "measurements").glob("*.json")]
    assert len(records) == 16
    for r in records:
        assert r["step0"]["units"] == r["depth"]
        own = r["propagation"]["output_error_bf16"]
        c8 = r["checks"]["trained-propagation"]["metrics"]["output_error_bf16"]
        assert own == pytest.approx(c8, rel=1e-9)
    plain = [r["step0"]["stream_growth"] for r in records if r["axes"]["gate"] == "plain"]
    rdm = [r["step0"]["stream_growth"] for r in records if r["axes"]["gate"] == "rdm"]
    assert min(plain) > max(rdm)
    report = json.loads((out / "report.json").read_text())
    c12 = next(c for c in report["checks"] if c["claim"] == "C12")
    m = c12["metrics"]
    for label in ("rdm,smooth", "plain,smooth,no-norm"):
        assert {f"best_lr[{label},depth={d}]" for d in (2, 4)} <= set(m), sorted(m)
        assert f"break_found[{label}]" in m
    assert m["units_max[rdm,smooth]"] == 4 and "units_max[rdm,smooth]" in \
        c12["expected"]  # the ladder is too short for the hypothesis: a rule says so
    assert not math.isnan(m["slope_bf16_error[rdm,smooth]"])


@pytest.mark.slow  # two DiT runs of the gpu-deep preset on the CPU: about a minute
def test_the_gpu_deep_preset_runs_on_the_cpu(tmp_path):
    result = _study("--preset", "gpu-deep", "--device", "cpu", "--max-steps", "2",
                    "--set", "compile=false", "--set", "batch_size=8",
                    "--runs", "depth-8_gate-[pr][ld]*_lr-0.001_*seed-0", "--no-figures",
                    "--out", str(tmp_path / "g"), timeout=900)
    assert result.returncode in (0, 1), result.stderr
    records = [json.loads(p.read_text()) for p in (tmp_path / "g/measurements").glob("*.json")]
    assert {r["axes"]["gate"] for r in records} == {"plain", "rdm"}
    assert all(r["step0"]["units"] == 16 for r in records)
    assert all(r["train_status"] in ("done", "diverged") for r in records)
