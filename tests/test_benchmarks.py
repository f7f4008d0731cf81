"""The benchmark scripts run and write their figures as JSON (``--json PATH``), at their smallest
settings.  No timing is asserted: the figures of a shared test machine mean nothing; what is
asserted is that each script works and says what its JSON promises.

``train_digits.py`` is not run here: its smallest run trains a model and a digit classifier and
scores samples (about 45 s on a loaded 2-core machine); its ``--json`` writes the same report as
its ``results.json``.  ``diffusers_parity.py`` runs in the slow lane (two trainings)."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reverse_sde_simulation_writes_its_paired_speedup(tmp_path, capsys):
    path = tmp_path / "sim.json"
    assert load("reverse_sde_simulation").main(
        ["--batch", "8", "--steps", "16", "--reps", "3", "--json", str(path)]) == 0
    out = json.loads(path.read_text())
    speedup = out["median_paired_speedup_vs_torchsde"]
    assert speedup > 0 and speedup == out["paired_speedup_vs_torchsde"]["stack"]["median"]
    assert set(out["median_seconds"]) == {"stack", "torchsde", "loop", "tabulated", "field",
                                          "grid_field", "path", "normals", "randn"}
    assert out["checks"]["stack_vs_loop_max_abs"] == 0.0  # the same arithmetic, bit for bit
    assert "torchsde / this" in capsys.readouterr().out


def test_reverse_sde_simulation_bad_arguments(capsys):
    module = load("reverse_sde_simulation")
    assert module.run_main(module.main, ["--steps", "12"]) == 2
    assert "power of 2" in capsys.readouterr().err


JSON_SCRIPTS = ("reverse_sde_simulation", "adjoint_memory", "gate_overhead", "gpu_throughput",
                "trained_checks", "train_digits", "diffusers_parity")


@pytest.mark.parametrize("name", JSON_SCRIPTS)
def test_a_json_path_that_cannot_be_written_is_refused_before_measuring(name, tmp_path, capsys):
    """One line and exit 2 at once (before any measuring), for a missing folder, a folder in
    place of the file, and a folder that cannot be written; nothing is written."""
    module = load(name)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for path, words in ((tmp_path / "missing" / "x.json", "does not exist"),
                            (tmp_path, "is a folder"), (locked / "x.json", "cannot be written")):
            if words == "cannot be written" and os.access(locked, os.W_OK):
                continue  # root writes anywhere: that case cannot be made here
            assert module.run_main(module.main, ["--json", str(path)]) == 2
            err = capsys.readouterr().err
            assert words in err and err.count("\n") == 1, err
    finally:
        locked.chmod(0o700)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked"]


def test_gpu_suite_refuses_a_file_as_its_folder(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("mine")
    module = load("gpu_suite")
    assert module.run_main(module.main, [str(target), "--device", "cpu", "--smoke"]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and err.count("\n") == 1 and target.read_text() == "mine"


def test_adjoint_memory_and_gate_overhead_write_json(tmp_path):
    path = tmp_path / "adjoint.json"
    assert load("adjoint_memory").main(["--depths", "8,16", "--no-rss",
                                        "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    assert {(r["method"], r["depth"]) for r in rows} == {(m, d) for m in ("backprop", "adjoint")
                                                         for d in (8, 16)}
    path = tmp_path / "gates.json"
    assert load("gate_overhead").main(["--models", "RDM-DiT-T/2", "--input-size", "8",
                                       "--batch", "2", "--reps", "2", "--warmup", "1",
                                       "--json", str(path)]) == 0
    gates = json.loads(path.read_text())["models"][0]["gates"]
    assert set(gates) == {"plain", "rdm"} and gates["plain"]["paired_ratio"] == 1.0


def test_gpu_throughput_smoke_writes_json(tmp_path):
    path = tmp_path / "throughput.json"
    assert load("gpu_throughput").main(["--smoke", "--modes", "eager", "--device", "cpu",
                                        "--json", str(path)]) == 0
    out = json.loads(path.read_text())
    assert {(r["gate"], r["mode"]) for r in out["runs"]} == {("rdm", "eager"),
                                                             ("plain", "eager")}
    assert all(r["images_per_s"] > 0 for r in out["runs"])


@pytest.mark.slow  # seven subprocesses, each importing torch, and a study run: 80 s alone
def test_gpu_suite_smoke_on_the_cpu(tmp_path):
    """The GPU machine's script, on the CPU at its smallest settings: every stage runs (or says
    why not) and suite.json records it (about 25 s idle, a minute loaded: seven subprocesses,
    each importing torch)."""
    module = load("gpu_suite")
    code = module.main([str(tmp_path), "--device", "cpu", "--smoke"])
    suite = json.loads((tmp_path / "suite.json").read_text())
    stages = suite["stages"]
    assert code == 0, {k: v.get("stderr_tail") for k, v in stages.items()}
    assert {"verify_cpu_float64", "verify_cpu_float32", "gpu_throughput", "train",
            "verify_ckpt", "study"} <= set(stages)
    for name in ("verify_cpu_float64", "verify_cpu_float32"):
        assert stages[name]["status"] == "ok" and stages[name]["wall_s"] > 0
        assert stages[name]["verdicts"]["depth-limit"] in (True, False)
        assert stages[name]["verdicts_match_cpu_float64"] in (True, False)
    assert stages["gpu_throughput"]["figures"]["runs"]
    assert stages["train"]["status"] == "ok"
    assert stages["verify_ckpt"]["status"] == "ok"
    # the study's gpu preset on the CPU: one run of it, 2 steps (issue 12: known to work without
    # a GPU); its claims cannot be judged on one run, so they fail
    assert stages["study"]["status"] == "ok" and stages["study"]["runs"] == 1
    assert stages["study"]["verdicts"] == {"depth-consistency": False, "depth-scaling": False}


def test_gpu_suite_skips_stages_past_its_budget(tmp_path):
    module = load("gpu_suite")
    suite = module.Suite(module.parse([str(tmp_path), "--device", "cpu", "--budget-s", "1"]))
    entry = suite.run("verify_x", [sys.executable, "-c", "pass"], "verify", need_s=5)
    assert entry["status"] == "skipped" and "budget" in entry["why"]
    suite.args.budget_s = 100
    entry = suite.run("verify_y", [sys.executable, "-c", "import sys; sys.exit(1)"], "verify")
    assert entry["status"] == "ok" and entry["returncode"] == 1  # a FAIL verdict is a result
    entry = suite.run("train", [sys.executable, "-c", "import sys; sys.exit(3)"], "train")
    assert entry["status"] == "failed"
    saved = json.loads((tmp_path / "suite.json").read_text())["stages"]
    assert [saved[k]["status"] for k in ("verify_x", "verify_y", "train")] == \
        ["skipped", "ok", "failed"]


def test_train_step_floor_writes_its_figures(tmp_path):
    path = tmp_path / "step.json"
    assert load("train_step_floor").main(["--models", "mlp,dit", "--depths", "2", "--batch", "2",
                                          "--reps", "1", "--warmup", "0", "--matmul", "64",
                                          "--json", str(path)]) == 0
    out = json.loads(path.read_text())
    assert out["peak_gflop_per_s"] > 0
    assert [(r["model"], r["units"]) for r in out["rows"]] == [("RDM-MLP-T", 2),
                                                               ("RDM-DiT-T/2", 4)]
    for r in out["rows"]:
        assert r["gflop"] > 0 and r["ops"] > 0 and 0 < r["share_of_peak"]


@pytest.mark.slow  # torch.compile on the CPU: 10-30 s
def test_train_step_floor_times_the_compiled_model(tmp_path):
    path = tmp_path / "step.json"
    assert load("train_step_floor").main(["--models", "mlp", "--depths", "2", "--batch", "2",
                                          "--reps", "1", "--warmup", "0", "--matmul", "64",
                                          "--compile", "--json", str(path)]) == 0
    row, = json.loads(path.read_text())["rows"]
    assert row["compile_first_call_s"] > 0 and row["compiled_forward_backward_ms"] > 0


def test_cohort_training_writes_its_ratios(tmp_path):
    path = tmp_path / "cohort.json"
    assert load("cohort_training").main(["--depths", "2", "--members", "2", "--width", "8",
                                         "--batch", "4", "--repeats", "1",
                                         "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    assert [(r["depth"], r["members"]) for r in rows] == [(2, 2)]
    assert rows[0]["ratio"] == pytest.approx(rows[0]["single_steps_ms"] / rows[0]["cohort_step_ms"],
                                             rel=0.01)


@pytest.mark.slow
def test_diffusers_parity_writes_both_models_per_bin(tmp_path):
    pytest.importorskip("diffusers")
    path = tmp_path / "parity.json"
    assert load("diffusers_parity").main(["--steps", "3", "--quick", "--out",
                                          str(tmp_path / "runs"), "--json", str(path)]) == 0
    out = json.loads(path.read_text())
    assert set(out["models"]) == {"RDM-DiT-N/2", "diffusers-dit-N/2"}
    assert out["reference"] == "RDM-DiT-N/2"
    assert list(out["diff_over_se"]) == ["diffusers-dit-N/2"]
    assert len(out["diff_over_se"]["diffusers-dit-N/2"]) == len(out["t_bins"]) == 4


@pytest.mark.parametrize("variants, words", [
    ("RDM-DiT-N/2", "two or more"), ("RDM-DiT-N/2,RDM-DiT-N/2", "two or more"),
    ("RDM-DiT-N/2,diffusers-dit-N/2+bogus=1", "cannot be built"),
    ("RDM-DiT-N/2,diffusers-dit-N/2+dit_init", "not KEY=VALUE"),
    ("RDM-DiT-N/2,no-such-model", "cannot be built")])
def test_parity_refuses_bad_variants_before_training(variants, words, tmp_path, capsys):
    pytest.importorskip("diffusers")
    module = load("diffusers_parity")
    assert module.run_main(module.main, ["--variants", variants, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())


def test_parity_variants_carry_their_model_options():
    pytest.importorskip("diffusers")
    parse = load("diffusers_parity").parse_variant
    assert parse("diffusers-dit-N/2+dit_init=true+shared_embedder=true") == (
        "diffusers-dit-N/2", {"dit_init": True, "shared_embedder": True})
    assert parse("RDM-DiT-N/2") == ("RDM-DiT-N/2", {})
