"""Running checks: one at a time in this process, or in parallel worker processes.

``run_check`` runs one claim module (``claim.run_claim``) and times it; a check that raises is an
error of the toolkit (status ``error``, exit code 3), with the exception in its summary, never a
silent pass.  ``run_in_processes`` runs checks in up to ``jobs``
worker processes, one process per check, each with the same number of torch threads as the
caller.  The numbers are those of a serial run: every check draws from its own seeded stream
(``CheckConfig.generator``) and never from torch's global generator, so where it runs does not
change what it computes (the tests compare the reports bit for bit).

Workers take the checks longest first (each module's ``COST``).  They are forked from this
process on Linux when the checks run on the CPU, so they start in milliseconds with every module
this process has imported (torch, the checks, matplotlib when figures are asked for).  For
CUDA, whose state does not survive a fork, and on platforms without fork, they come from a
forkserver (or are spawned) that preloads the check modules once.
Each worker draws its check's figure itself (a figure is a closure, which cannot be sent between
processes) and sends back the result with the figure as PNG bytes
(:class:`~rdm_dynamics.checks.report.RenderedFigure`).  Results come back in the order of
``checks`` whatever order the workers finish in.  A worker that dies without a result (a
segfault, the out-of-memory killer) makes its check a FAIL that says how it died; the others
go on.  Workers ignore SIGINT: on Ctrl-C (KeyboardInterrupt in this process) every live worker
is terminated and the KeyboardInterrupt goes on to the caller.  A worker whose parent dies
without that chance (SIGTERM, SIGKILL) exits within a second (a watchdog thread).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import wait

from .claim import run_claim

__all__ = ["run_check", "run_in_processes", "default_jobs", "start_method", "cost"]


def default_jobs(n_checks: int) -> int:
    """As many workers as there are CPU cores this process may use, at most one per check."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, n_checks))


#: The cost of a check module that declares none (its ``COST``), in the same unit.
DEFAULT_COST = 1.0


def cost(module) -> float:
    """A check's ``COST``: its serial seconds at --depth 256 on one idle core, a scheduling hint
    only (re-measured as the check's ``seconds`` in the report of ``verify --jobs 1``).  Workers
    take the checks longest first, so the longest check does not start last and the run ends
    close to max(longest check, total / jobs)."""
    return float(getattr(module, "COST", DEFAULT_COST))


def schedule_share(modules, jobs: int) -> float:
    """The share of the serial time a run of ``modules`` on ``jobs`` workers takes, by their
    ``COST``: the makespan of the longest-first schedule the workers follow (each check to the
    worker that frees first) over the sum of the costs.  1 for one worker; at least 1 / jobs;
    for a rough estimate only (parallel workers also slow each other down)."""
    costs = sorted((cost(m) for m in modules), reverse=True)
    if not costs or jobs <= 1:
        return 1.0
    loads = [0.0] * min(jobs, len(costs))
    for c in costs:
        loads[loads.index(min(loads))] += c
    return max(loads) / sum(costs)


def crashed_result(cid: str, claim: str, why: str, trace: str | None = None):
    """The result of a check that did not finish, ``why`` (one line) saying how it ended: an
    error of the toolkit (status ``error``), not a failed claim; no metrics, no bands."""
    from .report import CheckResult
    from .rules import Verdict

    return CheckResult(id=cid, claim=claim, metrics={}, verdict=Verdict(passed=False),
                       summary=f"the check crashed (an error of the toolkit, not a "
                               f"measurement): {why}",
                       measured_text="crashed", theory_text="-", error=why, traceback=trace)


def run_check(cid: str, module, config):
    """Run one check module with ``config`` and time it (``result.seconds``).  A check that
    raises gives an error result naming the exception, its traceback kept for the report."""
    start = time.perf_counter()
    try:
        result = run_claim(module, config)
    except Exception as exc:  # a crashed check is reported, never silently passed
        text = str(exc).strip().splitlines()
        why = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
        result = crashed_result(cid, module.CLAIM, why, traceback.format_exc())
    result.seconds = time.perf_counter() - start
    return result


def start_method(device: str) -> str:
    """fork for CPU runs on Linux; forkserver (or spawn where there is none) otherwise."""
    if sys.platform.startswith("linux") and str(device).startswith("cpu"):
        return "fork"
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _exit_when_orphaned(parent: int, poll_s: float = 1.0) -> None:
    """Watchdog thread of a worker: exit once its parent is gone (killed by SIGTERM or SIGKILL,
    which leave it no chance to terminate its workers), rather than compute for nobody."""
    while True:
        time.sleep(poll_s)
        if os.getppid() != parent:
            os._exit(1)


def _worker(conn, cid: str, module_name: str, config, threads: int, figures: bool) -> None:
    """The body of a worker process: run one check, send (result, None) or (None, error)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    import torch

    from .report import render_figure

    torch.set_num_threads(threads)
    try:
        result = run_check(cid, importlib.import_module(module_name), config)
        result.figure = (render_figure(result.figure)
                         if figures and result.figure is not None else None)
        conn.send((result, None))
    except BaseException as exc:  # the figure or sending failed: say so rather than die mute
        traceback.print_exc(file=sys.stderr)
        conn.send((None, f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _how_it_died(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"its worker process was killed by {name}"
    return f"its worker process exited with code {exitcode} without a result"


def run_in_processes(config, checks: dict, jobs: int, *, figures: bool = True,
                     on_done=None) -> list:
    """Run ``checks`` (id -> module) in at most ``jobs`` worker processes; results in the order
    of ``checks``.  ``figures``: workers render each figure to PNG (else ``figure`` is None).
    ``on_done(result, running_ids)`` is called as each check ends (a progress bar)."""
    import torch

    ctx = multiprocessing.get_context(start_method(config.device))
    names = [module.__name__ for module in checks.values()]
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload([__name__, *names] + (["matplotlib.figure"] if figures else []))
    elif figures and ctx.get_start_method() == "fork":
        import matplotlib  # imported once here, so no forked worker imports it again

        matplotlib.use("Agg")
        import matplotlib.figure  # noqa: F401
    threads = torch.get_num_threads()
    pending = sorted(checks.items(), key=lambda item: -cost(item[1]))  # longest first
    running: dict = {}  # connection -> (check id, module, process)
    done: dict = {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                cid, module = pending.pop(0)
                receiver, sender = ctx.Pipe(duplex=False)
                process = ctx.Process(target=_worker, name=f"verify-{cid}", daemon=True,
                                      args=(sender, cid, module.__name__, config, threads,
                                            figures))
                process.start()
                sender.close()  # the worker holds the other end: EOF once it is gone
                running[receiver] = (cid, module, process)
            for receiver in wait(list(running)):
                cid, module, process = running.pop(receiver)
                try:
                    result, error = receiver.recv()
                except EOFError:  # no result: the worker died
                    process.join()
                    result, error = None, _how_it_died(process.exitcode)
                except Exception as exc:  # a result that cannot be unpickled
                    result, error = None, f"its result could not be read: {exc}"
                receiver.close()
                process.join()
                if result is None:
                    result = crashed_result(cid, module.CLAIM, error)
                done[cid] = result
                if on_done is not None:
                    on_done(result, [c for c, _, _ in running.values()])
    finally:  # on KeyboardInterrupt (or any error here) no worker outlives the run
        for _, _, process in running.values():
            process.terminate()
        for _, _, process in running.values():
            process.join()
    return [done[cid] for cid in checks]
