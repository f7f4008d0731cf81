"""C12 `depth-scaling`: does quality hold with depth under rdm gates, and degrade under plain?

Statement (DESIGN.md section 3b; a hypothesis, measured).  At fixed width, recipe and step
budget, across a ladder of depths and the gates, with seeds, four figures of each trained run of
a depth study (``depth_study.aggregate.StudyClaimConfig``: the run records):

    excess_risk      the exact excess denoising risk, mean over t-bins (C10 ``denoising-risk``,
                     metric ``excess_risk_mean``; data of known law only)
    fd_ratio         the digits Frechet distance of samples over its real-vs-real floor
    bf16_error       the relative output error of a bfloat16 forward pass (C8
                     ``trained-propagation``, metric ``output_error_bf16``)
    sensitivity      |p_0| / |p_L| (C9 ``trained-sensitivity``, metric ``sensitivity_ratio``)

For each cell (``depth_study.aggregate``) and figure: the slope of log(figure) against
log(depth), mean over seeds with its standard error.  Runs whose training diverged are counted;
they have no figures.

Gated (``rules``; the paper's hypothesis as DESIGN.md states it), with ``HOLD_SLOPE`` as the line
between holding and degrading.  rdm cells: quality holds or improves (the slopes of excess_risk
and fd_ratio consistent with holding), the bf16 error and the sensitivity stay bounded in depth,
no run diverged.  plain cells: quality degrades (the slope of excess_risk beyond holding; of
fd_ratio where the data have no known law).  Other gates are measured and reported, not gated.
A study without an rdm and a plain cell cannot state the hypothesis: its cell-count rules fail.

When the learning rate is an axis, the best learning rate at each depth (lowest mean excess risk,
or FD ratio, over seeds) is reported, and whether it is the same at every depth (reported, not
gated: the transfer claims of depth-muP and CompleteP are not this toolkit's hypothesis).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from ..depth_study.aggregate import (
    StudyClaimConfig,
    by_cell,
    cell_label,
    cell_style,
    log_slope_over_seeds,
    mean_by_depth,
)
from .claim import Measurement
from .rules import Rule

CLAIM = "C12"
ID = "depth-scaling"
TITLE = "quality holds with depth under rdm gates and degrades under plain residuals"

SE_BAND = 2.0
#: The slope of log(figure) against log(depth) below which a figure "holds" in depth: 0.1 is a
#: rise of 7% per doubling of depth.  Above it (beyond 2 standard errors) a figure "degrades".
HOLD_SLOPE = 0.1
THEORY = f"rdm: slopes <= {HOLD_SLOPE}; plain: > {HOLD_SLOPE}"

#: figure name -> (where in a run record, what it is)
FIGURES = {
    "excess_risk": (("checks", "denoising-risk", "excess_risk_mean"), "excess denoising risk"),
    "fd_ratio": (("quality", "fd_ratio"), "FD / real floor"),
    "bf16_error": (("checks", "trained-propagation", "output_error_bf16"),
                   "bf16 relative output error"),
    "sensitivity": (("checks", "trained-sensitivity", "sensitivity_ratio"), "|p_0| / |p_L|"),
}
QUALITY = ("excess_risk", "fd_ratio")
BOUNDED = ("bf16_error", "sensitivity")


def figure_of(record: dict, name: str) -> float:
    """A run's figure ``name`` (FIGURES), NaN where the run did not produce it."""
    where, _ = FIGURES[name]
    if record.get("train_status") != "done":
        return math.nan
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


def _slope(seeds: dict, name: str) -> tuple[float, float, int]:
    values = [[(d, figure_of(r, name)) for d, r in ladder.items()] for ladder in seeds.values()]
    ladders = [[(d, v) for d, v in ladder if math.isfinite(v) and v > 0] for ladder in values]
    slope, se, per_seed = log_slope_over_seeds(ladders, missing="drop")
    return slope, se, len(per_seed)


def cell_metrics(cell: tuple, seeds: dict) -> dict[str, float]:
    """One cell's metrics: the slope of each figure measured (with its standard error) and the
    number of runs that diverged."""
    label = cell_label(cell)
    metrics = {}
    for name in FIGURES:
        slope, se, n = _slope(seeds, name)
        if n:
            key = f"slope_{name}[{label}]"
            metrics[key], metrics[f"{key}_se"] = slope, se
    metrics[f"diverged_runs[{label}]"] = sum(r.get("train_status") == "diverged"
                                             for ladder in seeds.values() for r in ladder.values())
    return metrics


def _gate(cell: tuple) -> str:
    return dict(cell).get("gate", "rdm")


def measure(config: StudyClaimConfig) -> Measurement:
    """C12's metrics on a study's run records; ``curves``: the cells, each figure's mean and
    standard error per depth and cell (``table``) and the best learning rates (``best_lr``)."""
    cells = by_cell(config.records)
    metrics: dict[str, float] = {}
    table = {}
    for cell, seeds in cells.items():
        metrics.update(cell_metrics(cell, seeds))
        table[cell] = {name: mean_by_depth(seeds, lambda r, n=name: figure_of(r, n))
                       for name in FIGURES}
    metrics["rdm_cells"] = sum(_gate(cell) == "rdm" for cell in cells)
    metrics["plain_cells"] = sum(_gate(cell) == "plain" for cell in cells)
    best, best_series = _best_learning_rates(config.records)
    metrics.update(best)
    return Measurement(metrics, config, curves={"cells": cells, "table": table,
                                                 "best_lr": best_series})


def rules(measured: Measurement) -> list[Rule]:
    """At least one rdm and one plain cell; per cell, in the cells' order: rdm runs never
    diverge and every figure measured holds in depth; plain quality degrades (its excess risk,
    else its FD ratio)."""
    out = [Rule("rdm_cells", (1, None)), Rule("plain_cells", (1, None))]
    m = measured.metrics
    for cell in measured.curves["cells"]:
        label, gate = cell_label(cell), _gate(cell)
        if gate == "rdm":
            out.append(Rule(f"diverged_runs[{label}]", (0, 0)))
            out += [Rule(f"slope_{name}[{label}]", (None, HOLD_SLOPE), margin=-SE_BAND)
                    for name in (*QUALITY, *BOUNDED) if f"slope_{name}[{label}]" in m]
        elif gate == "plain":
            name = "excess_risk" if f"slope_excess_risk[{label}]" in m else "fd_ratio"
            out.append(Rule(f"slope_{name}[{label}]", (HOLD_SLOPE, None), margin=SE_BAND))
    return out


def _best_learning_rates(records: list[dict]) -> tuple[dict[str, float], dict]:
    """Best learning rate per (cell without lr, depth), when the learning rate is an axis: the
    metrics, and for the figure cell -> depth -> best lr ({} when lr is not swept)."""
    if len({r["axes"].get("lr") for r in records} - {None}) < 2:
        return {}, {}
    groups: dict = defaultdict(lambda: defaultdict(list))
    for r in records:
        rest = tuple(sorted((k, v) for k, v in r["axes"].items()
                            if k not in ("depth", "seed", "lr")))
        name = "excess_risk" if math.isfinite(figure_of(r, "excess_risk")) else "fd_ratio"
        groups[(rest, int(r["depth"]))][r["axes"]["lr"]].append(figure_of(r, name))
    out, series = {}, defaultdict(dict)
    for (rest, depth), by_lr in sorted(groups.items()):
        means = {lr: np.nanmean(v) if np.isfinite(v).any() else math.inf
                 for lr, v in by_lr.items()}
        lr = min(means, key=means.get)
        out[f"best_lr[{cell_label(rest)},depth={depth}]"] = float(lr)
        series[rest][depth] = float(lr)
    for rest, by_depth in series.items():
        out[f"best_lr_transfers[{cell_label(rest)}]"] = int(len(set(by_depth.values())) == 1)
    return out, dict(series)


def _slope_text(metrics, name, label) -> str:
    key = f"slope_{name}[{label}]"
    if key not in metrics or not math.isfinite(metrics[key]):
        return f"{name} n/a"
    return f"{name} {metrics[key]:+.2f} +/- {metrics.get(key + '_se', math.nan):.2f}"


def headline(measured: Measurement) -> str:
    """The quality slope (excess risk, else FD ratio) of every rdm and plain cell."""
    cells, metrics = measured.curves["cells"], measured.metrics
    parts = []
    for cell in cells:
        axes, label = dict(cell), cell_label(cell)
        if axes.get("gate") in ("rdm", "plain"):
            name = "excess_risk" if f"slope_excess_risk[{label}]" in metrics else "fd_ratio"
            parts.append(f"{label}: {_slope_text(metrics, name, label)}")
    return "; ".join(parts) or "no rdm or plain cell"


def summary(measured: Measurement, verdict) -> str:
    cells, metrics = measured.curves["cells"], measured.metrics
    if not metrics["rdm_cells"] or not metrics["plain_cells"]:
        return ("C12 cannot be stated on this study: it needs an rdm and a plain cell, each on "
                "a ladder of depths.")
    words = []
    for cell in cells:
        axes, label = dict(cell), cell_label(cell)
        if axes.get("gate") not in ("rdm", "plain"):
            continue
        slopes = ", ".join(_slope_text(metrics, n, label) for n in FIGURES
                           if f"slope_{n}[{label}]" in metrics)
        words.append(f"{label}: slopes against log depth {slopes}")
    outcome = ("the hypothesis holds: rdm quality holds in depth while plain degrades"
               if verdict.passed else
               f"the hypothesis fails on {', '.join(verdict.failed)} (a measured outcome)")
    return "; ".join(words) + f". {outcome}."


def figure(measured: Measurement):
    """Each figure against depth per cell, with standard-error bars; and, when the learning
    rate was swept, the best learning rate against depth per cell."""
    table, best_lr = measured.curves["table"], measured.curves["best_lr"]

    def draw(fig):
        axes = fig.subplots(1, len(FIGURES) + bool(best_lr))
        if best_lr:
            ax = axes[-1]
            for cell, by_depth in best_lr.items():
                depths = sorted(by_depth)
                ax.plot(depths, [by_depth[d] for d in depths], label=cell_label(cell),
                        **cell_style(cell, best_lr))
            ax.set(xscale="log", yscale="log", xlabel="depth",
                   title="best learning rate (lowest excess risk, else FD)")
            ax.legend(fontsize=7)
        for ax, (name, (_, title)) in zip(axes, FIGURES.items(), strict=False):
            for cell, figures in table.items():
                series = figures[name]
                depths = [d for d in sorted(series) if math.isfinite(series[d][0])]
                if depths:
                    ax.errorbar(depths, [series[d][0] for d in depths],
                                yerr=[np.nan_to_num(series[d][1]) for d in depths], capsize=3,
                                label=cell_label(cell), **cell_style(cell, table))
            ax.set(xscale="log", xlabel="depth", title=title)
            if ax.get_legend_handles_labels()[0]:
                ax.set_yscale("log")
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center",
                        transform=ax.transAxes)
        fig.set_size_inches(4.2 * len(axes), 4.2)
    return draw
