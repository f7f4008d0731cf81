"""What the study claims (C11, C12) are measured on: a study's run records, grouped into cells,
and figures fitted against depth with the seeds as replicates.

A *cell* is every axis of a run except ``depth`` and ``seed`` (gate, init, data, learning rate,
...): the runs of one cell and one seed form a depth ladder, and the seeds are independent
replicates of it.  A figure's trend in depth is the least-squares slope of log(figure) against
log(depth) on each seed's ladder (``stats.fit_line``); its estimate is the mean over seeds with
the standard error std / sqrt(n_seeds) (``stats.mean_se``).  With a single seed the standard
error is the fit's own (from its residuals, which needs three depths); with neither it is NaN,
and no rule with a margin can pass on it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..stats import fit_line, mean_se

__all__ = ["StudyClaimConfig", "cell_of", "cell_label", "cell_style", "by_cell", "best_lr_view",
           "depth_axis", "legend_beside",
           "log_slope_over_seeds", "mean_by_depth"]

#: A run's record (``runs.StudyRunner.run_one``): its id, axes, depth, training status, the
#: trained-model checks' metrics and the sample-quality scores.
Record = dict


@dataclass(frozen=True)
class StudyClaimConfig:
    """What a study claim (``checks.registry("study")``) is measured on: the records of a
    study's runs, and the folder holding the run folders (``<out>/runs``: C11 reads the trained
    weights there; None where only the records are needed)."""

    records: list[Record]
    runs_folder: Path | None = None


def cell_of(record: Record) -> tuple:
    """The cell of a run: its axes other than depth and seed, as sorted (name, value) pairs."""
    return tuple(sorted((k, v) for k, v in record["axes"].items() if k not in ("depth", "seed")))


def cell_label(cell: tuple) -> str:
    """A short name of a cell for metric keys and legends: its values, comma separated (the
    ``norm`` axis as ``norm`` or ``no-norm``)."""
    def word(k, v):
        return ("norm" if v else "no-norm") if k == "norm" else str(v)

    return ",".join(word(k, v) for k, v in cell) or "all"


#: The colour of each gate in the study's figures (other gates: black).
GATE_COLOURS = {"plain": "C3", "post-ln": "C1", "rezero": "C2", "adaln-zero": "C4", "rdm": "C0"}
INIT_MARKERS = {"smooth": "o", "iid": "s"}
LINE_STYLES = ("-", "--", ":", "-.")


def cell_style(cell: tuple, cells) -> dict:
    """How a cell is drawn among ``cells`` (matplotlib keywords): the colour says its gate, the
    marker its initialisation, the line style the values of its other axes (the data, ...)."""
    values = dict(cell)

    def rest(c):
        return tuple((k, str(v)) for k, v in c if k not in ("gate", "init"))

    others = sorted({rest(c) for c in cells})
    return {"color": GATE_COLOURS.get(values.get("gate"), "k"),
            "marker": INIT_MARKERS.get(values.get("init"), "^"),
            "linestyle": LINE_STYLES[others.index(rest(cell)) % len(LINE_STYLES)]}


def by_cell(records: Iterable[Record]) -> dict[tuple, dict[int, dict[int, Record]]]:
    """cell -> seed -> depth -> record."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for r in records:
        out[cell_of(r)][int(r["axes"].get("seed", 0))][int(r["depth"])] = r
    return {c: {s: dict(d) for s, d in seeds.items()} for c, seeds in out.items()}


def log_slope_over_seeds(ladders: Sequence[Sequence[tuple[float, float]]], *,
                         missing: str = "nan") -> tuple[float, float, list[float]]:
    """Slope of log(value) against log(depth): mean over the seeds' ladders, standard error,
    and the per-seed slopes.  ``ladders``: one list of (depth, value) per seed."""
    slopes, fit_se = [], math.nan
    for ladder in ladders:
        if len(ladder) < 2:
            continue
        depths, values = zip(*sorted(ladder), strict=True)
        line = fit_line(depths, values, log_x=True, missing=missing)
        slopes.append(line.slope)
        fit_se = line.stderr if len(depths) > 2 else math.nan
    if not slopes:
        return math.nan, math.nan, []
    if len(slopes) == 1:
        return slopes[0], fit_se, slopes
    mean, se = mean_se(np.asarray(slopes))
    return mean, se, slopes


def mean_by_depth(seeds: dict[int, dict[int, Record]],
                  value: Callable[[Record], float]) -> dict[int, tuple[float, float]]:
    """depth -> (mean over seeds, standard error) of ``value(record)``, finite values only
    ((inf, NaN) where every value is +inf: a figure that overflowed in every seed)."""
    depths = sorted({d for ladder in seeds.values() for d in ladder})
    out = {}
    for d in depths:
        raw = np.array([value(ladder[d]) for ladder in seeds.values() if d in ladder], float)
        vals = raw[np.isfinite(raw)]
        if len(vals) == 0:
            everywhere_inf = len(raw) > 0 and bool(np.all(raw == math.inf))
            out[d] = (math.inf if everywhere_inf else math.nan, math.nan)
        elif len(vals) == 1:
            out[d] = (float(vals[0]), math.nan)
        else:
            out[d] = mean_se(vals)
    return out


def _lr_score(records: list[Record], value: Callable[[Record], float]) -> tuple[int, float]:
    """How good one learning rate is at one depth of one cell: (runs diverged, mean of the
    finite values over seeds, inf if none); lower is better."""
    diverged = sum(r.get("train_status") == "diverged" for r in records)
    values = [v for v in (value(r) for r in records) if math.isfinite(v)]
    return diverged, (float(np.mean(values)) if values else math.inf)


def best_lr_view(records: Iterable[Record],
                 value: Callable[[Record], float]) -> tuple[list[Record], dict]:
    """Each (cell without the learning rate, depth) at its best learning rate.

    The best learning rate is the one whose runs diverged least, then whose mean ``value`` over
    seeds is lowest.  Returns the records of the best learning rates with ``lr`` taken out of
    their axes (so that ``by_cell`` groups a gate's depths into one ladder, and ``best_lr``
    added), and {(cell, depth): best lr}.  Records are returned unchanged when the learning rate
    is not an axis of the study."""
    records = list(records)
    if not any("lr" in r["axes"] for r in records):
        return records, {}
    groups: dict = defaultdict(lambda: defaultdict(list))
    for r in records:
        cell = tuple(sorted((k, v) for k, v in r["axes"].items()
                            if k not in ("lr", "seed", "depth")))
        groups[(cell, int(r["depth"]))][r["axes"].get("lr")].append(r)
    view, best = [], {}
    for (cell, depth), by_lr in groups.items():
        lr = min(by_lr, key=lambda x: (*_lr_score(by_lr[x], value), x))
        best[(cell, depth)] = lr
        view += [{**r, "axes": {k: v for k, v in r["axes"].items() if k != "lr"},
                  "best_lr": lr} for r in by_lr[lr]]
    return view, best


def depth_axis(ax, depths: Iterable[int], label: str = "depth") -> None:
    """A log depth axis with ticks at the ladder's depths, labelled as plain integers."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    ticks = sorted({int(d) for d in depths})
    ax.set_xscale("log")
    ax.set_xlabel(label)
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.set_xticklabels([str(t) for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())


def legend_beside(fig, axes) -> None:
    """One legend for the whole figure, to the right of the axes (never over the data): the
    entries of every panel, each label once (the figure's layout must be constrained, as
    ``checks.report`` makes it)."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside right center",
                   fontsize=7, frameon=False)
