"""The depth study behind claims C11 and C12: train a grid of gates x depths x seeds (x
initialisations, x learning rates) with one recipe, measure every trained run, and judge the
study claims on the runs (``checks.registry("study")``).

    from pathlib import Path

    from rdm_dynamics.checks.report import render_figures, write_report
    from rdm_dynamics.depth_study import *

    study = load_study("smoke")                        # a preset, or a study file
    runs = plan(study, "rdm-study")                    # every run of the grid
    records = StudyRunner("rdm-study", study.measure, jobs=2).run(runs)
    results = run_claims(StudyClaimConfig(records, Path("rdm-study/runs")))  # C11 and C12
    report = study_report(study, results, records, device="cpu", seconds=0.0)
    write_report("rdm-study", report, render_figures(results),  # verify's report contract
                 extra={"runs.csv": run_table(records)})

Parts: :mod:`.plan` (study files, the presets in ``presets/`` and the grid), :mod:`.runs`
(training, checking and scoring each run, resumable), :mod:`.aggregate` (what the study claims
are measured on: the records, their cells and slopes over seeds); here, the claims run on the
records and the report assembled.  The claims themselves are ``checks.depth_consistency`` (C11)
and ``checks.depth_scaling`` (C12).
"""

from __future__ import annotations

import csv
import io
import math

from ..checks import registry
from ..checks.report import CheckResult, overall_status, versions
from ..checks.workers import run_check
from .aggregate import StudyClaimConfig
from .plan import PRESETS, Study, load_study, plan, preset_path
from .runs import StudyRunner

__all__ = ["PRESETS", "Study", "load_study", "plan", "preset_path", "StudyRunner",
           "StudyClaimConfig", "run_claims", "run_table", "cell_table", "study_report"]


def run_claims(config: StudyClaimConfig) -> list[CheckResult]:
    """Every study claim (C11, C12) on a study's runs, in claim order, each timed as verify
    times its checks (``workers.run_check``: a claim that crashes is an error result)."""
    return [run_check(cid, module, config) for cid, module in registry("study").items()]


def _flat(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float, str, bool)) or value is None:
        out[prefix] = value


def run_table(records: list[dict]) -> bytes:
    """A CSV of every run: its axes, training outcome, scores and every numeric check metric."""
    rows = []
    for r in records:
        row: dict = {"id": r["id"], **{f"axis.{k}": v for k, v in r["axes"].items()},
                     "train_status": r.get("train_status"), "step": r.get("step"),
                     "final_loss": r.get("final_loss")}
        _flat("quality", r.get("quality") or {}, row)
        for cid, c in (r.get("checks") or {}).items():
            if isinstance(c, dict):
                row[f"{cid}.passed"] = c.get("passed")
                _flat(cid, c.get("metrics") or {}, row)
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v)
                         for k, v in row.items()})
    return buf.getvalue().encode()


def _cell(value: tuple[float, float], digits: int = 3, se: bool = True) -> str:
    mean, err = value
    if not math.isfinite(mean):
        return "inf" if mean == math.inf else "-"
    text = f"{mean:.{digits}g}"
    return f"{text} +/- {err:.2g}" if se and math.isfinite(err) else text


def cell_table(records: list[dict]) -> str:
    """C12's figures as a Markdown table: per cell (at its best learning rate) and depth, the
    excess risk (else FD ratio) with its standard error over seeds, the best learning rate,
    the bf16 output error, the trained sensitivity, the step-0 growth and sensitivity and the
    runs that diverged; then each cell's break depth."""
    from ..checks import depth_scaling as c12

    measured = c12.measure(StudyClaimConfig(records))
    tables, best, metrics = (measured.curves["table"], measured.curves["best_lr"],
                             measured.metrics)
    quality = measured.curves["quality"]
    lines = [f"| cell | depth | {quality.replace('_', ' ')} | best lr | bf16 error | "
             "sensitivity | growth at step 0 | sensitivity at step 0 | diverged |",
             "|---|---|---|---|---|---|---|---|---|"]
    breaks = []
    for cell in c12._ordered(tables):
        label, seeds = c12.cell_label(cell), measured.curves["cells"][cell]
        for d in sorted(tables[cell][quality]):
            row = tables[cell]
            diverged = sum(ladder[d].get("train_status") == "diverged"
                           for ladder in seeds.values() if d in ladder)
            lr = best.get(cell, {}).get(d)
            lines.append(f"| {label} | {d} | {_cell(row[quality][d])} | "
                         f"{'-' if lr is None else f'{lr:g}'} | {_cell(row['bf16_error'][d], 2)} "
                         f"| {_cell(row['sensitivity'][d], 3, False)} | "
                         f"{_cell(row['growth_step0'][d], 3, False)} | "
                         f"{_cell(row['sensitivity_step0'][d], 3, False)} | {diverged} |")
        breaks.append(f"{label}: {c12._break_text(metrics, label)}")
    return "\n".join(lines) + "\n\nbreak depth: " + "; ".join(breaks) + "\n"


def study_report(study: Study, results: list[CheckResult], records: list[dict], *,
                 device: str, seconds: float) -> dict:
    """The study's JSON report: verify's contract (DESIGN.md section 4) with the study's
    settings in place of the depth and schedule."""
    return {"study": study.name, "source": study.source, "device": device,
            "runs": len(records),
            "diverged": sum(r.get("train_status") == "diverged" for r in records),
            "failed_runs": [r["id"] for r in records if r.get("train_status") == "failed"],
            "passed": all(r.passed for r in results), "status": overall_status(results),
            "seconds": round(seconds, 3),
            "versions": versions(), "checks": [r.to_json() for r in results]}
