"""``python -m rdm_dynamics.study``: the depth study behind C11 and C12.

    python -m rdm_dynamics.study                         # the cpu preset, into rdm-study/
    python -m rdm_dynamics.study --preset smoke --out /tmp/s
    python -m rdm_dynamics.study --file my-study.toml --jobs 2
    python -m rdm_dynamics.study --preset deep --jobs 2 --cohort 12   # seeds x rates batched
    python -m rdm_dynamics.study --show-preset gpu > my-study.toml    # a file to copy and edit

Trains every run of the study's grid (each an ordinary run folder under ``<out>/runs/``), runs
the trained-model checks and the sample-quality score on each, and judges C11
(``depth-consistency``) and C12 (``depth-scaling``).  Writes ``report.json`` (verify's report
contract), ``runs.csv`` (every run's figures) and one figure per claim.  Running it again on
the same ``--out`` skips finished runs and resumes the others exactly.

Exit codes: 0 every claim holds; 1 a claim fails (a measured outcome, said in the summary);
2 bad input (one line on stderr); 130 interrupted (finished runs are kept; run again to go on).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from .cli import Interrupted, Parser, UsageError, parse_device, parse_int, run_command

PROG = "python -m rdm_dynamics.study"


def build_parser() -> Parser:
    from .depth_study import PRESETS

    p = Parser(prog=PROG, description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", default=None,
                        help=f"a shipped study: {', '.join(PRESETS)} (default cpu)")
    source.add_argument("--file", default=None, metavar="PATH",
                        help="a study file (TOML or YAML: [train], [[grid]], [measure])")
    p.add_argument("--show-preset", default=None, metavar="NAME",
                   help="print a preset's file, to copy and edit, and exit")
    p.add_argument("--out", default="rdm-study", help="the study folder (default rdm-study/)")
    p.add_argument("--jobs", default="1", help="runs trained at a time, in processes "
                   "(default 1); the CPU threads are shared among them")
    p.add_argument("--cohort", default="1", metavar="N",
                   help="train up to N runs that differ only in seed and learning rate as one "
                        "batched model (train --cohort; default 1: each run alone)")
    p.add_argument("--nproc-per-run", default="1",
                   help="processes per run through torchrun (several GPUs; default 1)")
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda[:N] for training, checks and samples (default cpu)")
    p.add_argument("--max-steps", default=None,
                   help="cap every run's step budget (a quick trial of a preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a training setting for every run, over the study file's, or a "
                        "measure.NAME setting (repeatable; e.g. --set compile=false --set "
                        "measure.fd_samples=64)")
    p.add_argument("--runs", default=None, metavar="GLOB",
                   help="only the runs whose id matches this pattern (e.g. '*gate-rdm*'): a "
                        "shard of the study; C11 and C12 are judged on those and on every other "
                        "run of the study already finished in --out")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the JSON report here")
    return p


def _plan(args):
    from .depth_study import load_study, plan, preset_path
    from .depth_study.plan import MEASURE_KINDS, measure_config
    from .training.settings import SETTINGS, coerce, coerce_as

    if args.file is None:
        preset_path(args.preset or "cpu")  # an unknown preset name is not read as a file
    study = load_study(args.file or args.preset or "cpu")
    overrides = {"device": str(parse_device(args.device))}
    measure = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if sep and key.startswith("measure."):
            name = key.removeprefix("measure.")
            kind = MEASURE_KINDS.get(name)  # an unknown name: measure_config says so
            measure[name] = value if kind is None else coerce_as(kind, key, value)
            continue
        if not sep or key not in SETTINGS:
            raise UsageError(f"--set wants KEY=VALUE with KEY a training setting or "
                             f"measure.NAME, got {item!r}")
        overrides[key] = coerce(key, value)
    if measure:
        study = dataclasses.replace(study, measure=measure_config(study.measure, measure))
    if args.max_steps is not None:
        cap = parse_int(args.max_steps, "max-steps", 1)
        overrides["steps"] = min(cap, int(overrides.get("steps", study.train.get("steps", cap))))
        overrides["warmup"] = min(int(study.train.get("warmup", 0)), cap)
        overrides["ckpt_every"] = min(int(study.train.get("ckpt_every", cap)), cap)
    runs = plan(study, args.out, overrides)
    if args.runs is not None:
        import fnmatch

        runs = [r for r in runs if fnmatch.fnmatchcase(r.id, args.runs)]
        if not runs:
            raise UsageError(f"--runs {args.runs!r} matches no run of the study")
    return study, runs


def _foreign_table(path: Path) -> bool:
    """Whether ``path`` exists and is not a study's runs.csv (its header starts ``id,axis.``;
    a study killed between writing it and its report.json left it)."""
    if not path.exists():
        return False
    try:
        with open(path, "rb") as f:
            return not f.read(8).startswith(b"id,axis.")
    except OSError:
        return True


def _finished(args, runs, records: list[dict], out: Path) -> list[dict]:
    """The records a report describes: this process's ``runs`` and, with ``--runs`` (a shard of
    the study), every other run of the study already finished in ``out`` by any process, in
    the plan's order (depth_study.sharing)."""
    import argparse

    from .depth_study.sharing import finished_record

    if args.runs is None:
        return records
    mine = {spec.id: r for spec, r in zip(runs, records, strict=True)}
    _, whole = _plan(argparse.Namespace(**{**vars(args), "runs": None}))
    found = ((spec.id, mine.get(spec.id) or finished_record(out, spec)) for spec in whole)
    return [r for _, r in found if r is not None]


def main(argv=None) -> int:
    """Exit codes: 0 every claim holds, 1 a claim fails, 2 bad input or a study that cannot be
    written (one line on stderr), 130 interrupted (finished runs are kept)."""
    return run_command(PROG, lambda: _main(sys.argv[1:] if argv is None else argv))


def _check_targets(out: Path, args) -> None:
    """Refuse (one line) an --out or --json that holds files the study did not write: they are
    left as they are."""
    from .checks import registry
    from .checks.report import check_report_targets, is_report

    figures = [] if args.no_figures else [f"{cid}.png" for cid in registry("study")]
    check_report_targets(out, args.json, "study", figures)
    if not is_report(out / "report.json") and _foreign_table(out / "runs.csv"):
        raise UsageError(f"--out {args.out!r} holds a runs.csv that no study report belongs to: "
                         "choose another folder (it is left as it is)")


def _main(argv) -> int:
    began = time.perf_counter()
    args = build_parser().parse_args(argv)
    if args.show_preset is not None:
        from .depth_study import preset_path

        sys.stdout.write(preset_path(args.show_preset).read_text())
        return 0
    jobs = parse_int(args.jobs, "jobs", 1)
    nproc = parse_int(args.nproc_per_run, "nproc-per-run", 1)
    cohort = parse_int(args.cohort, "cohort", 1, 64)
    if cohort > 1 and nproc > 1:
        raise UsageError("--cohort trains in one process: it cannot go with --nproc-per-run")
    study, runs = _plan(args)
    out = Path(args.out)
    _check_targets(out, args)
    from .checks.report import format_table, render_figures, write_report
    from .depth_study import (
        StudyClaimConfig,
        StudyRunner,
        cell_table,
        run_claims,
        run_table,
        study_report,
    )
    from .depth_study.sharing import report_lock

    runner = StudyRunner(out, study.measure, jobs=jobs, device=str(parse_device(args.device)),
                         nproc_per_run=nproc, cohort=cohort,
                         log=lambda line: print(f"study: {line}", file=sys.stderr, flush=True))
    print(f"study {study.name}: {len(runs)} runs into {out}/runs, {jobs} at a time",
          file=sys.stderr)
    try:
        records = runner.run(runs)
        with report_lock(out):  # one writer of the report at a time (depth_study.sharing)
            records = _finished(args, runs, records, out)
            results = run_claims(StudyClaimConfig(records, out / "runs"))
            report = study_report(study, results, records, device=args.device,
                                  seconds=time.perf_counter() - began)
            figures = {} if args.no_figures else render_figures(results)
            write_report(out, report, figures, args.json,
                         extra={"runs.csv": run_table(records),
                                "cells.md": cell_table(records).encode()})
    except KeyboardInterrupt:
        runner.stop_children()
        raise Interrupted(f"interrupted; finished runs are kept in {out}/measurements, run the "
                          "same command again to go on") from None
    except OSError as exc:
        raise UsageError(f"cannot write the study: {exc}") from None
    print(format_table(results))
    print()
    for r in results:
        print(f"[{'PASS' if r.passed else 'FAIL'}] {r.id}: {r.summary}")
    print(f"\n{len(runs)} runs ({report['diverged']} diverged); report: {out / 'report.json'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
