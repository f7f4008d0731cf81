"""Checks in worker processes (``verify --jobs N``): the same report numbers as a serial run,
results in registry order, a crash reported per check, no worker outliving Ctrl-C."""

import multiprocessing
import os
import signal
import subprocess
import sys
import time
import types

import pytest

from rdm_dynamics.checks import CheckConfig, Measurement, run_checks
from rdm_dynamics.checks.report import RenderedFigure, save_figure
from rdm_dynamics.checks.rules import Rule
from rdm_dynamics.checks.workers import default_jobs, run_in_processes, start_method

pytestmark = pytest.mark.skipif(start_method("cpu") != "fork",
                                reason="the fake check modules reach workers by fork")


def fake_check(name, measure):
    """A claim module made in memory (workers are forked, so they find it in sys.modules): its
    ``measure`` is given, its one rule holds for any finite first metric."""
    module = types.ModuleType(f"fake_checks_{name.replace('-', '_')}")
    module.CLAIM, module.ID, module.TITLE, module.THEORY = "C0", name, name, "-"
    module.measure = measure
    module.rules = lambda measured: [Rule(next(iter(measured.metrics)), (None, None))]
    module.summary = lambda measured, verdict: "fine"
    module.headline = lambda measured: ""
    module.figure = lambda measured: measured.curves.get("draw")
    sys.modules[module.__name__] = module
    return module


def passing(config):
    def draw(fig):
        fig.add_subplot().plot([0, 1], [config.depth, config.seed])

    return Measurement({"depth": config.depth, "seed": config.seed}, config,
                       curves={"draw": draw})


def raising(config):
    raise RuntimeError("planted fault")


def exiting(config):
    os._exit(3)


def killed(config):
    os.kill(os.getpid(), signal.SIGKILL)


#: Where a sleeping check says it finished its sleep (set by the interrupt test).
FINISHED = {}


def sleeping(config):
    time.sleep(60)
    if "marker" in FINISHED:
        FINISHED["marker"].write_text("finished")
    return passing(config)


def test_a_crash_is_reported_for_its_check_and_the_others_go_on(tmp_path):
    checks = {name: fake_check(name, run) for name, run in
              [("ok-1", passing), ("raises", raising), ("exits", exiting), ("killed", killed),
               ("ok-2", passing)]}
    results = run_in_processes(CheckConfig(depth=32, seed=5), checks, jobs=2)
    assert [r.id for r in results] == list(checks)
    by_check = dict(zip(checks, results, strict=True))
    for name in ("ok-1", "ok-2"):
        r = by_check[name]
        assert r.passed and r.metrics == {"depth": 32, "seed": 5} and r.seconds > 0
        assert isinstance(r.figure, RenderedFigure) and r.figure.png[:4] == b"\x89PNG"
        save_figure(r.figure, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").read_bytes() == r.figure.png
    assert "RuntimeError: planted fault" in by_check["raises"].summary
    assert "exited with code 3" in by_check["exits"].summary
    assert "SIGKILL" in by_check["killed"].summary
    for name in ("raises", "exits", "killed"):
        assert not by_check[name].passed and by_check[name].metrics == {}
    assert not multiprocessing.active_children()


def test_no_figures_and_serial_runs():
    checks = {"ok": fake_check("ok", passing)}
    assert run_in_processes(CheckConfig(), checks, jobs=2, figures=False)[0].figure is None
    serial = run_checks(CheckConfig(), {"raises": fake_check("raises", raising)}, progress=False,
                        jobs=4)  # one check: runs here, in this process
    assert "planted fault" in serial[0].summary


def test_an_interrupt_terminates_every_worker(tmp_path, monkeypatch):
    """Ctrl-C terminates the running workers: none is left, and none was waited for (a sleeping
    check that ran to its end would leave its marker file)."""
    marker = tmp_path / "finished"
    monkeypatch.setitem(FINISHED, "marker", marker)
    checks = {name: fake_check(name, run) for name, run in
              [("ok", passing), ("sleeps-1", sleeping), ("sleeps-2", sleeping)]}

    def interrupt(result, running):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_in_processes(CheckConfig(), checks, jobs=3, figures=False, on_done=interrupt)
    assert not multiprocessing.active_children()
    assert not marker.exists()


def test_default_jobs_is_one_per_core_at_most_one_per_check():
    assert default_jobs(1) == 1
    assert 1 <= default_jobs(100) <= (os.cpu_count() or 1)


@pytest.mark.heavy
def test_parallel_results_are_bit_identical_to_the_serial_ones():
    """Every check's metrics, bands, verdict and summary are the same run in this process one
    after another and in two worker processes; only the timings differ.  (The command line's
    default, --jobs 2 here, writes the JSON contract in test_verify's default run.)"""
    from rdm_dynamics.checks import registry

    config = CheckConfig(depth=32, quick=True)
    checks = registry()
    serial = run_checks(config, checks, progress=False, jobs=1)
    parallel = run_checks(config, checks, progress=False, jobs=2, figures=False)
    assert [r.id for r in parallel] == [r.id for r in serial] == list(checks)
    for a, b in zip(serial, parallel, strict=True):
        a, b = a.to_json(), b.to_json()  # the report's entries: floats exact, NaN as null
        a.pop("seconds"), b.pop("seconds")
        assert a == b, a["id"]


def test_a_check_on_the_global_generator_would_be_caught():
    """The negative control of the test above: checks drawing from torch's global generator
    (not their own stream) give numbers that depend on where and after what they ran."""
    import torch

    def global_draw(config):
        return Measurement({"x": float(torch.randn(()))}, config)

    checks = {name: fake_check(name, global_draw) for name in ("global-1", "global-2")}
    torch.manual_seed(0)
    serial = [r.metrics["x"] for r in run_checks(CheckConfig(), checks, progress=False, jobs=1)]
    torch.manual_seed(0)
    parallel = [r.metrics["x"] for r in run_in_processes(CheckConfig(), checks, jobs=2)]
    assert serial[1] != parallel[1]


@pytest.mark.parametrize("jobs,needle", [("0", "--jobs must be at least 1, got 0"),
                                         ("two", "--jobs must be an integer")])
def test_bad_jobs_is_one_line_and_exit_two(jobs, needle, capsys, tmp_path):
    from rdm_dynamics.verify import main

    assert main(["--jobs", jobs, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("method", ["forkserver"])
def test_workers_from_a_forkserver_give_the_same_numbers(method, monkeypatch):
    """CUDA runs start workers from a forkserver (spawn where there is none; the same code
    path): they import the check module by name and get the config by pickling; the numbers are
    the in-process ones.  (About 10 s: the forkserver imports torch and the checks once.)"""
    from rdm_dynamics.checks import registry, workers

    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} here")
    monkeypatch.setattr(workers, "start_method", lambda device: method)
    config = CheckConfig(depth=16, quick=True)
    checks = {"depth-limit": registry()["depth-limit"]}
    here = run_checks(config, checks, progress=False, jobs=1)[0]
    there = run_in_processes(config, checks, jobs=2)[0]
    assert there.metrics == here.metrics and there.summary == here.summary
    assert isinstance(there.figure, RenderedFigure)


def test_workers_exit_when_their_parent_is_killed(tmp_path):
    """SIGKILL gives the parent no chance to terminate its workers: they notice and exit before
    their check ends (a worker left alone would sleep its 60 s and then leave a marker)."""
    pid_file, marker = tmp_path / "worker.pid", tmp_path / "finished"
    script = f"""
import os, sys, time, types
from rdm_dynamics.checks import CheckConfig
from rdm_dynamics.checks.workers import run_in_processes
def measure(config):
    open({str(pid_file)!r}, "w").write(str(os.getpid()))
    time.sleep(60)
    open({str(marker)!r}, "w").write("finished")
module = types.ModuleType("fake_sleeper")
module.CLAIM, module.ID, module.TITLE, module.measure = "C0", "sleeper", "sleeper", measure
sys.modules["fake_sleeper"] = module
run_in_processes(CheckConfig(), {{"a": module, "b": module}}, jobs=2, figures=False)
"""
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        while not pid_file.exists() or not pid_file.read_text():
            assert parent.poll() is None, "the parent ended before a worker started"
            time.sleep(0.1)
        worker = int(pid_file.read_text())
    finally:
        parent.kill()
        parent.wait()
    while True:  # the worker is gone: killed by its watchdog, or (a fault) done sleeping
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    assert not marker.exists(), "the worker outlived its parent until its check ended"
