"""``verify --self-test [--quick]``: does the verifier still have teeth?

Three kinds of runs, each a check run on the self-test's configuration (--depth, --seed; quick
samples with --quick; the checkpoint checks C8 to C10 on a small model trained first,
``self_test_subject.small_checkpoint``), spread over worker processes (each patch lives and dies
in its worker):

1. clean: every check the runs below use, unpatched; each must PASS (otherwise a FAIL below would
   say nothing about the fault);
2. negative controls (``faults.CONTROLS``): each must FAIL;
3. seeded faults (``faults.FAULTS``), one at a time, patched in process and restored after: a
   fault is caught (killed) when at least one check FAILs under it; --quick runs each fault
   against the checks listed with it (those that rely on its module), the full self-test against
   every check.

Prints the table fault -> checks that caught it and the kill rate, and returns 1 if a clean run
fails, a control passes or a fault survives; 0 otherwise.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence

from . import CheckConfig, registry
from .claim import run_claim
from .faults import CONTROLS, FAULTS, QUICK_CONTROLS, Fault, patched
from .self_test_subject import small_checkpoint
from .workers import cost

__all__ = ["run_self_test", "plan"]


def _on_checkpoint(cid: str) -> bool:
    """Whether check ``cid`` runs on a checkpoint (the small trained model)."""
    return cid in registry("checkpoint")


def _modules() -> dict:
    """The checks the self-test runs: the theory checks and the checkpoint checks, by id."""
    return {**registry(), **registry("checkpoint")}


def _costs() -> dict[str, float]:
    """Each check's cost (its module's ``COST``, ``workers.cost``), by id, read once per use: a
    quick self-test tries a fault's checks cheapest first and stops at the first that catches
    it; the workers take the costliest first."""
    return {cid: cost(module) for cid, module in _modules().items()}


def plan(quick: bool, checks: Sequence[str]) -> list[tuple[str, str, tuple[str, ...]]]:
    """The runs: (kind, name, check ids), kind in clean / control / fault.  A fault's run tries
    its checks in turn (--quick: those listed with it, cheapest first, up to the first FAIL; full:
    every check, all of them)."""
    faults, costs = [], _costs()
    for f in FAULTS:
        ids = [cid for cid in (f.checks if quick else checks) if cid in checks]
        if quick:
            ids.sort(key=costs.__getitem__)
        faults.append((f.name, tuple(ids)))
    controls = [(c.name, c.check) for c in CONTROLS
                if c.check in checks and (not quick or c.name in QUICK_CONTROLS)]
    used = sorted({cid for _, ids in faults for cid in ids} | {cid for _, cid in controls},
                  key=list(checks).index)
    return ([("clean", cid, (cid,)) for cid in used]
            + [("control", n, (cid,)) for n, cid in controls]
            + [("fault", n, ids) for n, ids in faults])


def _run_check(kind: str, name: str, cid: str, configs):
    """(passed, failed metrics, error) of one check run; ``configs``: the theory checks'
    configuration and the checkpoint checks' (None when none runs)."""
    module = _modules()[cid]
    config = configs[1] if _on_checkpoint(cid) else configs[0]
    try:
        if kind == "clean":
            result = run_claim(module, config)
        elif kind == "control":
            control = next(c for c in CONTROLS if c.name == name)
            result = control.run(module, config)
        else:
            fault: Fault = next(f for f in FAULTS if f.name == name)
            with patched(fault):
                result = run_claim(module, config)
        return bool(result.passed), list(result.verdict.failed), ""
    except Exception as exc:  # a check that crashes under a fault reports FAIL (run_checks)
        return False, [], f"{type(exc).__name__}: {exc}"


def _run_one(task):
    """Run one planned task in this process: a list of (check id, passed, failed, error) and
    the seconds it took."""
    import torch

    kind, name, ids, config, stop_at_first = task
    torch.set_num_threads(1)
    start = time.perf_counter()
    runs = []
    for cid in ids:
        passed, failed, error = _run_check(kind, name, cid, config)
        runs.append((cid, passed, failed, error))
        if stop_at_first and not passed:
            break
    return (kind, name), runs, time.perf_counter() - start


def _results(tasks, jobs: int):
    if jobs <= 1:
        return [_run_one(t) for t in tasks]
    context = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
    costs = _costs()
    order = sorted(range(len(tasks)), key=lambda i: -costs[tasks[i][2][0]])
    with context.Pool(jobs) as pool:
        done = pool.map(_run_one, [tasks[i] for i in order], chunksize=1)
    out = [None] * len(tasks)
    for i, r in zip(order, done, strict=True):
        out[i] = r
    return out


def run_self_test(config: CheckConfig, *, jobs: int | None = None, out=None) -> int:
    """Run the self-test (module docstring) on ``config``; print the tables to ``out``."""
    out = out or sys.stdout
    start = time.perf_counter()
    checks = list(_modules())
    planned = plan(config.quick, checks)
    jobs = jobs or min(2, os.cpu_count() or 1)
    trained = any(_on_checkpoint(cid) for _, _, ids in planned for cid in ids)
    with small_checkpoint(config.seed, config.quick) if trained \
            else contextlib.nullcontext() as ckpt:
        tasks = [(kind, name, ids, (config, ckpt), config.quick and kind == "fault")
                 for kind, name, ids in planned]
        results = _results(tasks, jobs)

    clean_failures, controls, n_runs = [], [], 0
    caught: dict[str, list[str]] = {f.name: [] for f in FAULTS}
    detail: dict[str, list[str]] = {f.name: [] for f in FAULTS}
    for (kind, name), runs, _ in results:
        n_runs += len(runs)
        for cid, ok, failed, err in runs:
            if kind == "clean" and not ok:
                clean_failures.append((cid, failed, err))
            elif kind == "control":
                controls.append((name, ok, failed, err))
            elif kind == "fault" and not ok:
                caught[name].append(cid)
                detail[name] += failed[:2] if failed else [f"crashed: {err[:50]}"]

    print(f"rdm_dynamics verify --self-test{' --quick' if config.quick else ''}: depth "
          f"{config.depth}, seed {config.seed}, {n_runs} check runs on {jobs} processes",
          file=out)
    for cid, failed, err in clean_failures:
        print(f"  CLEAN RUN FAILED: {cid} ({', '.join(failed) or err})", file=out)
    print("\nnegative controls (each must FAIL):", file=out)
    for name, ok, failed, err in controls:
        shown = ", ".join(failed[:3]) or err[:60]
        print(f"  {'FAIL (as it must)' if not ok else 'PASSED (a control that passes!)'}  "
              f"{name}" + (f"  [{shown}]" if shown else ""), file=out)
    width = max(len(f.name) for f in FAULTS)
    how = "first check that caught it" if config.quick else "checks that caught it"
    print(f"\n{'fault'.ljust(width)}  target -> {how} [first failed metrics]", file=out)
    for f in FAULTS:
        target = f.target.removeprefix("rdm_dynamics.")
        by = ", ".join(caught[f.name]) if caught[f.name] else "SURVIVED"
        print(f"{f.name.ljust(width)}  {target} -> {by}"
              + (f"  [{', '.join(detail[f.name][:3])}]" if detail[f.name] else ""), file=out)
    killed = sum(bool(v) for v in caught.values())
    controls_ok = sum(not ok for _, ok, _, _ in controls)
    n_clean = sum(1 for t in tasks if t[0] == "clean")
    print(f"\nkill rate {killed}/{len(FAULTS)} ({100 * killed / len(FAULTS):.0f}%); controls "
          f"failing as they must {controls_ok}/{len(controls)}; clean runs passing "
          f"{n_clean - len(clean_failures)}/{n_clean}; {time.perf_counter() - start:.1f} s",
          file=out)
    ok = not clean_failures and controls_ok == len(controls) and killed == len(FAULTS)
    return 0 if ok else 1


