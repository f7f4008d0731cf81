"""``verify --self-test [--quick]``: does the verifier still have teeth?

Three kinds of runs, each a check run on the self-test's configuration (--depth, --seed; quick
samples with --quick), spread over worker processes (each patch lives and dies in its worker):

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

import dataclasses
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence

from . import CheckConfig, registry
from .faults import CONTROLS, FAULTS, QUICK_CONTROLS, Fault, patched

__all__ = ["run_self_test", "plan"]


def plan(quick: bool, checks: Sequence[str]) -> list[tuple[str, str, str]]:
    """The runs: (kind, name, check id), kind in clean / control / fault."""
    faults = [(f.name, cid) for f in FAULTS for cid in (f.checks if quick else checks)
              if cid in checks]
    controls = [(c.name, c.check) for c in CONTROLS
                if c.check in checks and (not quick or c.name in QUICK_CONTROLS)]
    used = sorted({cid for _, cid in faults + controls}, key=list(checks).index)
    return ([("clean", cid, cid) for cid in used] + [("control", n, cid) for n, cid in controls]
            + [("fault", n, cid) for n, cid in faults])


def _run_one(task):
    """Run one (kind, name, check id) in this process; returns (task, passed, failed, seconds,
    error)."""
    import torch

    kind, name, cid, config = task
    torch.set_num_threads(1)
    module = registry()[cid]
    start = time.perf_counter()
    error = ""
    try:
        if kind == "clean":
            result = module.run(config)
        elif kind == "control":
            control = next(c for c in CONTROLS if c.name == name)
            result = control.run(module, config)
        else:
            fault: Fault = next(f for f in FAULTS if f.name == name)
            with patched(fault):
                result = module.run(config)
        passed, failed = bool(result.passed), list(result.verdict.failed)
    except Exception as exc:  # a check that crashes under a fault reports FAIL (run_checks)
        passed, failed, error = False, [], f"{type(exc).__name__}: {exc}"
    return (kind, name, cid), passed, failed, time.perf_counter() - start, error


def _results(tasks, jobs: int):
    if jobs <= 1:
        return [_run_one(t) for t in tasks]
    context = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
    # the longest runs first, so the workers finish together
    cost = {"reverse-sde": 4, "residual-sensitivity": 2, "gate-moments": 2, "pf-ode": 2}
    order = sorted(range(len(tasks)), key=lambda i: -cost.get(tasks[i][2], 1))
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
    checks = list(registry())
    tasks = [(kind, name, cid, config) for kind, name, cid in plan(config.quick, checks)]
    jobs = jobs or min(2, os.cpu_count() or 1)
    results = _results(tasks, jobs)

    clean_failures = [(cid, failed, err) for (kind, _, cid), ok, failed, _, err in results
                      if kind == "clean" and not ok]
    controls = [(name, ok, failed) for (kind, name, _), ok, failed, _, _ in results
                if kind == "control"]
    caught: dict[str, list[str]] = {f.name: [] for f in FAULTS}
    detail: dict[str, list[str]] = {f.name: [] for f in FAULTS}
    for (kind, name, cid), ok, failed, _, err in results:
        if kind == "fault" and not ok:
            caught[name].append(cid)
            detail[name] += failed[:2] if failed else [f"crashed ({err[:40]})"]

    print(f"rdm_dynamics verify --self-test{' --quick' if config.quick else ''}: depth "
          f"{config.depth}, seed {config.seed}, {len(tasks)} check runs on {jobs} processes",
          file=out)
    for cid, failed, err in clean_failures:
        print(f"  CLEAN RUN FAILED: {cid} ({', '.join(failed) or err})", file=out)
    print("\nnegative controls (each must FAIL):", file=out)
    for name, ok, failed in controls:
        print(f"  {'FAIL (as it must)' if not ok else 'PASSED: a control that passes'}  {name}"
              + (f"  [{', '.join(failed[:3])}]" if failed else ""), file=out)
    width = max(len(f.name) for f in FAULTS)
    print(f"\n{'fault'.ljust(width)}  target -> caught by (first failed metrics)", file=out)
    for f in FAULTS:
        target = f.target.removeprefix("rdm_dynamics.")
        by = ", ".join(caught[f.name]) if caught[f.name] else "SURVIVED"
        print(f"{f.name.ljust(width)}  {target} -> {by}"
              + (f"  [{', '.join(detail[f.name][:3])}]" if detail[f.name] else ""), file=out)
    killed = sum(bool(v) for v in caught.values())
    controls_ok = sum(not ok for _, ok, _ in controls)
    print(f"\nkill rate {killed}/{len(FAULTS)} ({100 * killed / len(FAULTS):.0f}%); controls "
          f"failing as they must {controls_ok}/{len(controls)}; clean runs passing "
          f"{sum(1 for t in tasks if t[0] == 'clean') - len(clean_failures)}/"
          f"{sum(1 for t in tasks if t[0] == 'clean')}; {time.perf_counter() - start:.1f} s",
          file=out)
    ok = not clean_failures and controls_ok == len(controls) and killed == len(FAULTS)
    return 0 if ok else 1


def quick_config(depth: int = 256, seed: int = 0) -> CheckConfig:
    """The configuration of ``--self-test --quick``."""
    return dataclasses.replace(CheckConfig(depth=depth, seed=seed, quick=True))
