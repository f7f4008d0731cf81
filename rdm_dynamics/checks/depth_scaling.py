"""C12 `depth-scaling`: does quality hold with depth under rdm gates, and break without them?

Statement (DESIGN.md sections 3b and 3c; a hypothesis, measured).  At fixed width, recipe and
step budget, across a ladder of depths and the gates, with seeds and a small learning-rate sweep,
figures of each trained run of a depth study (``depth_study.aggregate.StudyClaimConfig``: the
run records):

    excess_risk      the exact excess denoising risk, mean over t-bins (C10 ``denoising-risk``,
                     metric ``excess_risk_mean``; data of known law only)
    fd_ratio         the digits Frechet distance of samples over its real-vs-real floor
    bf16_error       the relative output error of a bfloat16 forward pass (C8
                     ``trained-propagation``, metric ``output_error_bf16``, or the study's own
                     measurement of it: ``depth_study.propagation``)
    sensitivity      |p_0| / |p_L| (C9 ``trained-sensitivity``, metric ``sensitivity_ratio``)
    growth_step0, sensitivity_step0   the same propagation at initialisation (reported)

Each (gate cell, depth) is taken at its best learning rate (``aggregate.best_lr_view``: fewest
diverged runs, then the lowest mean quality figure over seeds); the best learning rate per depth
is reported (whether it moves with depth: the depth-muP / CompleteP question, not gated).  For
each cell and figure: the slope of log(figure) against log(depth), mean over seeds with its
standard error.  A cell's **break depth**: with b the depth of lowest mean quality figure
(excess risk, else FD ratio), the smallest deeper depth d whose mean exceeds b's by more than
``BREAK_SE`` standard errors of the difference and by more than ``BREAK_REL`` of b's, or whose
runs diverged (at the best learning rate: every learning rate diverged there); none if no depth
of the ladder does.  Depths below b are not breaks (a shallow model lacks capacity; it has not
broken).

Gated (``rules``; the paper's hypothesis as DESIGN.md states it).  rdm cells: the ladder reaches
``DEEP_UNITS`` residual units, no break depth, the bf16 output error's slope at most
``ROUNDING_SLOPE`` (C5's sqrt(L) rounding floor) within 2 standard errors, the sensitivity's at
most ``HOLD_SLOPE`` within 2 standard errors.  Cells of the residual network without
normalisation (gate plain, ``norm`` false): a break depth.  Other gates (pre-norm plain,
post-ln, rezero, adaln-zero) and C11's i.i.d. control are measured and reported, not gated.
A study without an rdm cell and an un-normalised plain cell cannot state the hypothesis: its
cell-count rules fail.
"""

from __future__ import annotations

import math

import numpy as np

from ..depth_study.aggregate import (
    StudyClaimConfig,
    best_lr_view,
    by_cell,
    cell_label,
    cell_style,
    depth_axis,
    legend_beside,
    log_slope_over_seeds,
    mean_by_depth,
)
from .claim import Measurement
from .rules import Rule

CLAIM = "C12"
ID = "depth-scaling"
TITLE = "rdm gates have no break depth in the deep regime; the un-normalised residual net has one"

SE_BAND = 2.0
#: The slope of log(figure) against log(depth) below which a figure "holds" in depth: 0.1 is a
#: rise of 7% per doubling of depth.
HOLD_SLOPE = 0.1
#: C5's rounding model: the bf16 output error grows as sqrt(L) even under ODE-consistent gates.
ROUNDING_SLOPE = 0.5
#: A break: the mean figure exceeds the best depth's by more than BREAK_SE standard errors of
#: the difference and by more than BREAK_REL of it.
BREAK_SE, BREAK_REL = 2.0, 0.10
#: The residual units the rdm ladder must reach for the hypothesis to be stated (section 3c).
DEEP_UNITS = 256
THEORY = (f"rdm: no break to >= {DEEP_UNITS} units, bf16 slope <= {ROUNDING_SLOPE}; "
          f"plain without norm: a break")

#: figure name -> (where in a run record: one or more paths, tried in order; what it is)
FIGURES = {
    "excess_risk": ((("checks", "denoising-risk", "excess_risk_mean"),),
                    "excess denoising risk"),
    "fd_ratio": ((("quality", "fd_ratio"),), "FD / real floor"),
    "bf16_error": ((("checks", "trained-propagation", "output_error_bf16"),
                    ("propagation", "output_error_bf16")), "bf16 relative output error"),
    "sensitivity": ((("checks", "trained-sensitivity", "sensitivity_ratio"),),
                    "|p_0| / |p_L| (trained)"),
    "growth_step0": ((("step0", "stream_growth"),), "|z_L - z_0| / |z_0| at step 0"),
    "sensitivity_step0": ((("step0", "sensitivity"),), "|p_0| / |p_L| at step 0"),
}
QUALITY = ("excess_risk", "fd_ratio")
STEP0 = ("growth_step0", "sensitivity_step0")


def _lookup(record: dict, where: tuple) -> float:
    node = record
    if where[0] == "checks":
        node = (record.get("checks") or {}).get(where[1]) or {}
        if node.get("applicable") is False:
            return math.nan
        value = (node.get("metrics") or {}).get(where[2])
    else:
        value = (record.get(where[0]) or {}).get(where[1])
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def figure_of(record: dict, name: str) -> float:
    """A run's figure ``name`` (FIGURES), NaN where the run did not produce it (trained figures
    need a finished run; the step-0 figures exist for every run that started)."""
    paths, _ = FIGURES[name]
    if name not in STEP0 and record.get("train_status") != "done":
        return math.nan
    for where in paths:
        value = _lookup(record, where)
        if not math.isnan(value):
            return value
    return math.nan


def quality_name(records) -> str:
    """The quality figure of a study: the excess risk where any run has it, else the FD ratio."""
    has_risk = any(math.isfinite(figure_of(r, "excess_risk")) for r in records)
    return "excess_risk" if has_risk else "fd_ratio"


def _slope(seeds: dict, name: str) -> tuple[float, float, int]:
    values = [[(d, figure_of(r, name)) for d, r in ladder.items()] for ladder in seeds.values()]
    ladders = [[(d, v) for d, v in ladder if math.isfinite(v) and v > 0] for ladder in values]
    slope, se, per_seed = log_slope_over_seeds(ladders, missing="drop")
    return slope, se, len(per_seed)


def break_depth(series: dict, diverged: dict) -> tuple[int | None, int | None]:
    """(break depth or None, best depth or None) of one cell (module docstring).

    ``series``: depth -> (mean, standard error) of the quality figure; ``diverged``: depth ->
    runs that diverged there.  A cell whose every depth diverged breaks at its shallowest."""
    finite = {d: m for d, (m, _) in series.items() if math.isfinite(m) and not diverged.get(d)}
    if not finite:
        return (min(series) if series and any(diverged.values()) else None), None
    best = min(finite, key=finite.get)
    m_b, se_b = series[best]
    for d in sorted(x for x in series if x > best):
        m, se = series[d]
        if diverged.get(d):
            return d, best
        if math.isfinite(m) and m - m_b > BREAK_SE * math.hypot(se, se_b) \
                and m > (1 + BREAK_REL) * m_b:
            return d, best
    return None, best


def kind(cell: tuple) -> str:
    """What the hypothesis says of a cell: ``rdm``, ``plain-no-norm`` or ``other`` (an rdm
    cell whose init axis is ``iid`` is C11's control, reported here, not gated)."""
    axes = dict(cell)
    gate = axes.get("gate", "rdm")
    if gate == "plain" and axes.get("norm") is False:
        return "plain-no-norm"
    return "rdm" if gate == "rdm" and axes.get("init") != "iid" else "other"


def _units(seeds: dict) -> float:
    """The most residual units of a cell's runs (from their step-0 record); NaN if unknown."""
    units = [(r.get("step0") or {}).get("units") for ladder in seeds.values()
             for r in ladder.values()]
    units = [u for u in units if isinstance(u, (int, float))]
    return float(max(units)) if units else math.nan


def cell_metrics(cell: tuple, seeds: dict, quality: str) -> tuple[dict, dict]:
    """One cell's metrics (slopes with standard errors, diverged runs, break depth, units) and
    its table: figure -> depth -> (mean, standard error)."""
    label = cell_label(cell)
    metrics, table = {}, {}
    for name in FIGURES:
        table[name] = mean_by_depth(seeds, lambda r, n=name: figure_of(r, n))
        slope, se, n = _slope(seeds, name)
        if n:
            key = f"slope_{name}[{label}]"
            metrics[key], metrics[f"{key}_se"] = slope, se
    diverged = {}
    for ladder in seeds.values():
        for d, r in ladder.items():
            diverged[d] = diverged.get(d, 0) + (r.get("train_status") == "diverged")
    metrics[f"diverged_runs[{label}]"] = sum(diverged.values())
    broke, best = break_depth(table[quality], diverged)
    metrics[f"break_found[{label}]"] = int(broke is not None)
    metrics[f"break_depth[{label}]"] = math.nan if broke is None else float(broke)
    metrics[f"best_depth[{label}]"] = math.nan if best is None else float(best)
    metrics[f"units_max[{label}]"] = _units(seeds)
    return metrics, table


def measure(config: StudyClaimConfig) -> Measurement:
    """C12's metrics on a study's run records, each (cell, depth) at its best learning rate;
    ``curves``: the cells, their tables (figure -> depth -> (mean, se)), the best learning
    rates (cell -> depth -> lr) and the quality figure's name."""
    quality = quality_name(config.records)
    view, best = best_lr_view(config.records, lambda r: figure_of(r, quality))
    cells = by_cell(view)
    metrics: dict[str, float] = {}
    tables = {}
    for cell, seeds in cells.items():
        m, tables[cell] = cell_metrics(cell, seeds, quality)
        metrics.update(m)
    metrics["rdm_cells"] = sum(kind(c) == "rdm" for c in cells)
    metrics["plain_no_norm_cells"] = sum(kind(c) == "plain-no-norm" for c in cells)
    best_lr: dict = {}
    for (cell, depth), lr in sorted(best.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        metrics[f"best_lr[{cell_label(cell)},depth={depth}]"] = float(lr)
        best_lr.setdefault(cell, {})[depth] = float(lr)
    for cell, by_depth in best_lr.items():
        metrics[f"best_lr_transfers[{cell_label(cell)}]"] = int(len(set(by_depth.values())) == 1)
    return Measurement(metrics, config, curves={"cells": cells, "table": tables,
                                                 "best_lr": best_lr, "quality": quality})


def rules(measured: Measurement) -> list[Rule]:
    """At least one rdm and one un-normalised plain cell; per rdm cell: the ladder reaches
    DEEP_UNITS units, no break, the bf16 slope within C5's rounding floor and the sensitivity's
    within holding; per un-normalised plain cell: a break."""
    out = [Rule("rdm_cells", (1, None)), Rule("plain_no_norm_cells", (1, None))]
    for cell in measured.curves["cells"]:
        label = cell_label(cell)
        if kind(cell) == "rdm":
            out += [Rule(f"units_max[{label}]", (DEEP_UNITS, None)),
                    Rule(f"break_found[{label}]", (0, 0)),
                    Rule(f"slope_bf16_error[{label}]", (None, ROUNDING_SLOPE), margin=-SE_BAND),
                    Rule(f"slope_sensitivity[{label}]", (None, HOLD_SLOPE), margin=-SE_BAND)]
        elif kind(cell) == "plain-no-norm":
            out.append(Rule(f"break_found[{label}]", (1, 1)))
    return out


def _break_text(metrics: dict, label: str) -> str:
    depth = metrics.get(f"break_depth[{label}]", math.nan)
    return "none" if not math.isfinite(depth) else f"{int(depth)}"


def _ordered(cells) -> list:
    return sorted(cells, key=lambda c: ({"rdm": 0, "plain-no-norm": 1}.get(kind(c), 2),
                                        cell_label(c)))


def headline(measured: Measurement) -> str:
    """Every cell's break depth (the gated cells first)."""
    metrics = measured.metrics
    parts = [f"{cell_label(c)}: break {_break_text(metrics, cell_label(c))}"
             for c in _ordered(measured.curves["cells"])]
    return "; ".join(parts) or "no cell"


def _slope_text(metrics, name, label) -> str:
    key = f"slope_{name}[{label}]"
    if key not in metrics or not math.isfinite(metrics[key]):
        return f"{name} n/a"
    return f"{name} {metrics[key]:+.2f} +/- {metrics.get(key + '_se', math.nan):.2f}"


def summary(measured: Measurement, verdict) -> str:
    metrics = measured.metrics
    if not metrics["rdm_cells"] or not metrics["plain_no_norm_cells"]:
        return ("C12 cannot be stated on this study: it needs an rdm cell and a cell of the "
                "residual network without normalisation (gate plain, norm false), each on a "
                f"ladder of depths reaching {DEEP_UNITS} residual units.")
    words = []
    for cell in _ordered(measured.curves["cells"]):
        label = cell_label(cell)
        units = metrics.get(f"units_max[{label}]", math.nan)
        reach = f"{int(units)} units" if math.isfinite(units) else "units unknown"
        slopes = ", ".join(_slope_text(metrics, n, label) for n in ("bf16_error", "sensitivity")
                           if f"slope_{n}[{label}]" in metrics)
        words.append(f"{label} (to {reach}): break {_break_text(metrics, label)}"
                     + (f", slopes {slopes}" if slopes else ""))
    outcome = ("the hypothesis holds" if verdict.passed else
               f"the hypothesis fails on {', '.join(verdict.failed)} (a measured outcome)")
    return ("Each cell at its best learning rate per depth; " + "; ".join(words)
            + f". {outcome}.")


def _draw_series(ax, table: dict, name: str, measured: Measurement) -> list[int]:
    """Every cell's ``name`` against depth with standard-error bars; the break marked."""
    depths_seen = []
    for cell, figures in table.items():
        series = figures[name]
        depths = [d for d in sorted(series) if math.isfinite(series[d][0]) and series[d][0] > 0]
        depths_seen += list(series)
        if not depths:
            continue
        style = cell_style(cell, table)
        ax.errorbar(depths, [series[d][0] for d in depths],
                    yerr=[np.nan_to_num(series[d][1]) for d in depths], capsize=3,
                    label=cell_label(cell), **style)
        broke = measured.metrics.get(f"break_depth[{cell_label(cell)}]", math.nan)
        if name == measured.curves["quality"] and math.isfinite(broke):
            y = series.get(int(broke), (math.nan,))[0]
            y = y if math.isfinite(y) and y > 0 else max(series[d][0] for d in depths)
            ax.plot([broke], [y], marker="X", markersize=13, color=style["color"],
                    markeredgecolor="k", linestyle="none")
    return depths_seen


def figure(measured: Measurement):
    """One panel per figure family, each cell at its best learning rate: the quality figure
    (log-log, error bars, each break marked X), the bf16 error, the trained sensitivity, the
    step-0 growth and sensitivity, and the best learning rate per depth; one legend beside."""
    table, best_lr = measured.curves["table"], measured.curves["best_lr"]
    quality = measured.curves["quality"]
    names = [quality] + [n for n in FIGURES if n not in QUALITY]

    def draw(fig):
        axes = list(np.atleast_1d(fig.subplots(1, len(names) + bool(best_lr))))
        for ax, name in zip(axes, names, strict=False):
            depth_axis(ax, _draw_series(ax, table, name, measured))
            title = FIGURES[name][1] + (" (X: break)" if name == quality else "")
            ax.set_title(title, fontsize=9)
            if any(line.get_xydata().size for line in ax.get_lines()):
                ax.set_yscale("log")
            else:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center",
                        transform=ax.transAxes)
        if best_lr:
            ax = axes[-1]
            for cell, by_depth in best_lr.items():
                depths = sorted(by_depth)
                ax.plot(depths, [by_depth[d] for d in depths], label=cell_label(cell),
                        **cell_style(cell, best_lr))
            depth_axis(ax, [d for by in best_lr.values() for d in by])
            ax.set_yscale("log")
            ax.set_title("best learning rate", fontsize=9)
        legend_beside(fig, axes)
        fig.set_size_inches(3.4 * len(axes) + 2.0, 3.6)
    return draw
