"""One study folder, several study processes: who trains which run, and what a run may hold.

Several ``study`` commands may work on one ``--out`` at once (on one machine, or on machines that
share the file system; the same study file, or ``--runs`` shards of it).  They divide the work
through advisory locks (``rdm_dynamics.locks``, released by the OS when a process dies):

* a process **claims** a run (``<out>/locks/<id>.lock``) before it trains, checks or measures
  it, and holds the claim until the run's measurement is written; a run another process has
  claimed is left to it and taken up later: when its claim is released, the run is either
  finished (its measurement is read) or its holder died (the run is resumed from its newest
  checkpoint);
* the report and the CSV are written under ``<out>/locks/report.lock``, one process at a time,
  and describe every run of the study that has finished (:func:`finished_record`), whichever
  process trained it.

Before a run is resumed or reported, the configuration stored in each of its checkpoints is
checked against the study's plan (:func:`check_stored_recipe`): a run whose settings were edited
by hand (``lr``, ``batch_size``, ...) is refused, never resumed, retrained or reported.
"""

from __future__ import annotations

from pathlib import Path

from ..cli import UsageError
from ..limits import load_json, short
from ..locks import Lock, LockHeld, acquire
from ..training.checkpoint import find_checkpoints
from ..training.settings import SETTINGS, TrainConfig
from .plan import RunSpec

__all__ = ["claim", "report_lock", "finished_record", "measurement_path", "check_stored_recipe",
           "LockHeld"]


def measurement_path(out: Path, rid: str) -> Path:
    return Path(out) / "measurements" / f"{rid}.json"


def claim(out: Path, rid: str, wait: float = 0.0, stop=lambda: False) -> Lock:
    """This process's claim on run ``rid`` (module docstring); LockHeld if another holds it
    longer than ``wait`` seconds."""
    return acquire(Path(out) / "locks" / f"{rid}.lock", wait=wait, stop=stop)


def report_lock(out: Path, stop=lambda: False) -> Lock:
    """The lock under which a study writes ``report.json`` and ``runs.csv`` (waits for it)."""
    return acquire(Path(out) / "locks" / "report.lock", wait=float("inf"), stop=stop)


def finished_record(out: Path, spec: RunSpec) -> dict | None:
    """The measurement record of ``spec`` if one was written for its configuration (the same
    digest), else None; read within limits.py's bounds (an unreadable one is not finished)."""
    path = measurement_path(out, spec.id)
    if not path.is_file():
        return None
    try:
        record = load_json(path, "measurement")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("digest") == spec.digest() else None


def check_stored_recipe(spec: RunSpec) -> None:
    """UsageError (one line) if a checkpoint of ``spec``'s run folder stores a training
    configuration whose fixed settings (not ``resumable``) differ from the plan's: the run was
    edited by hand or belongs to another recipe; it is refused, not resumed or reported.
    Checkpoints that cannot be read are left to ``train --resume`` (it falls back past them)."""
    for path in find_checkpoints(spec.folder):
        try:
            stored = TrainConfig.from_json(load_json(path, "checkpoint file")["train_config"])
        except (OSError, ValueError, KeyError, TypeError, UsageError):
            continue
        changed = [f"{k} {short(getattr(stored, k), 24)} (the plan: "
                   f"{short(getattr(spec.config, k), 24)})" for k, s in SETTINGS.items()
                   if not s.resumable and getattr(stored, k) != getattr(spec.config, k)]
        if changed:
            raise UsageError(f"run {spec.id}: checkpoint {path.name} stores settings that are "
                             f"not the study's: {', '.join(changed[:3])}; refused, not resumed "
                             "or reported (restore the file, or use another --out)")
