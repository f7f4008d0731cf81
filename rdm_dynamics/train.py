"""``python -m rdm_dynamics.train``: train a Neural-RDM diffusion model.

    python -m rdm_dynamics.train --model RDM-DiT-T/2 --data digits --steps 2000 --out runs/dit
    python -m rdm_dynamics.train --config run.yaml --lr 3e-4          # flags override the file
    python -m rdm_dynamics.train --resume runs/dit                    # continue a killed run
    torchrun --nproc_per_node 2 -m rdm_dynamics.train ...             # data-parallel (DDP)
    python -m rdm_dynamics.train --cohort a.yaml b.yaml runs/c        # runs as one batched model

``--cohort`` trains several runs of one recipe, differing only in seed and lr, as one batched
model (``training.cohort``): each is named by its configuration file (a new run) or its run
folder (a run resumed; runs at different steps go on from the newest step they all have), and
each folder ends as ``train`` would leave it.  A run of a cohort that diverges stops alone (its
folder says why in ``diverged.json``).

The settings are those of ``training.settings.TrainConfig`` (one flag each; defaults, then a YAML
or TOML file given by ``--config``, then the flags); the loop is ``training.loop.train``.  The run
folder (``--out``) receives ``log.jsonl`` (one JSON object per logged step), sample grids under
``samples/`` and checkpoints (safetensors + JSON, never unpickled).  A new run refuses a folder
that holds another run's files; a resumed run writes where its checkpoint was found.

Exit codes: 0 done; 1 the loss or gradient norm became NaN or infinite (the message names the last
good checkpoint; for a cohort: in one of its runs); 2 bad input (flags, config file, data,
checkpoint, a folder that cannot be written), one line on stderr; 130 interrupted (Ctrl-C), one
line naming the checkpoint a resume starts from.  Under torchrun only rank 0 prints.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

from .cli import UsageError, run_command
from .training.checkpoint import CheckpointError
from .training.loop import TrainingDiverged, train
from .training.settings import resolve_config

PROG = "python -m rdm_dynamics.train"

__all__ = ["main"]


def main(argv=None) -> int:
    main_rank = int(os.environ.get("RANK", "0")) == 0
    return run_command(PROG, lambda: _main(sys.argv[1:] if argv is None else argv, main_rank),
                       quiet=not main_rank)


def _main(argv, main_rank: bool) -> int:
    if argv and argv[0] == "--cohort":
        return _cohort(argv[1:])
    try:  # bad input is one line and exit code 2, a diverged run exit code 1
        with contextlib.redirect_stderr(io.StringIO()):  # its warnings come once, when locked
            cfg, resume = resolve_config(argv, PROG, __doc__.splitlines()[0])
        with _run_lock(cfg.out, main_rank):  # one writer per run folder (locks.py)
            cfg, resume = resolve_config(argv, PROG, __doc__.splitlines()[0])  # as now locked
            summary = train(cfg, resume)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    except TrainingDiverged as exc:
        if main_rank:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    if main_rank:
        grid = f"; samples {summary['grid']}" if summary.get("grid") else ""
        print(f"trained to step {summary['step']} (loss {summary['loss']:.5f}) in "
              f"{summary['seconds']:.1f} s; checkpoint {summary['checkpoint']}{grid}")
    return 0


def _cohort(members: list[str]) -> int:
    """``--cohort MEMBER ...``: each a run configuration file (a new run) or a run folder
    holding a checkpoint (resumed)."""
    from .training.checkpoint import find_checkpoints
    from .training.cohort import train_cohort

    if not members or any(m.startswith("-") for m in members):
        raise UsageError("--cohort takes run configuration files and run folders only")

    def member_args(m: str) -> list[str]:
        return ["--resume", m] if Path(m).is_dir() and find_checkpoints(m) else ["--config", m]

    with contextlib.ExitStack() as locks:
        with contextlib.redirect_stderr(io.StringIO()):
            first = [resolve_config(member_args(m), PROG)[0] for m in members]
        for cfg in first:
            locks.enter_context(_run_lock(cfg.out, True))
        resolved = [resolve_config(member_args(m), PROG) for m in members]  # as now locked
        try:
            summaries = train_cohort([c for c, _ in resolved], [r for _, r in resolved])
        except CheckpointError as exc:
            raise UsageError(str(exc)) from None
    for (cfg, _), s in zip(resolved, summaries, strict=True):
        told = f"trained to step {s['step']} (loss {s['loss']:.5f})" if s["status"] == "done" \
            else f"diverged: {s['message']}"
        print(f"{cfg.out}: {told}")
    return 1 if any(s["status"] != "done" for s in summaries) else 0


@contextlib.contextmanager
def _run_lock(out: str, main_rank: bool):
    """The run folder's lock (``locks.RUN_LOCK``), held by rank 0 while it trains: a second
    ``train`` on the folder is refused naming the holder; the OS frees it if this process dies.
    A run refused once locked (bad data, a model that cannot be built) leaves nothing behind:
    the lock file and the folders this command made are removed."""
    from .locks import RUN_LOCK, acquire

    if not main_rank:
        yield
        return
    made, p = [], Path(out)
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    lock_file = Path(out) / RUN_LOCK
    new_lock = not lock_file.exists()
    try:
        lock = acquire(lock_file)
    except OSError as exc:
        raise UsageError(f"--out {out!r} cannot be written: {exc.strerror or exc}") from None
    try:
        with lock:
            yield
    except UsageError:
        if new_lock:
            lock_file.unlink(missing_ok=True)
        for folder in made:  # deepest first; a folder that holds anything stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


if __name__ == "__main__":
    sys.exit(main())
