"""One writer per run folder (``rdm_dynamics.locks``), with real processes started at once:

* two ``train --resume`` of one run: exactly one trains, the other exits 2 naming the holder;
  every step is logged once; a killed holder's lock is free at once (the OS releases it);
* two ``study`` commands into one ``--out``: every run is trained exactly once, by one of them,
  and both end with the report and CSV of one uncontested study.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from test_bad_input import trained  # noqa: F401  (the shared tiny run, a module fixture)
from test_study import TINY, _without_timing

from rdm_dynamics.locks import RUN_LOCK, LockHeld, acquire, holder
from rdm_dynamics.training.checkpoint import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rdm_dynamics.train", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _logged_steps(run) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.heavy  # two processes of about 8 s each, at once
def test_two_resumed_trainings_of_one_run_one_trains_the_other_names_it(trained, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    args = ["--resume", str(run), "--steps", "100000", "--max-seconds", "4", "--no-progress",
            "--log-every", "1"]
    procs = [_train(*args), _train(*args)]
    results = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], results
    winner, loser = (procs[0], procs[1]) if codes[0] == 0 else (procs[1], procs[0])
    err = results[procs.index(loser)][1].strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert f"is in use by process {winner.pid}@" in err[0], err
    steps = _logged_steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == load_checkpoint(run).step > 2


def test_a_killed_holder_leaves_its_lock_free(tmp_path):
    """SIGKILL: the lock file stays, naming the dead process; the next writer takes it at once."""
    hold = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                             "from rdm_dynamics.locks import acquire\n"
                             f"lock = acquire({str(tmp_path / RUN_LOCK)!r})\n"
                             "print('held', flush=True)\ntime.sleep(60)\n"],
                            stdout=subprocess.PIPE, text=True, env=ENV)
    assert hold.stdout.readline().strip() == "held"
    with pytest.raises(LockHeld) as refused:
        acquire(tmp_path / RUN_LOCK)
    assert refused.value.who.startswith(f"{hold.pid}@")
    hold.send_signal(signal.SIGKILL)
    hold.wait()
    assert holder(tmp_path / RUN_LOCK).startswith(f"{hold.pid}@")  # the file is still there
    with acquire(tmp_path / RUN_LOCK):
        assert holder(tmp_path / RUN_LOCK).startswith(f"{os.getpid()}@")


def _study(spec, out) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rdm_dynamics.study", "--file", str(spec),
                             "--out", str(out), "--no-figures", "--jobs", "1"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # three tiny studies, two at once: 290 s on the 2 shared cores of CI here
def test_two_studies_into_one_folder_train_every_run_once_and_agree(tmp_path):
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    alone = _study(spec, tmp_path / "alone")
    alone.communicate(timeout=600)
    assert alone.returncode == 1  # one gate, no control: the claims cannot pass

    out = tmp_path / "shared"
    procs = [_study(spec, out), _study(spec, out)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [1, 1], [r[1][-2000:] for r in results]
    errs = "".join(r[1] for r in results)
    assert "Traceback" not in errs
    for log in sorted((out / "logs").glob("*.train.log")):  # every run trained by one process
        starts = [x for x in log.read_text().splitlines() if x.startswith("$ ")]
        assert len(starts) == 1, (log.name, starts)
    assert len(list((out / "logs").glob("*.train.log"))) == 2
    for run in (out / "runs").iterdir():  # and once: every step logged once
        steps = _logged_steps(run)
        assert steps == sorted(set(steps)), run.name
    a = json.loads((tmp_path / "alone" / "report.json").read_text())
    b = json.loads((out / "report.json").read_text())
    assert _without_timing(a) == _without_timing(b)
    assert (tmp_path / "alone" / "runs.csv").read_text() == (out / "runs.csv").read_text()
    assert errs.count("left to it for now") >= 1  # they met: one took a run the other held


def _tiny_plan(tmp_path):
    from rdm_dynamics.depth_study import load_study, plan

    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    return plan(load_study(str(spec)), tmp_path / "s", {"device": "cpu"})


def test_a_run_another_process_holds_is_left_to_it_then_read_when_it_finishes(tmp_path):
    """In process, no training: the 'other process' is a claim held here, which writes the
    run's measurement and lets go; the runner waits for it and reads that record."""
    import threading

    from rdm_dynamics.depth_study.plan import MeasureConfig
    from rdm_dynamics.depth_study.runs import StudyRunner
    from rdm_dynamics.depth_study.sharing import claim, measurement_path
    from rdm_dynamics.files import atomic_write_json

    runs = _tiny_plan(tmp_path)
    out = tmp_path / "s"
    lines = []
    runner = StudyRunner(out, MeasureConfig(), log=lines.append)
    records = {spec.id: {"id": spec.id, "digest": spec.digest(), "by": "other"} for spec in runs}
    held = [claim(out, spec.id) for spec in runs]
    assert runner.run_one(runs[0]) is None and "left to it" in lines[-1]

    def other_process_finishes():
        time.sleep(0.5)
        for spec, lock in zip(runs, held, strict=True):
            measurement_path(out, spec.id).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(measurement_path(out, spec.id), records[spec.id])
            lock.release()

    import torch

    threading.Thread(target=other_process_finishes).start()
    threads = torch.get_num_threads()
    try:
        assert runner.run(runs) == [records[spec.id] for spec in runs]
    finally:
        torch.set_num_threads(threads)
    assert not (out / "runs").exists()  # nothing was trained here


def test_a_shard_reports_every_finished_run_of_the_study(tmp_path):
    """--runs: the report describes the shard's runs and every other run already finished."""
    import argparse

    from rdm_dynamics import study as study_command
    from rdm_dynamics.depth_study.sharing import measurement_path
    from rdm_dynamics.files import atomic_write_json

    runs = _tiny_plan(tmp_path)
    other = {"id": runs[1].id, "digest": runs[1].digest(), "by": "the other shard"}
    measurement_path(tmp_path / "s", runs[1].id).parent.mkdir(parents=True)
    atomic_write_json(measurement_path(tmp_path / "s", runs[1].id), other)
    args = study_command.build_parser().parse_args(
        ["--file", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "s"), "--runs",
         runs[0].id])
    mine = {"id": runs[0].id, "by": "this shard"}
    assert study_command._finished(args, [runs[0]], [mine], tmp_path / "s") == [mine, other]
    stale = {**other, "digest": "another recipe"}
    atomic_write_json(measurement_path(tmp_path / "s", runs[1].id), stale)
    assert study_command._finished(args, [runs[0]], [mine], tmp_path / "s") == [mine]
    assert study_command._finished(argparse.Namespace(**{**vars(args), "runs": None}),
                                   [runs[0]], [mine], tmp_path / "s") == [mine]
