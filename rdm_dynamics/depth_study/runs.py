"""Running a depth study: train every run of the plan, measure it, keep what is finished.

Each run goes through three steps, each resumable on its own:

1. **train**: ``python -m rdm_dynamics.train`` in a child process (through ``torchrun`` when a run
   uses several processes), from the run's configuration file, or ``--resume`` when the run
   folder holds a checkpoint: a killed run continues exactly where its last checkpoint left it.
2. **check**: ``python -m rdm_dynamics.verify --ckpt`` on the trained run (the trained-model
   checks C8 to C10), its report kept under ``<out>/checks/<id>/``.
3. **quality**: samples of the trained model (EMA weights) scored by the digit classifier
   (``training.metrics.DigitJudge``): the Frechet distance and its real-vs-real floor.

A run is finished when ``<out>/measurements/<id>.json`` exists and was written for the same
configuration (its digest); a restarted study skips finished runs and resumes the others, so an
interrupted study ends with the same measurements as an uninterrupted one.  Every child process
is killed with the study (Linux ``PR_SET_PDEATHSIG``), so a killed study leaves no orphan
writing into a run folder.  ``jobs`` runs go at a time, each child limited to its share of the
CPU threads.

Cohorts (``cohort`` > 1).  Runs whose configurations differ only in seed and learning rate are
trained up to ``cohort`` at a time as one batched model (``train --cohort``, ``training.cohort``)
in step 1, then checked and measured one by one; a cohort is what one of the ``jobs`` slots
trains.  A run of a cohort that another process holds is left to it (and waited for later, alone).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from ..cli import UsageError
from ..files import atomic_write_bytes, atomic_write_json
from ..limits import load_json, loads_json
from ..locks import RUN_LOCK, acquire
from ..training.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from ..training.settings import FLAG_ONLY, SETTINGS, read_mapping_file
from .plan import MeasureConfig, RunSpec
from .sharing import LockHeld, check_stored_recipe, claim, finished_record, measurement_path

__all__ = ["StudyRunner", "measurement_path", "TRAIN_FAILED"]

#: Exit code of ``train`` for a run whose loss diverged: a result, recorded, not an error.
TRAIN_DIVERGED = 1
#: What a run's record says when training failed for another reason.
TRAIN_FAILED = "failed"


#: Run in front of every child: a one-line launcher that asks Linux to kill the child when the
#: thread that started it (hence the study) dies (``PR_SET_PDEATHSIG``), exits if the study is
#: already gone, then becomes the child by exec.  Done in the child's own single-threaded
#: interpreter: a ``preexec_fn`` would run between fork and exec of this multi-threaded process,
#: where Python's locks can deadlock.
_LAUNCHER = ("import ctypes, os, signal, sys\n"
             "try:\n"
             "    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)\n"
             "except OSError:\n"
             "    pass\n"
             "if os.getppid() != int(sys.argv[1]):\n"
             "    sys.exit(137)\n"
             "os.execv(sys.argv[2], sys.argv[2:])\n")


def _launched(args: list[str]) -> list[str]:
    """``args`` behind the launcher: killed with the study (Linux), unchanged elsewhere."""
    if not sys.platform.startswith("linux"):
        return args
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *args]


def _run_settings(spec: RunSpec) -> dict:
    """What a run's configuration file holds: its settings, less those a file may not set."""
    return {k: v for k, v in spec.config.to_json().items() if k not in FLAG_ONLY}


class StudyRunner:
    """Runs the plan's runs, ``jobs`` at a time (threads, each driving child processes)."""

    def __init__(self, out: str | Path, measure: MeasureConfig, *, jobs: int = 1,
                 device: str = "cpu", nproc_per_run: int = 1, cohort: int = 1, log=print):
        self.out, self.measure, self.jobs = Path(out), measure, max(1, int(jobs))
        self.cohort = max(1, int(cohort))
        self.device, self.nproc = device, max(1, int(nproc_per_run))
        self.log = log
        self._judges: dict = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # set on Ctrl-C: a wait for another's run ends
        self._children: set[subprocess.Popen] = set()
        cores = os.cpu_count() or 1
        self.threads = max(1, cores // self.jobs)

    # -- one step per child process --------------------------------------------------------

    def _child(self, args: list[str], log_name: str) -> int:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads),
               "MKL_NUM_THREADS": str(self.threads), "PYTHONUNBUFFERED": "1"}
        log = self.out / "logs" / f"{log_name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as sink:
            sink.write(f"$ {' '.join(args)}\n".encode())
            sink.flush()
            proc = subprocess.Popen(_launched(args), stdout=sink, stderr=subprocess.STDOUT,
                                    env=env)
            with self._lock:
                self._children.add(proc)
            try:
                return proc.wait()
            finally:
                with self._lock:
                    self._children.discard(proc)

    def stop_children(self) -> None:
        """Interrupt every running child (they save nothing half-written: writes are atomic)."""
        with self._lock:
            for proc in self._children:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)

    def _python(self, module: str) -> list[str]:
        if self.nproc > 1 and module == "rdm_dynamics.train":
            return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={self.nproc}", "-m", module]
        return [sys.executable, "-m", module]

    def _trained_step(self, spec: RunSpec) -> int:
        try:
            latest = latest_checkpoint(spec.folder)
            return load_checkpoint(latest).step if latest else 0
        except (CheckpointError, OSError, ValueError):
            return 0

    @staticmethod
    def _same_recipe(spec: RunSpec, before: dict, now: dict) -> None:
        """A run folder is continued only under its own recipe: settings that a resume may not
        change (SETTINGS[...].resumable false) must be those it started with."""
        changed = sorted(k for k, s in SETTINGS.items()
                         if not s.resumable and k in now and before.get(k) != now[k])
        if changed:
            raise UsageError(f"run {spec.id} was started with other settings ({', '.join(changed)}"
                             f"); use another --out for a new recipe")

    def _member(self, spec: RunSpec) -> list[str]:
        """What ``train`` is given for a run: its folder to resume, or its configuration file,
        written here, for a new run."""
        config = self.out / "configs" / f"{spec.id}.yaml"
        settings = _run_settings(spec)
        if latest_checkpoint(spec.folder) is not None:
            return ["--resume", str(spec.folder)]
        if spec.folder.exists() and config.is_file():
            # this study started the run and it died before its first checkpoint: what the
            # folder holds (a log, a sample grid) is this study's own, and train starts anew,
            # unless a train still writes there (its lock: LockHeld names it)
            with acquire(spec.folder / RUN_LOCK):
                shutil.rmtree(spec.folder)
        text = yaml.safe_dump(settings, sort_keys=False)
        config.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(config, text.encode())
        return ["--config", str(config)]

    def train(self, spec: RunSpec) -> str:
        """Train (or resume) one run to its step budget: 'done', 'diverged' or TRAIN_FAILED."""
        if self._trained_step(spec) >= spec.config.steps:
            return "done"
        member = self._member(spec)
        if member[0] == "--resume":
            member = ["--out", member[1], "--resume"]
        code = self._child([*self._python("rdm_dynamics.train"), *member], f"{spec.id}.train")
        if code in (0, TRAIN_DIVERGED):
            return "done" if code == 0 else "diverged"
        self._refused(code, spec.id)
        return TRAIN_FAILED

    def train_cohort(self, specs: list[RunSpec]) -> list[str]:
        """Train (or resume) runs of one recipe, differing in seed and learning rate, as one
        batched model (``train --cohort``, ``training.cohort``); each run's outcome as
        :meth:`train` gives it.  The cohort's log is the first run's train log."""
        from ..training.cohort import DIVERGED_FILE

        args = [*self._python("rdm_dynamics.train"), "--cohort"]
        for spec in specs:
            args.append(self._member(spec)[1])
        code = self._child(args, f"{specs[0].id}.train")
        if code == 0:
            return ["done"] * len(specs)
        self._refused(code, specs[0].id)
        if code != TRAIN_DIVERGED:
            return [TRAIN_FAILED] * len(specs)
        return ["done" if self._trained_step(s) >= s.config.steps else
                "diverged" if (s.folder / DIVERGED_FILE).is_file() else TRAIN_FAILED
                for s in specs]

    def _refused(self, code: int, run_id: str) -> None:
        """Raise for a child's exit code that stops the study: bad input, an interrupt."""
        if code == 2:
            raise UsageError(f"run {run_id}: train refused its configuration (see "
                             f"{self.out / 'logs' / (run_id + '.train.log')})")
        if code in (130, -signal.SIGINT, -signal.SIGKILL, -signal.SIGTERM):
            raise KeyboardInterrupt

    def check(self, spec: RunSpec) -> dict:
        """The trained-model checks' report of one run: {check id: {passed, metrics, ...}}."""
        folder = self.out / "checks" / spec.id
        # --jobs: the run's share of the cores, as its training had (OMP_NUM_THREADS): verify's
        # own default, a worker per core, would put jobs x cores processes on the cores
        args = [*self._python("rdm_dynamics.verify"), "--ckpt", str(spec.folder), "--out",
                str(folder), "--seed", str(spec.config.seed), "--device", self.device,
                "--jobs", str(self.threads), "--no-figures"]
        if self.measure.quick:
            args.append("--quick")
        if self.measure.only:
            args += ["--only", self.measure.only]
        code = self._child(args, f"{spec.id}.check")
        report = folder / "report.json"
        if code not in (0, 1) or not report.is_file():
            return {"error": f"verify --ckpt exited with {code}"}
        try:
            checks = load_json(report, "report")["checks"]  # bounded (limits.py)
        except (OSError, ValueError, KeyError, TypeError):
            return {"error": f"verify --ckpt wrote an unreadable {report}"}
        return {c["id"]: {k: c.get(k) for k in ("claim", "passed", "metrics", "applicable")}
                for c in checks}

    def _judge(self, kind: str, size: int, frames: int | None):
        from ..training.metrics import DigitJudge

        key = (kind, size, frames)
        with self._lock:
            if key not in self._judges:
                judge = DigitJudge(kind, size, **({"frames": frames} if frames else {}))
                self._judges[key] = (judge, judge.floor())
            return self._judges[key]

    def quality(self, ckpt) -> dict:
        """FD of the samples of a trained run (its checkpoint ``ckpt``, EMA weights) against the
        training split, beside its real floor (numpy's BLAS held to this process's share of the
        threads)."""
        from threadpoolctl import threadpool_limits

        n = self.measure.fd_samples
        if n == 0:
            return {}
        with threadpool_limits(self.threads):
            return self._quality(ckpt, n)

    def _quality(self, ckpt, n: int) -> dict:
        from ..models import load_model
        from ..sde import make_sde
        from ..training.sampling import NonFiniteSamples, cycle_labels, generate
        from ..training.settings import TrainConfig
        from ..training.validation import validate_config

        net = load_model(ckpt, "ema")
        trained = TrainConfig.from_json(ckpt.meta["train_config"])
        validate_config(trained)  # a checkpoint is input (training.validation)
        shape = net.sample_shape
        kind = "moving-digits" if len(shape) == 4 else "digits"
        if trained.data not in ("digits", "digits-gmm", "moving-digits"):
            return {"fd_note": f"no digit classifier for data {trained.data!r}"}
        judge, floor = self._judge(kind, shape[-1], shape[0] if len(shape) == 4 else None)
        labels = cycle_labels(n, net.config["num_classes"])
        try:
            x = generate(net, n, sde=make_sde(trained.sde, **trained.sde_options),
                         prediction=trained.prediction, t_min=trained.t_min, labels=labels,
                         guidance=self.measure.guidance, sampler=trained.sampler,
                         steps=self.measure.sample_steps, seed=trained.seed, device=self.device,
                         disable=True)
        except NonFiniteSamples as exc:  # a property of the trained run: recorded
            return {"fd_note": str(exc)}
        m = judge.evaluate(x, None if labels is None else labels.cpu())
        fd, floor_fd = m["fd"], floor["real_fd"]
        return {"fd": fd, "fd_se": m["fd_se"], "fd_floor": floor_fd,
                "fd_floor_se": floor["real_fd_se"], "fd_ratio": fd / floor_fd,
                "fd_ratio_se": m["fd_se"] / floor_fd, "accuracy": m.get("accuracy", math.nan)}

    def step0(self, spec: RunSpec) -> dict:
        """The run's signal propagation at initialisation (``propagation.step0_figures``), on
        the CPU with this process's share of the threads; {} when not measured."""
        from .propagation import step0_figures

        if not self.measure.step0:
            return {}
        cfg = dataclasses.replace(spec.config, device="cpu", bf16=False, compile=False)
        return step0_figures(cfg)

    def bf16_error(self, spec: RunSpec) -> dict:
        """C8's bf16 output error of the trained run (``propagation.bf16_output_error``)."""
        from .propagation import bf16_output_error

        return bf16_output_error(spec.folder, seed=spec.config.seed, device=self.device,
                                 quick=self.measure.quick)

    # -- the whole study ---------------------------------------------------------------------

    def run_one(self, spec: RunSpec, wait: float = 0.0) -> dict | None:
        """The record of one run, trained, checked and measured under this process's claim on
        it (``sharing``); None if another process holds the run longer than ``wait`` s."""
        try:
            held = claim(self.out, spec.id, wait, stop=self._stopping.is_set)
        except LockHeld as exc:
            self.log(f"{spec.id}: held by process {exc.who}, left to it for now")
            return None
        with held:
            check_stored_recipe(spec)  # before resuming or reporting it
            record = finished_record(self.out, spec)
            if record is not None:
                self.log(f"{spec.id}: finished earlier, kept")
                return record
            return self._train_and_measure(spec)

    def _train_and_measure(self, spec: RunSpec) -> dict:
        step0 = self.step0(spec)
        self.log(f"{spec.id}: training to step {spec.config.steps}")
        return self._measured(spec, self.train(spec), step0)

    def _measured(self, spec: RunSpec, status: str, step0: dict, cohort=None) -> dict:
        """The record of a run trained to ``status``: its checks and scores, written."""
        record = {"id": spec.id, "axes": spec.axes, "depth": spec.depth,
                  "digest": spec.digest(), "train_status": status, "steps": spec.config.steps,
                  **({"step0": step0} if step0 else {}),
                  **({"trained_with": cohort} if cohort else {})}
        if status == "done":
            ckpt = load_checkpoint(latest_checkpoint(spec.folder))
            log = spec.folder / "log.jsonl"
            losses = _losses(log)
            record.update(step=ckpt.step, final_loss=losses[-1] if losses else math.nan,
                          checks=self.check(spec) if self.measure.checks else {},
                          quality=self.quality(ckpt))
            if self.measure.bf16_error:
                record["propagation"] = self.bf16_error(spec)
        path = measurement_path(self.out, spec.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)
        self.log(f"{spec.id}: {status}")
        return record

    # -- cohorts: the runs of one recipe that differ in seed and learning rate ----------------

    def cohorts(self, runs: list[RunSpec]) -> list[list[RunSpec]]:
        """The runs grouped for training: runs whose configurations differ only in seed and
        learning rate (``training.cohort.cohort_key``), at most ``cohort`` to a group, in plan
        order (a group goes where its first run was)."""
        from ..training.cohort import cohort_key

        if self.cohort == 1 or self.nproc > 1:
            return [[spec] for spec in runs]
        groups: dict[str, list[list[RunSpec]]] = {}
        units: list[list[RunSpec]] = []
        for spec in runs:
            key = repr(cohort_key(spec.config).to_json())
            open_ = groups.setdefault(key, [])
            if not open_ or len(open_[-1]) == self.cohort:
                open_.append([])
                units.append(open_[-1])
            open_[-1].append(spec)
        return units

    def _train_together(self, specs: list[RunSpec]):
        """(run, training status, the ids of the cohort it was trained in, or None for a run
        trained to its budget before) for every run of ``specs``."""
        training = [s for s in specs if self._trained_step(s) < s.config.steps]
        ids = [s.id for s in training]
        statuses = {}
        if training:
            self.log(f"{ids[0]} and {len(ids) - 1} more: training as one cohort to step "
                     f"{training[0].config.steps}")
            statuses = dict(zip(ids, self.train_cohort(training), strict=True))
        return [(s, statuses.get(s.id, "done"), ids if s.id in statuses else None)
                for s in specs]

    def run_cohort(self, specs: list[RunSpec], wait: float = 0.0) -> list[dict | None]:
        """Every record of a cohort, as :meth:`run_one` gives it: the runs this process can
        claim and that are not finished are trained together; a run another process holds is
        None (left to the caller)."""
        if len(specs) == 1:
            return [self.run_one(specs[0], wait)]
        with contextlib.ExitStack() as claims:
            records: dict[str, dict | None] = {}
            todo = []
            for spec in specs:
                try:
                    claims.enter_context(claim(self.out, spec.id, 0.0,
                                               stop=self._stopping.is_set))
                except LockHeld as exc:
                    self.log(f"{spec.id}: held by process {exc.who}, left to it for now")
                    records[spec.id] = None
                    continue
                check_stored_recipe(spec)
                records[spec.id] = finished_record(self.out, spec)
                if records[spec.id] is not None:
                    self.log(f"{spec.id}: finished earlier, kept")
                else:
                    todo.append(spec)
            if len(todo) == 1:
                records[todo[0].id] = self._train_and_measure(todo[0])
            elif todo:
                step0 = {spec.id: self.step0(spec) for spec in todo}
                for spec, status, cohort in self._train_together(todo):
                    records[spec.id] = self._measured(spec, status, step0[spec.id], cohort)
            return [records[spec.id] for spec in specs]

    def run(self, runs: list[RunSpec]) -> list[dict]:
        """Every run's record, in plan order: first the runs no other process holds, then, as
        their holders release them, the others (finished by them, or resumed here if they
        died).  This process scores samples between its children: it keeps to its share of the
        CPU threads too."""
        import torch

        for spec in runs:  # every refusal before any work
            config = self.out / "configs" / f"{spec.id}.yaml"
            if config.is_file():
                self._same_recipe(spec, read_mapping_file(config, "run configuration"),
                                  _run_settings(spec))
            check_stored_recipe(spec)
        torch.set_num_threads(self.threads)
        first, units = {}, self.cohorts(runs)
        for unit, records in zip(units, self._pass(units, 0.0, self.run_cohort), strict=True):
            first.update({spec.id: r for spec, r in zip(unit, records, strict=True)})
        left = [spec for spec in runs if first[spec.id] is None]
        later = iter(self._pass(left, float("inf"), self._record))
        return [first[spec.id] if first[spec.id] is not None else next(later) for spec in runs]

    def _pass(self, units: list, wait: float, work) -> list:
        if self.jobs == 1:
            return [work(unit, wait) for unit in units]
        pool, futures = ThreadPoolExecutor(max_workers=self.jobs), []
        try:
            futures = [pool.submit(work, unit, wait) for unit in units]
            return [f.result() for f in futures]
        except BaseException:
            self._stopping.set()
            for f in futures:
                f.cancel()
            self.stop_children()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _record(self, spec: RunSpec, wait: float) -> dict | None:
        record = self.run_one(spec, wait)
        if record is None and wait > 0:
            raise KeyboardInterrupt  # stopped (Ctrl-C) while waiting for another's run
        return record


def _losses(log: Path) -> list[float]:
    """The losses of a run's log.jsonl (lines that do not parse within limits.py's bounds are
    skipped)."""
    losses = []
    if not log.is_file():
        return losses
    with open(log, encoding="utf-8", errors="replace") as lines:  # streamed, line by line
        for line in lines:
            try:
                entry = loads_json(line, "log line")
            except ValueError:
                continue
            if isinstance(entry, dict) and "loss" in entry:
                losses.append(entry["loss"])
    return losses
