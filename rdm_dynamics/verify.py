"""``python -m rdm_dynamics.verify``: run every theory check and report PASS/FAIL.

Prints one row per check, writes ``report.json`` (the contract of DESIGN.md section 4) and one PNG
figure per check to ``--out``, and exits 0 only if every check passed (1 otherwise).  Bad
arguments get one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from .cli import Parser, UsageError, parse_device, parse_int
from .stack import GATINGS, get_gating

PROG = "python -m rdm_dynamics.verify"
DTYPES = ("float64", "float32")


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--depth", default="256",
                   help="depth L of the deepest stack; the ladder is L/16, ..., L (default 256)")
    p.add_argument("--only", default=None, metavar="ID[,ID]",
                   help="run only these checks (ids such as depth-limit, or claims such as C1)")
    p.add_argument("--gating", default="rdm",
                   help=f"gate schedule: {', '.join(GATINGS)} (default rdm; plain is a negative "
                        "control and must fail)")
    p.add_argument("--seed", default="0", help="random seed (default 0)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float64", help="float64 (default) or float32")
    p.add_argument("--out", default="rdm-verify-report",
                   help="folder for report.json and the figures (default rdm-verify-report/)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the JSON report here")
    p.add_argument("--threads", default="1",
                   help="CPU threads for torch (default 1: the checks run many small tensor "
                        "operations, which extra threads slow down)")
    p.add_argument("--quick", action="store_true", help="smaller samples, for a smoke run")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--list", action="store_true", help="list the checks and exit")
    p.add_argument("--ckpt", default=None, metavar="RUN",
                   help="run the checks on a trained model instead (C8 and up): a run folder "
                        "(its latest checkpoint) or a checkpoint file; --depth, --gating and "
                        "--dtype then come from the model")
    return p


def _check_writable_dir(path: Path, flag: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UsageError(f"{flag} {str(path)!r} cannot be written: {exc.strerror or exc}") from None


def parse_args(argv):
    """Parse and validate the command line; raises UsageError on any bad argument."""
    import torch

    from .checks import CheckConfig, depth_ladder, registry, resolve_ids

    args = build_parser().parse_args(argv)
    depth = parse_int(args.depth, "depth", 2)
    if len(depth_ladder(depth)) < 2:
        raise UsageError(f"--depth {depth} has no depth ladder: it must be even "
                         "(best divisible by 16, for a ladder of 5 depths)")
    seed = parse_int(args.seed, "seed", 0)
    threads = parse_int(args.threads, "threads", 1)
    try:
        get_gating(args.gating)
    except ValueError as exc:
        raise UsageError(f"--gating: {exc}") from None
    if args.dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {args.dtype!r}; choose one of {', '.join(DTYPES)}")
    device = parse_device(args.device)

    checkpoint = None
    if args.ckpt is not None:  # the checks on a trained model, with their own registry
        from .checks.checkpoints import checkpoint_config

        checkpoint = checkpoint_config(args.ckpt, seed=seed, device=str(device),
                                       quick=args.quick)
    checks = registry("checkpoint" if checkpoint else "theory")
    try:
        ids = resolve_ids(args.only, checks) if args.only is not None else list(checks)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} is a file, not a folder")
    json_path = Path(args.json) if args.json else None
    if json_path is not None:
        if json_path.is_dir():
            raise UsageError(f"--json {args.json!r} is a folder, not a file")
        if not json_path.parent.is_dir():
            raise UsageError(f"--json {args.json!r}: folder {str(json_path.parent)!r} "
                             "does not exist")
    if not args.list:
        _check_writable_dir(out, "--out")
        if json_path is not None:
            _check_writable_dir(json_path.parent, "--json folder")

    config = checkpoint or CheckConfig(depth=depth, gating=args.gating, seed=seed,
                                       dtype=getattr(torch, args.dtype), device=str(device),
                                       quick=args.quick)
    torch.set_num_threads(threads)
    return args, config, {cid: checks[cid] for cid in ids}, out, json_path


def main(argv=None) -> int:
    start = time.perf_counter()
    try:
        args, config, checks, out, json_path = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for cid, module in checks.items():
            print(f"{module.CLAIM:4} {cid:22} {module.TITLE}")
        return 0

    from .checks import run_checks
    from .checks.report import build_report, format_table, save_figure
    from .files import atomic_write_json

    results = run_checks(config, checks)
    try:
        if not args.no_figures:
            for r in results:
                if r.figure is not None:
                    save_figure(r.figure, out / f"{r.id}.png")
        report = build_report(config, results, time.perf_counter() - start)
        atomic_write_json(out / "report.json", report)
        if json_path is not None:
            atomic_write_json(json_path, report)
    except OSError as exc:
        print(f"{PROG}: error: cannot write the report: {exc}", file=sys.stderr)
        return 2

    ladder = ", ".join(map(str, config.ladder))
    print(f"rdm_dynamics verify: depth {config.depth} (ladder {ladder}), gating {config.gating}, "
          f"seed {config.seed}, {report['dtype']} on {config.device}")
    print(format_table(results))
    print()
    for r in results:
        print(f"[{'PASS' if r.passed else 'FAIL'}] {r.id}: {r.summary}")
    n_pass = sum(r.passed for r in results)
    print(f"\n{n_pass}/{len(results)} checks passed in {report['seconds']:.1f} s; "
          f"report: {out / 'report.json'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
