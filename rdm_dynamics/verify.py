"""``python -m rdm_dynamics.verify``: run every theory check and report PASS/FAIL.

Prints one row per check, writes ``report.json`` (the contract of DESIGN.md section 4) and one PNG
figure per check to ``--out``, and exits 0 only if every check passed: 1 a check failed, 2 bad
input or an OS error (one line on stderr), 3 a check crashed (an error of the toolkit, not a
failed claim: its status in the report is ``error``), 130 interrupted (Ctrl-C: the previous
report is left as it was; the report is written at the end, atomically).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .cli import (
    MAX_SEED,
    Interrupted,
    Parser,
    UsageError,
    parse_device,
    parse_int,
    parse_seed,
    run_command,
)
from .stack import SCHEDULES, get_schedule

PROG = "python -m rdm_dynamics.verify"
DTYPES = ("float64", "float32")


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--depth", default=None,
                   help="depth L of the deepest stack; the ladder is L/16, ..., L (default 256; "
                        f"32 to {MAX_DEPTH}, divisible by 4)")
    p.add_argument("--only", default=None, metavar="ID[,ID]",
                   help="run only these checks (ids such as depth-limit, or claims such as C1)")
    p.add_argument("--schedule", default=None,
                   help=f"the stack's gate schedule: {', '.join(SCHEDULES)} (default rdm; plain "
                        "is a negative control and must fail)")
    p.add_argument("--gating", default=None, metavar="SCHEDULE",
                   help="the former spelling of --schedule (deprecated: it still works in this "
                        "release, with a warning)")
    p.add_argument("--seed", default="0", help=f"random seed, 0 to {MAX_SEED} (default 0)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--dtype", default=None, help="float64 (default) or float32")
    p.add_argument("--out", default="rdm-verify-report",
                   help="folder for report.json and the figures (default rdm-verify-report/)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the JSON report here")
    p.add_argument("--threads", default="1",
                   help="CPU threads for torch (default 1: the checks run many small tensor "
                        "operations, which extra threads slow down)")
    p.add_argument("--jobs", default=None, metavar="N",
                   help="worker processes running checks in parallel, each with --threads "
                        "threads (default: one per CPU core, at most one per check; 1 runs them "
                        "one after another in this process); the report's numbers do not "
                        "depend on it")
    p.add_argument("--quick", action="store_true", help="smaller samples, for a smoke run")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--list", action="store_true", help="list the checks and exit")
    p.add_argument("--ckpt", default=None, metavar="RUN",
                   help="run the checks on a trained model instead (C8 and up): a run folder "
                        "(its latest checkpoint), a checkpoint file, or a diffusers "
                         "save_pretrained folder (DiT, Transformer2D, UNet2D); its depth, its "
                         "units' gate and its precision come from the model (--depth, --schedule "
                         "and --dtype are refused with it)")
    p.add_argument("--self-test", action="store_true",
                   help="run every check's negative controls and the library of seeded faults "
                        "(checks/faults.py); print which check caught each fault and the kill "
                        "rate; exit 1 if a control passes or a fault survives (with --quick: "
                        "each fault against the checks that rely on its module)")
    return p


#: Above this depth the checks' memory (C6 backpropagation stores O(L) states) and time (hours)
#: are out of proportion; the estimate printed before a long run uses SECONDS_PER_DEPTH.
MAX_DEPTH = 65536
#: Wall time per unit of --depth of a full serial run (--jobs 1, one thread of the 2-core CPU),
#: and of a --quick run: a rough estimate, printed before a long run.  Re-measured as the
#: report's ``seconds`` of ``verify --depth 4096 --jobs 1 --no-figures`` divided by 4096.
SECONDS_PER_DEPTH = {False: 0.078, True: 0.041}
#: Print the estimate when a run is expected to take longer than this.
ANNOUNCE_SECONDS = 120.0


def _check_writable_dir(path: Path, flag: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UsageError(f"{flag} {str(path)!r} cannot be written: {exc.strerror or exc}") from None


def validate_depth(depth: int, checks: dict) -> None:
    """--depth must give every selected check a ladder it can fit an order on (at least
    ``MIN_RUNGS`` depths, and each check's ``MIN_DEPTH``), and stay below MAX_DEPTH."""
    from .checks import MIN_RUNGS, depth_ladder, min_depth

    if depth > MAX_DEPTH:
        raise UsageError(f"--depth {depth} is above {MAX_DEPTH}: the checks would need hours "
                         "and more memory than they are worth (C6 stores every layer)")
    need = max(min_depth(m) for m in checks.values())
    needers = [m.CLAIM for m in checks.values() if min_depth(m) == need]
    if depth < need:
        raise UsageError(f"--depth {depth} is too small: the smallest that works is {need} "
                         f"(for {', '.join(needers)}, whose depth ladders must allow an order fit)")
    if len(depth_ladder(depth)) < MIN_RUNGS:
        ok = next(d for d in range(depth, 4 * depth + 8) if len(depth_ladder(d)) >= MIN_RUNGS)
        raise UsageError(f"--depth {depth} gives a ladder of {len(depth_ladder(depth))} "
                         f"depth(s) ({', '.join(map(str, depth_ladder(depth)))}), too few to fit "
                         f"an order: it must be divisible by {1 << (MIN_RUNGS - 1)} (e.g. {ok}; "
                         "best by 16, for a ladder of 5 depths)")


def estimated_seconds(depth: int, quick: bool, checks: dict, n_all: int, jobs: int = 1) -> float:
    """A rough wall-time estimate: SECONDS_PER_DEPTH (one thread), scaled by the share of the
    checks run and by the share of the serial time their longest-first schedule on ``jobs``
    workers takes (``runner.schedule_share``)."""
    from .checks.workers import schedule_share

    return (SECONDS_PER_DEPTH[quick] * depth * len(checks) / max(n_all, 1)
            * schedule_share(checks.values(), jobs))


@dataclass
class Request:
    """What a verify command line asks for, validated: the parsed ``args``, the configuration the
    checks run with, the checks selected (id -> module) out of ``n_all`` of their kind, the
    report folder and the optional JSON copy."""

    args: argparse.Namespace
    config: object
    checks: dict
    n_all: int
    out: Path
    json_path: Path | None


def parse_args(argv) -> argparse.Namespace:
    """Parse the command line and validate its scalar options (``args.depth``, ``args.seed``,
    ``args.threads`` and ``args.jobs`` become integers, ``args.device`` a device string);
    raises UsageError on any bad argument."""
    args = build_parser().parse_args(argv)
    if args.ckpt is not None:  # what the model decides is not asked twice
        given = [f for f, v in (("--depth", args.depth), ("--schedule", args.schedule),
                                ("--gating", args.gating), ("--dtype", args.dtype))
                 if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} cannot be given with --ckpt: the depth, the "
                             "gates and the precision are the trained model's own")
    args.depth = parse_int("256" if args.depth is None else args.depth, "depth", 1)
    args.dtype = args.dtype or "float64"
    args.seed = parse_seed(args.seed)
    args.threads = parse_int(args.threads, "threads", 1, 1024)
    args.jobs = None if args.jobs is None else parse_int(args.jobs, "jobs", 1, 1024)
    args.schedule = schedule_option(args)
    if args.dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {args.dtype!r}; choose one of {', '.join(DTYPES)}")
    args.device = str(parse_device(args.device))
    return args


def schedule_option(args) -> str:
    """The gate schedule asked for: ``--schedule``, or its deprecated spelling ``--gating`` (both
    given and different is an error); validated.  ``request`` warns about ``--gating`` once the
    whole command line is known good, so bad input stays one line."""
    if args.gating is not None and args.schedule is not None and args.schedule != args.gating:
        raise UsageError(f"--schedule {args.schedule} and --gating {args.gating} disagree "
                         "(--gating is the former spelling of --schedule)")
    try:
        schedule = get_schedule(args.schedule or args.gating or "rdm").name
    except ValueError as exc:
        raise UsageError(f"--schedule: {exc}") from None
    return schedule


def check_config(args):
    """The configuration the checks run with: a trained model's (``--ckpt``, read and validated
    here) or the theory checks' (from the command line)."""
    import torch

    from .checks import CheckConfig

    if args.ckpt is not None:
        from .checks.trained_subject import checkpoint_config

        return checkpoint_config(args.ckpt, seed=args.seed, device=args.device, quick=args.quick)
    return CheckConfig(depth=args.depth, schedule=args.schedule, seed=args.seed,
                       dtype=getattr(torch, args.dtype), device=args.device, quick=args.quick)


def select_checks(args) -> tuple[dict, int]:
    """The checks ``--only`` selects (all by default) from the registry of the run's kind, and
    the size of that registry; the depth is validated against them."""
    from .checks import registry, resolve_ids

    checks = registry("checkpoint" if args.ckpt is not None else "theory")
    try:
        ids = resolve_ids(args.only, checks) if args.only is not None else list(checks)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    selected = {cid: checks[cid] for cid in ids}
    if not args.list and args.ckpt is None:  # with --ckpt the depth is the model's
        validate_depth(args.depth, selected)
    return selected, len(checks)


def output_paths(args, checks=()) -> tuple[Path, Path | None]:
    """The report folder and the JSON copy, validated before any work: neither may replace a
    file verify did not write (the figures of ``checks`` included), and both must be writable
    (unless nothing is written)."""
    from .checks.report import check_report_targets

    out = Path(args.out)
    json_path = Path(args.json) if args.json else None
    drawn = not (args.no_figures or args.list or args.self_test)
    figures = [f"{cid}.png" for cid in checks] if drawn else []
    check_report_targets(out, json_path, "verify", figures)
    if not (args.list or args.self_test):
        _check_writable_dir(out, "--out")
        if json_path is not None:
            _check_writable_dir(json_path.parent, "--json folder")
    return out, json_path


def request(argv) -> Request:
    """Everything a verify run needs, validated in the order a user reads the errors: the
    options, the checkpoint, the checks and the depth, the files."""
    from .checks.workers import default_jobs

    args = parse_args(argv)
    config = check_config(args)
    checks, n_all = select_checks(args)
    out, json_path = output_paths(args, checks)
    args.jobs = default_jobs(len(checks)) if args.jobs is None else args.jobs
    if args.gating is not None:
        print(f"{PROG}: warning: --gating is deprecated, use --schedule (the same values)",
              file=sys.stderr)
    return Request(args, config, checks, n_all, out, json_path)


def main(argv=None) -> int:
    """Exit codes: 0 every check passed, 1 a check failed, 2 bad input (one line on stderr),
    3 a check crashed (an error of the toolkit; the report says which), 130 interrupted."""
    return run_command(PROG, lambda: _main(sys.argv[1:] if argv is None else argv))


def print_report(config, results, report: dict, out: Path) -> None:
    """The run's header, the verdict table, one sentence per check and where the report is."""
    from .checks.report import format_table, wrap_summary

    ladder = ", ".join(map(str, config.ladder))
    key, value = next(iter(config.report_fields.items()))  # the schedule, or the model's gate
    print(f"rdm_dynamics verify: depth {config.depth} (ladder {ladder}), {key} {value}, "
          f"seed {config.seed}, {report['dtype']} on {config.device}")
    print(format_table(results))
    print()
    for r in results:
        print(wrap_summary(r))
    n_pass = sum(r.passed for r in results)
    print(f"\n{n_pass}/{len(results)} checks passed in {report['seconds']:.1f} s; report:\n"
          f"{out / 'report.json'}")


def _main(argv) -> int:
    import torch

    start = time.perf_counter()
    req = request(argv)
    args, config, checks, out, json_path = req.args, req.config, req.checks, req.out, req.json_path
    torch.set_num_threads(args.threads)
    if args.list:
        for cid, module in checks.items():
            print(f"{module.CLAIM:4} {cid:22} {module.TITLE}")
        return 0
    if args.self_test:
        from .checks.self_test import run_self_test

        return run_self_test(config)

    from .checks import run_checks
    from .checks.report import build_report, render_figures, write_report

    estimate = estimated_seconds(config.depth, config.quick, checks, req.n_all, args.jobs)
    if estimate > ANNOUNCE_SECONDS:
        shared = ", the checks shared among the workers" if args.jobs > 1 else ""
        print(f"{PROG}: depth {config.depth}: estimated {estimate / 60:.0f} min with --jobs "
              f"{args.jobs} (about {SECONDS_PER_DEPTH[config.quick]} s per unit of depth on "
              f"one CPU thread{shared})", file=sys.stderr)
    try:
        results = run_checks(config, checks, jobs=args.jobs, figures=not args.no_figures)
        figures = {} if args.no_figures else render_figures(results)
    except KeyboardInterrupt:
        kept = "the previous report there was left as it was" if (out / "report.json").exists() \
            else "no report was written"
        raise Interrupted(f"interrupted before the report in {str(out)!r} was written; "
                          f"{kept}") from None
    report = build_report(config, results, time.perf_counter() - start)
    try:
        write_report(out, report, figures, json_path)
    except OSError as exc:
        raise UsageError(f"cannot write the report: {exc.strerror or exc}") from None

    print_report(config, results, report, out)
    crashed = [r for r in results if r.error is not None]
    for r in crashed:
        print(f"{PROG}: error: check {r.id} crashed (an error of the toolkit, not a failed "
              f"claim): {r.error}; traceback in {out / 'report.json'}", file=sys.stderr)
    return 3 if crashed else 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
