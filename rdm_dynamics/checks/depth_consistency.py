"""C11 `depth-consistency`: trained gated stacks stay discretised flows in depth.

Statement (DESIGN.md section 3b).  Backbones of one recipe trained at depths N, 2N, 4N from a
depth-smooth initialisation (``models.depth_init``: unit i's initial weights one smooth function
of tau_i = i / L, the same function at every depth) stay smooth in depth, and the trained
weights of depth 2N at tau match those of depth N; with i.i.d. initialisation they do not (the
control).  The sum of the rdm gates stays of order one.

Measured on the trained weights (``model``, not the EMA) of every finished run of a depth study
(``depth_study.aggregate.StudyClaimConfig``: the run records and the folder of their runs).
theta_i is the flattened branch of unit i (gates excluded: they are the step sizes, which scale
with 1/L); units are compared within their role (``depth_init.unit_groups``: same position in
the architecture, tau_j = j / n within a group of n units), only in groups whose size doubles
from N to 2N.

* distance d(N) = max_j |theta^(2N)_(2j) - theta^(N)_j| / |theta^(N)_j|  (the 2N model at
  tau = j / N against the N model there, relative to the unit's own norm); on a ladder without
  2N (the deep ladder's factor 4) the next multiple kN on it, unit kj against unit j;
* its order: minus the slope of log d against log N on each seed's ladder, mean over seeds with
  its standard error (``depth_study.aggregate``), reported against the 1 of the linear theory
  (an O(1/N) discretisation error of a smooth depth flow: ``LINEAR_ORDER``);
* smoothness s(L) = max_j |theta_(j+1) - theta_j| / |theta_j| of each run;
* the sum of the rdm gates, sum_i mean_c |alpha_i|, of each rdm run (1 at initialisation, where
  alpha_i = 1/L).

Gated (``rules``): in every cell with rdm gates and smooth initialisation the distance falls
(its order positive beyond its standard errors); in every cell with i.i.d. initialisation (the
control) it does not fall at the rate of a converging discretisation; every rdm run's gate sum
stays of order one.  A study with no rdm-smooth cell or no i.i.d. cell cannot state the claim:
the rule on the number of such cells fails, and the summary says what is missing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..depth_study.aggregate import (
    StudyClaimConfig,
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

CLAIM = "C11"
ID = "depth-consistency"
TITLE = "trained N and 2N models agree at equal tau when initialised smoothly in depth"
THEORY = "smooth: d(N) falls; iid: does not"

SE_BAND = 2.0
CONTROL_ORDER_MAX = 0.5
#: The order of the N-vs-2N distance in the linear theory (reported beside the fitted order).
LINEAR_ORDER = 1.0
GATE_SUM_RANGE = (0.2, 5.0)


def unit_weights(folder: str | Path):
    """(role -> list of flattened float64 branch weights in forward order, gate kind, gate sum)
    of the newest checkpoint in ``folder``."""
    from ..models import load_model
    from ..models.depth_init import unit_groups
    from ..training.checkpoint import latest_checkpoint, load_checkpoint

    net = load_model(load_checkpoint(latest_checkpoint(folder)), "model")
    groups = {key: [torch.cat([p.detach().double().flatten() for p in u.branch.parameters()])
                    for u in units] for key, units in unit_groups(net).items()}
    gate_sum = math.nan
    if net.config.get("gate") == "rdm":
        values = net.gate_values()
        gate_sum = float(sum(v.abs().mean() for k, v in values.items() if k.endswith(".alpha")))
    return groups, net.config.get("gate"), gate_sum


def pair_distance(small: dict, large: dict) -> float:
    """d(N): max over groups of |theta^(kN)_(kj) - theta^(N)_j| / |theta^(N)_j|, k the integer
    ratio of the group's sizes (2 on a doubling ladder)."""
    worst = math.nan
    for key, units in small.items():
        big = large.get(key)
        if big is None or len(big) <= len(units) or len(big) % len(units):
            continue
        k = len(big) // len(units)
        for j, theta in enumerate(units):
            d = float((big[k * j] - theta).norm() / theta.norm().clamp_min(1e-300))
            worst = d if math.isnan(worst) else max(worst, d)
    return worst


def smoothness(groups: dict) -> float:
    """s(L): max over groups and neighbours of |theta_(j+1) - theta_j| / |theta_j|."""
    values = [float((b - a).norm() / a.norm().clamp_min(1e-300))
              for units in groups.values() for a, b in zip(units, units[1:], strict=False)]
    return max(values) if values else math.nan


def is_hypothesis(cell: tuple) -> bool:
    """A cell the claim is about: rdm gates and smooth initialisation."""
    axes = dict(cell)
    return axes.get("gate", "rdm") == "rdm" and axes.get("init", "iid") == "smooth"


def is_control(cell: tuple) -> bool:
    """A control cell: i.i.d. initialisation."""
    return dict(cell).get("init", "iid") == "iid"


def partner(n: int, depths) -> int | None:
    """The depth N is compared with: 2N if the ladder has it, else the smallest multiple kN on
    it (a ladder of factor 4 compares N with 4N); None if there is none."""
    multiples = [m for m in sorted(depths) if m > n and m % n == 0]
    return 2 * n if 2 * n in multiples else (multiples[0] if multiples else None)


def ladder_distances(seeds: dict, weights: dict) -> tuple[list[list], dict[int, list[float]]]:
    """The (N, d(N)) pairs of each seed's ladder, and depth N -> d(N) over seeds."""
    ladders, distances = [], {}
    for ladder in seeds.values():
        pairs = []
        for n in sorted(ladder):
            m = partner(n, ladder)
            if m is not None:
                d = pair_distance(weights[ladder[n]["id"]][0], weights[ladder[m]["id"]][0])
                if math.isfinite(d):
                    pairs.append((n, d))
                    distances.setdefault(n, []).append(d)
        ladders.append(pairs)
    return ladders, distances


def measure_cells(config: StudyClaimConfig) -> dict[tuple, dict]:
    """Per cell: the distance order over seeds, the distances d(N) per seed, smoothness and gate
    sums per run."""
    if config.runs_folder is None:
        raise ValueError("C11 reads the trained weights: StudyClaimConfig needs runs_folder")
    finished = [r for r in config.records if r.get("train_status") == "done"]
    weights = {r["id"]: unit_weights(Path(config.runs_folder) / r["id"]) for r in finished}
    smooth = {rid: smoothness(w[0]) for rid, w in weights.items()}
    cells = {}
    for cell, seeds in by_cell(finished).items():
        ladders, distances = ladder_distances(seeds, weights)
        order_slope, order_se, per_seed = log_slope_over_seeds(ladders)
        cells[cell] = {"order": -order_slope, "order_se": order_se, "per_seed": per_seed,
                       "pairs": sum(len(p) for p in ladders), "distances": distances,
                       "smoothness": mean_by_depth(seeds, lambda r: smooth[r["id"]]),
                       "gate_sum": mean_by_depth(seeds, lambda r: weights[r["id"]][2]),
                       "gate_sums": [weights[r["id"]][2] for ladder in seeds.values()
                                     for r in ladder.values()]}
    return cells


def cell_metrics(cell: tuple, c: dict) -> dict[str, float]:
    """One cell's metrics: distance order, depth pairs, mean distance per N, smoothness at the
    deepest depth and, for rdm gates, the extreme gate sums."""
    label = cell_label(cell)
    key = f"distance_order[{label}]"
    metrics = {key: c["order"], f"{key}_se": c["order_se"], f"depth_pairs[{label}]": c["pairs"]}
    for n, ds in sorted(c["distances"].items()):
        metrics[f"distance[{label},N={n}]"] = float(np.mean(ds))
        metrics[f"distance[{label},N={n}]_se"] = (float(np.std(ds, ddof=1) / math.sqrt(len(ds)))
                                                  if len(ds) > 1 else math.nan)
    if c["smoothness"]:
        deepest = max(c["smoothness"])
        metrics[f"smoothness_at_depth_{deepest}[{label}]"] = c["smoothness"][deepest][0]
    sums = [s for s in c["gate_sums"] if math.isfinite(s)]
    if dict(cell).get("gate") == "rdm" and sums:
        metrics[f"gate_sum_min[{label}]"] = min(sums)
        metrics[f"gate_sum_max[{label}]"] = max(sums)
    return metrics


def measure(config: StudyClaimConfig) -> Measurement:
    """C11's metrics on a study's runs; ``curves``: the cells, and the labels of the hypothesis
    and control cells."""
    cells = measure_cells(config)
    metrics: dict[str, float] = {}
    for cell, c in cells.items():
        metrics.update(cell_metrics(cell, c))
    hypothesis = [cell_label(cell) for cell in cells if is_hypothesis(cell)]
    control = [cell_label(cell) for cell in cells if is_control(cell)]
    metrics["hypothesis_cells"], metrics["control_cells"] = len(hypothesis), len(control)
    return Measurement(metrics, config, curves={"cells": cells, "hypothesis": hypothesis,
                                                 "control": control})


def rules(measured: Measurement) -> list[Rule]:
    """At least one hypothesis and one control cell; per cell, in the cells' order: the distance
    falls (hypothesis), does not fall (control), the gate sums of order one (rdm runs)."""
    out = [Rule("hypothesis_cells", (1, None)), Rule("control_cells", (1, None))]
    for cell in measured.curves["cells"]:
        label = cell_label(cell)
        key = f"distance_order[{label}]"
        if is_hypothesis(cell):
            out.append(Rule(key, (0.0, None), margin=SE_BAND))
        if is_control(cell):
            out.append(Rule(key, (None, CONTROL_ORDER_MAX), margin=-SE_BAND))
        if f"gate_sum_min[{label}]" in measured.metrics:
            out.append(Rule(f"gate_sum_min[{label}]", (GATE_SUM_RANGE[0], None)))
            out.append(Rule(f"gate_sum_max[{label}]", (None, GATE_SUM_RANGE[1])))
    return out


def _order_text(c: dict) -> str:
    return f"{c['order']:.2f} +/- {c['order_se']:.2f}" if math.isfinite(c["order"]) else "n/a"


def _by_label(measured: Measurement) -> dict[str, dict]:
    return {cell_label(k): v for k, v in measured.curves["cells"].items()}


def headline(measured: Measurement) -> str:
    """The distance order of every hypothesis and control cell."""
    by_label = _by_label(measured)
    parts = [f"{lab}: order {_order_text(by_label[lab])}"
             for lab in measured.curves["hypothesis"] + measured.curves["control"]]
    return "; ".join(parts) or "no rdm-smooth or iid cell"


def summary(measured: Measurement, verdict) -> str:
    by_label = _by_label(measured)
    hypothesis, control = measured.curves["hypothesis"], measured.curves["control"]
    if not hypothesis or not control:
        missing = " and ".join(w for w, cs in (("an rdm cell with smooth initialisation",
                                                hypothesis), ("an iid control cell", control))
                               if not cs)
        return (f"C11 cannot be stated on this study: it lacks {missing}; it needs depths N, "
                f"2N (and 4N for an order) under both initialisations.")
    words = []
    for lab in hypothesis:
        words.append(f"with rdm gates and smooth initialisation ({lab}) the N-vs-2N weight "
                     f"distance falls at order {_order_text(by_label[lab])} (linear theory: "
                     f"{LINEAR_ORDER:g})")
    for lab in control:
        words.append(f"with i.i.d. initialisation ({lab}) at order {_order_text(by_label[lab])}")
    outcome = "the claim holds" if verdict.passed else \
        f"the claim fails on {', '.join(verdict.failed)}"
    return "; ".join(words) + f": {outcome}."


def figure(measured: Measurement):
    """Per cell: d(N) against N, smoothness and the rdm gate sum against depth."""
    cells = measured.curves["cells"]

    def draw(fig):
        ax1, ax2, ax3 = fig.subplots(1, 3)
        for cell, c in cells.items():
            label, style = cell_label(cell), cell_style(cell, cells)
            ns = sorted(c["distances"])
            if ns:
                means = [np.mean(c["distances"][n]) for n in ns]
                ses = [np.std(c["distances"][n], ddof=1) / math.sqrt(len(c["distances"][n]))
                       if len(c["distances"][n]) > 1 else 0.0 for n in ns]
                ax1.errorbar(ns, means, yerr=ses, capsize=3, label=label, **style)
            for ax, series in ((ax2, c["smoothness"]), (ax3, c["gate_sum"])):
                depths = [d for d in sorted(series) if math.isfinite(series[d][0])]
                if depths:
                    ax.errorbar(depths, [series[d][0] for d in depths],
                                yerr=[np.nan_to_num(series[d][1]) for d in depths],
                                capsize=3, label=label, **style)
        ns = [n for c in cells.values() for n in c["distances"]]
        depths = [d for c in cells.values() for d in c["smoothness"]]
        depth_axis(ax1, ns, "N")
        ax1.set(yscale="log", title="max_j |theta(kN)_kj - theta(N)_j| / |theta(N)_j|")
        depth_axis(ax2, depths)
        ax2.set(yscale="log", title="smoothness max_j |theta_j+1 - theta_j| / |theta_j|")
        depth_axis(ax3, depths)
        ax3.set(title="sum of rdm gates (1 at init)")
        ax3.axhline(1.0, color="grey", lw=0.8, ls=":")
        for ax in (ax1, ax2, ax3):
            ax.title.set_fontsize(9)
        legend_beside(fig, (ax1, ax2, ax3))
        fig.set_size_inches(14, 4.0)
    return draw
