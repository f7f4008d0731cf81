"""The study command end to end: the report contract, resumption after SIGKILL, the presets, and
bad input (one line, exit code 2)."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from rdm_dynamics import study as study_command

TINY = """
[train]
model = "RDM-DiT-T/2"
model_options = { width = 16, heads = 2 }
data = "digits-gmm"
steps = 12
batch_size = 16
warmup = 2
log_every = 2
ckpt_every = 4
n_samples = 4
sample_steps = 2
device = "cpu"

[[grid]]
gate = ["rdm"]
depth = [1, 2]
init = ["smooth"]
seed = [0]

[measure]
checks = false
fd_samples = 16
sample_steps = 4
"""


def _study(*args, cwd=None, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rdm_dynamics.study", *args], cwd=cwd,
                          capture_output=True, text=True, env=env, **kw)


def _without_timing(report: dict) -> dict:
    out = {k: v for k, v in report.items() if k not in ("seconds",)}
    out["checks"] = [{k: v for k, v in c.items() if k != "seconds"} for c in report["checks"]]
    return out


@pytest.mark.slow  # two tiny studies, one of them killed and resumed: about 40 s under -n 2
def test_a_killed_study_resumes_to_the_same_report(tmp_path):
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    whole = _study("--file", str(spec), "--out", str(tmp_path / "whole"), "--jobs", "2",
                   "--no-figures", timeout=600)
    assert whole.returncode == 1, whole.stderr  # one gate, no control: the claims cannot pass
    assert "cannot be stated" in whole.stdout

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rdm_dynamics.study", "--file", str(spec),
                             "--out", str(out), "--jobs", "2", "--no-figures"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    while not list((out / "runs").glob("*/ckpt-00000004.json")):  # a run is training
        assert proc.poll() is None, "the study ended before any run reached step 4"
        time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 1.5))  # a moment in the middle of training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    orphans = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout
    assert not orphans.strip(), "a child of the killed study is still running"

    again = _study("--file", str(spec), "--out", str(out), "--jobs", "2", "--no-figures",
                   timeout=600)
    assert again.returncode == 1, again.stderr
    a = json.loads((tmp_path / "whole" / "report.json").read_text())
    b = json.loads((out / "report.json").read_text())
    assert _without_timing(a) | {"source": ""} == _without_timing(b) | {"source": ""}
    assert (tmp_path / "whole" / "runs.csv").read_text() == (out / "runs.csv").read_text()
    # a third call reuses everything
    third = _study("--file", str(spec), "--out", str(out), "--no-figures", timeout=600)
    assert third.stderr.count("finished earlier, kept") == 2


@pytest.mark.heavy
def test_smoke_preset_writes_the_report_contract(tmp_path):
    out = tmp_path / "s"
    result = _study("--preset", "smoke", "--max-steps", "6", "--runs",
                    "depth-2_gate-*_init-smooth_seed-0", "--out", str(out), "--jobs", "2",
                    timeout=600)
    assert result.returncode in (0, 1), result.stderr
    report = json.loads((out / "report.json").read_text())
    assert [c["id"] for c in report["checks"]] == ["depth-consistency", "depth-scaling"]
    assert [c["claim"] for c in report["checks"]] == ["C11", "C12"]
    assert report["runs"] == 2 and report["passed"] is (result.returncode == 0)
    for c in report["checks"]:  # re-applying expected gives the verdict
        ok = all((lo is None or (c["metrics"].get(k) is not None and c["metrics"][k] >= lo))
                 and (hi is None or (c["metrics"].get(k) is not None and c["metrics"][k] <= hi))
                 for k, (lo, hi) in c["expected"].items())
        assert ok == c["passed"]
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert {r["axis.gate"] for r in rows} == {"rdm", "plain"}
    for column in ("quality.fd_ratio", "denoising-risk.excess_risk_mean",
                   "trained-propagation.output_error_bf16",
                   "trained-sensitivity.sensitivity_ratio"):
        assert all(r[column] for r in rows), column
    assert (out / "depth-consistency.png").is_file() and (out / "depth-scaling.png").is_file()


def test_the_gpu_preset_plans_for_the_cpu_and_measure_settings_are_set(tmp_path):
    """The gpu preset as a CPU trial plans (issue 12: --device cpu --max-steps 2): every run a
    valid training configuration on the CPU, capped at 2 steps, without torch.compile, and
    ``--set measure.NAME=VALUE`` reaches the measurement.  One of its runs is trained and
    measured on the CPU in the slow lane (test_benchmarks.py::test_gpu_suite_smoke_on_the_cpu,
    through the GPU machine's script; about 20 s alone)."""
    args = study_command.build_parser().parse_args(
        ["--preset", "gpu", "--device", "cpu", "--max-steps", "2", "--set", "compile=false",
         "--set", "measure.fd_samples=16", "--set", "measure.quick=false",
         "--out", str(tmp_path / "g")])
    study, runs = study_command._plan(args)
    assert len(runs) == 5 * 3 * 2 + 3 * 2  # five gates x 3 depths x 2 seeds + the control
    for run in runs:
        c = run.config
        assert (c.device, c.steps, c.compile, c.image_size, c.bf16) == ("cpu", 2, False, 16, True)
        assert c.warmup <= 2 and c.ckpt_every <= 2
    assert (study.measure.fd_samples, study.measure.quick, study.measure.sample_steps) == \
        (16, False, 50)


BAD = [
    (["--preset", "nope"], "unknown preset"),
    (["--file", "missing.toml"], "does not exist"),
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--preset", "smoke", "--runs", "no-such-run"], "matches no run"),
    (["--preset", "smoke", "--set", "colour=red"], "--set wants KEY=VALUE"),
    (["--preset", "smoke", "--set", "steps=many"], "steps must be int"),
    (["--preset", "smoke", "--set", "measure.fd=3"], "unknown setting(s) fd"),
    (["--preset", "smoke", "--set", "measure.fd_samples=lots"], "fd_samples must be int"),
    (["--preset", "smoke", "--set", "measure.quick=3"], "measure.quick must be bool"),
    (["--preset", "smoke", "--set", "measure.guidance=nan"], "guidance must be a finite float"),
    (["--preset", "smoke", "--set", "measure.fd_samples=-1"], "fd_samples must be >= 0"),
    (["--preset", "smoke", "--max-steps", "0"], "--max-steps must be at least 1"),
    (["--preset", "smoke", "--device", "tpu"], "--device"),
    (["--preset", "smoke", "--file", "x.toml"], "not allowed with"),
    (["--show-preset", "nope"], "unknown preset"),
    (["--preset", "smoke", "--cohort", "0"], "--cohort must be at least 1"),
    (["--preset", "smoke", "--cohort", "3", "--nproc-per-run", "2"], "cannot go with"),
]


@pytest.mark.parametrize("args,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(args, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert study_command.main(args) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("mine")
    assert study_command.main(["--preset", "smoke", "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err and target.read_text() == "mine"


def test_show_preset_prints_a_file_study_reads(tmp_path, capsys):
    assert study_command.main(["--show-preset", "cpu"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "mine.toml"
    path.write_text(text)
    from rdm_dynamics.depth_study import load_study, plan

    assert len(plan(load_study(str(path)), tmp_path)) == len(plan(load_study("cpu"), tmp_path))


@pytest.fixture
def torch_threads():
    """A study run in process sets torch's thread count (its share of the cores): restored."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.heavy
def test_a_study_folder_is_not_continued_under_another_recipe(tmp_path, capsys, torch_threads):
    """In process (the study's own children still train): the refusal comes before any work."""
    spec = tmp_path / "tiny.toml"
    one_run = TINY.replace("depth = [1, 2]", "depth = [1]").replace("fd_samples = 16",
                                                                    "fd_samples = 0")
    spec.write_text(one_run)
    out = tmp_path / "s"
    assert study_command.main(["--file", str(spec), "--out", str(out), "--no-figures"]) == 1
    assert not list(out.glob("*.png"))  # figures only when asked
    assert json.loads((out / "report.json").read_text())["figures"] == []
    trained = sorted(p.name for p in (out / "runs").rglob("*") if p.is_file())
    capsys.readouterr()
    spec.write_text(one_run.replace("batch_size = 16", "batch_size = 8"))
    assert study_command.main(["--file", str(spec), "--out", str(out), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert "started with other settings (batch_size)" in err and "Traceback" not in err
    assert err.count("\n") == 2  # the study's header line, then one error line
    assert sorted(p.name for p in (out / "runs").rglob("*") if p.is_file()) == trained


def test_a_run_with_several_processes_is_trained_through_torchrun(tmp_path):
    from rdm_dynamics.depth_study.plan import MeasureConfig
    from rdm_dynamics.depth_study.runs import StudyRunner

    runner = StudyRunner(tmp_path, MeasureConfig(), nproc_per_run=2)
    assert runner._python("rdm_dynamics.train")[1:5] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert runner._python("rdm_dynamics.verify") == [sys.executable, "-m", "rdm_dynamics.verify"]
    assert StudyRunner(tmp_path, MeasureConfig())._python("rdm_dynamics.train") == \
        [sys.executable, "-m", "rdm_dynamics.train"]


@pytest.mark.slow  # torchrun with two gloo processes, then the study's own steps: about 25 s
def test_nproc_per_run_trains_a_study_run_on_two_processes(tmp_path):
    from rdm_dynamics.training.checkpoint import load_checkpoint

    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY.replace("depth = [1, 2]", "depth = [1]").replace("fd_samples = 16",
                                                                        "fd_samples = 0"))
    done = _study("--file", str(spec), "--out", str(tmp_path / "s"), "--no-figures",
                  "--nproc-per-run", "2", timeout=600)
    assert done.returncode in (0, 1), done.stderr
    runs = list((tmp_path / "s" / "runs").iterdir())
    assert len(runs) == 1
    checkpoint = load_checkpoint(runs[0])
    assert checkpoint.meta["world_size"] == 2 and checkpoint.meta["replica_max_param_diff"] == 0.0
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["runs"] == 1 and not report["failed_runs"]


COHORT_GRID = """
[[grid]]
gate = ["rdm"]
depth = [1, 2]
init = ["smooth"]
seed = [0, 1]
lr = [1e-3, 3e-3]
"""


def _cohort_study(tmp_path):
    spec = tmp_path / "cohort.toml"
    spec.write_text(TINY.replace("""[[grid]]
gate = ["rdm"]
depth = [1, 2]
init = ["smooth"]
seed = [0]
""", COHORT_GRID).replace("fd_samples = 16", "fd_samples = 0").replace("steps = 12", "steps = 8"))
    return spec


def test_cohorts_group_the_runs_that_differ_in_seed_and_lr(tmp_path):
    from rdm_dynamics.depth_study import StudyRunner, load_study, plan

    study = load_study(str(_cohort_study(tmp_path)))
    runs = plan(study, tmp_path / "out")
    units = StudyRunner(tmp_path / "out", study.measure, cohort=3).cohorts(runs)
    assert [len(u) for u in units] == [3, 1, 3, 1]
    assert [s.id for u in units for s in u] == [s.id for s in runs]  # plan order, all runs
    assert all(len({s.depth for s in u}) == 1 for u in units)
    assert StudyRunner(tmp_path / "out", study.measure, cohort=1).cohorts(runs) == \
        [[s] for s in runs]
    assert len(StudyRunner(tmp_path / "out", study.measure, cohort=3,
                           nproc_per_run=2).cohorts(runs)) == len(runs)


@pytest.mark.slow  # a cohort study whole, and one killed in training and resumed: about 60 s
def test_a_killed_cohort_study_resumes_to_the_same_report(tmp_path):
    spec = _cohort_study(tmp_path)
    args = ["--file", str(spec), "--jobs", "2", "--no-figures", "--cohort", "4"]
    whole = _study(*args, "--out", str(tmp_path / "whole"), timeout=600)
    assert whole.returncode == 1, whole.stderr
    assert whole.stderr.count("training as one cohort") == 2
    records = [json.loads(p.read_text()) for p in (tmp_path / "whole" / "measurements").glob("*")]
    assert len(records) == 8 and all(len(r["trained_with"]) == 4 for r in records)

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rdm_dynamics.study", *args, "--out",
                             str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    while not list((out / "runs").glob("*/ckpt-00000004.json")):  # a cohort is training
        assert proc.poll() is None, "the study ended before any run reached step 4"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    again = _study(*args, "--out", str(out), timeout=600)
    assert again.returncode == 1, again.stderr
    a = json.loads((tmp_path / "whole" / "report.json").read_text())
    b = json.loads((out / "report.json").read_text())
    assert _without_timing(a) | {"source": ""} == _without_timing(b) | {"source": ""}
    assert (tmp_path / "whole" / "runs.csv").read_text() == (out / "runs.csv").read_text()
