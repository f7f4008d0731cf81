"""Study files and the grid: presets plan valid runs; malformed files are one-line UsageErrors."""

from __future__ import annotations

import pytest

from rdm_dynamics.cli import UsageError
from rdm_dynamics.depth_study import PRESETS, load_study, plan
from rdm_dynamics.depth_study.plan import run_id
from rdm_dynamics.models import depth_option


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_plans_valid_runs(name, tmp_path):
    study = load_study(name)
    runs = plan(study, tmp_path)
    assert runs and len({r.id for r in runs}) == len(runs)
    gates = {r.axes["gate"] for r in runs}
    assert {"rdm", "plain"} <= gates
    assert any(r.axes.get("init") == "iid" for r in runs)  # C11's control
    for r in runs:
        option = depth_option(r.config.model)
        assert r.config.model_options[option] == r.depth
        assert r.folder == tmp_path / "runs" / r.id
        assert not r.config.progress


def test_cpu_and_gpu_presets_cover_the_five_gates_on_a_doubling_ladder():
    for name in ("cpu", "gpu"):
        runs = plan(load_study(name), "x")
        assert {r.axes["gate"] for r in runs} == {"plain", "post-ln", "rezero", "adaln-zero",
                                                  "rdm"}
        depths = sorted({r.depth for r in runs})
        doubling = all(b == 2 * a for a, b in zip(depths, depths[1:], strict=False))
        assert len(depths) >= 3 and doubling
        assert len({r.axes["seed"] for r in runs}) >= 2


def test_runs_of_overlapping_blocks_are_one_run(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[train]\nsteps = 3\n[[grid]]\ngate = ["rdm"]\ndepth = [2]\n'
                    '[[grid]]\ngate = ["rdm", "plain"]\ndepth = [2]\n')
    runs = plan(load_study(str(path)), tmp_path)
    assert [r.id for r in runs] == ["depth-2_gate-rdm", "depth-2_gate-plain"]


def test_digest_changes_with_the_recipe(tmp_path):
    a = plan(load_study("smoke"), tmp_path)[0]
    b = plan(load_study("smoke"), tmp_path, {"steps": 7})[0]
    assert a.id == b.id and a.digest() != b.digest()


def test_run_ids_are_safe_folder_names():
    assert run_id({"model": "RDM-DiT-T/2", "lr": 0.001}) == "lr-0.001_model-RDM-DiT-T_2"


BAD = {
    "no grid": ("[train]\nsteps = 3\n", "at least one [[grid]]"),
    "unknown section": ("[trian]\n[[grid]]\ndepth = [2]\n", "unknown section"),
    "no depth": ("[[grid]]\ngate = ['rdm']\n", "no depth axis"),
    "empty axis": ("[[grid]]\ndepth = [2]\ngate = []\n", "non-empty list"),
    "scalar axis": ("[[grid]]\ndepth = 2\n", "non-empty list"),
    "bad depth": ("[[grid]]\ndepth = [0, 2]\n", "positive integers"),
    "repeated depth": ("[[grid]]\ndepth = [2, 2]\n", "twice"),
    "unknown axis": ("[[grid]]\ndepth = [2]\ncolour = ['red']\n", "not a training setting"),
    "managed axis": ("[[grid]]\ndepth = [2]\nout = ['x']\n", "not a training setting"),
    "managed setting": ("[train]\nout = 'x'\n[[grid]]\ndepth = [2]\n", "cannot set"),
    "unknown setting": ("[train]\nstep = 3\n[[grid]]\ndepth = [2]\n", "unknown setting"),
    "bad value": ("[train]\nsteps = 'many'\n[[grid]]\ndepth = [2]\n", "steps must be int"),
    "bad constraint": ("[train]\nlr = -1.0\n[[grid]]\ndepth = [2]\n", "lr must"),
    "bad axis value": ("[[grid]]\ndepth = [2]\ninit = ['fancy']\n", "init must"),
    "unknown model": ("[train]\nmodel = 'RDM-Foo'\n[[grid]]\ndepth = [2]\n", "unknown model"),
    "unknown measure": ("[[grid]]\ndepth = [2]\n[measure]\nfd = 3\n", "[measure]: unknown setting"),
    "bad measure": ("[[grid]]\ndepth = [2]\n[measure]\nquick = 'yes'\n", "measure.quick"),
    "not toml": ("[[grid\n", "cannot parse"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_study_files_are_one_line_errors(case, tmp_path):
    text, words = BAD[case]
    path = tmp_path / "study.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        plan(load_study(str(path)), tmp_path)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_unknown_preset_and_missing_file():
    with pytest.raises(UsageError, match="does not exist"):
        load_study("no-such-study.toml")
