"""Check results, the verdict table, the JSON report, summary words and the figures.

The JSON report is a contract (DESIGN.md section 4): top-level keys ``depth, gating, seed, dtype,
device, passed, seconds, versions, checks``; each check ``id, claim, passed, seconds, metrics,
expected, summary``.  ``metrics`` maps names to numbers (a sample estimate ``x`` comes with its
standard error ``x_se``); ``expected`` maps a metric name to the closed interval ``[lo, hi]`` the
verdict applies, standard-error margins included (``null`` for an open end; lo > hi where no
value can pass), so re-applying ``expected`` to ``metrics`` reproduces ``passed``; ``failed``
lists the metrics whose rule failed.  A check that does not apply to what it ran on has
``"applicable": false`` and a ``reason``, no metrics and no rules (so it passes vacuously and does
not fail the run); the reports of checkpoint checks also name the ``checkpoint``.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..files import atomic_write_bytes
from ..stats import OrderFit
from .rules import Verdict

__all__ = ["CheckResult", "build_report", "versions", "Series", "order_figure", "format_table", "save_figure",
           "order_axes", "depth_axes", "error_trend", "depth_trend_words"]


def depth_trend_words(value: float, ratio: float, depths: Sequence[float]) -> str:
    """A quantity at the deepest depth and its ratio to the shallowest, or its overflow, in words
    (completes "... the amplification " or "... |p_0|/|p_L| ")."""
    if not math.isfinite(value):
        return f"overflows float64 before L = {depths[-1]:g}"
    return (f"is {value:.3g} at L = {depths[-1]:g}, {ratio:.3g} x its value at "
            f"L = {depths[0]:g}")


def error_trend(order: float) -> str:
    """How an error with this fitted convergence order behaves as depth grows, in words."""
    if order > 0.5:
        return "falls"
    return "does not vanish" if order > -0.1 else "grows with depth"


def extremes(values) -> tuple[float, float]:
    """(min, max) of fitted orders; NaN for both when any is NaN (an order that cannot be
    measured, e.g. of a diverged stack), so a summary never hides it."""
    values = list(values)
    if not all(math.isfinite(v) for v in values):
        return math.nan, math.nan
    return min(values), max(values)


def trend(orders) -> str:
    """How the worst of these errors behaves as depth grows, in words."""
    worst = extremes(orders)[0]
    return "overflows" if math.isnan(worst) else error_trend(worst)


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------

FigureDrawer = Callable[["matplotlib.figure.Figure"], None]  # noqa: F821


@dataclass
class CheckResult:
    """What one check measured (``metrics``), the verdict of its pass rules on them
    (``verdict``, from :func:`~rdm_dynamics.checks.rules.judge`), and how to show it."""

    id: str
    claim: str
    metrics: dict[str, float]
    verdict: Verdict
    summary: str
    seconds: float = 0.0
    figure: FigureDrawer | None = field(default=None, repr=False)
    #: Short strings for the table: what was measured and what theory says.
    measured_text: str = ""
    theory_text: str = ""
    #: Why the check does not apply to what it was run on ("" when it applies).
    not_applicable: str = ""

    @classmethod
    def inapplicable(cls, id: str, claim: str, reason: str) -> CheckResult:
        """A check that does not apply (e.g. C10 on data without a known law): no metrics, no
        rules, so it passes vacuously (re-applying its empty ``expected`` gives ``passed``) and
        does not fail the run; the table and JSON say N/A and why."""
        return cls(id=id, claim=claim, metrics={}, verdict=Verdict(passed=True),
                   summary=f"not applicable: {reason}", measured_text="not applicable",
                   theory_text="-", not_applicable=reason)

    @property
    def applicable(self) -> bool:
        return not self.not_applicable

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    @property
    def verdict_word(self) -> str:
        return "N/A" if not self.applicable else "PASS" if self.passed else "FAIL"

    @property
    def expected(self) -> dict[str, list]:
        return self.verdict.expected

    def to_json(self) -> dict:
        return {"id": self.id, "claim": self.claim, "passed": bool(self.passed),
                "seconds": round(float(self.seconds), 3),
                "metrics": {k: _json_number(v) for k, v in self.metrics.items()},
                "expected": {k: [_json_number(v) for v in iv] for k, iv in self.expected.items()},
                "failed": list(self.verdict.failed), "summary": self.summary,
                **({} if self.applicable else {"applicable": False,
                                               "reason": self.not_applicable})}


def _json_number(v):
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return v if math.isfinite(v) else None


def versions() -> dict[str, str]:
    """The versions of the toolkit and of the libraries its results depend on."""
    import numpy
    import torch
    import torchdiffeq
    import torchsde

    from .. import __version__

    return {"rdm_dynamics": __version__, "torch": torch.__version__,
            "torchdiffeq": torchdiffeq.__version__, "torchsde": torchsde.__version__,
            "numpy": numpy.__version__, "python": sys.version.split()[0]}


def build_report(config, results: Sequence[CheckResult], seconds: float) -> dict:
    """The JSON report of a verify run (DESIGN.md section 4): the run's settings, the overall
    verdict, the wall time, the library versions, and every check's ``to_json``."""
    return {"depth": config.depth, "gating": config.gating, "seed": config.seed,
            "dtype": str(config.dtype).removeprefix("torch."), "device": config.device,
            "passed": all(r.passed for r in results), "seconds": round(seconds, 3),
            "versions": versions(), **getattr(config, "report_fields", {}),
            "checks": [r.to_json() for r in results]}


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------

def format_table(results: Sequence[CheckResult]) -> str:
    """One row per check: id, claim, what was measured, what theory says, PASS/FAIL."""
    rows = [("check", "claim", "measured", "theory", "verdict")]
    for r in results:
        rows.append((r.id, r.claim, r.measured_text, r.theory_text, r.verdict_word))
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def save_figure(drawer: FigureDrawer, path: str | os.PathLike) -> None:
    """Draw a figure with ``drawer`` and save it as PNG atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    drawer(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


@dataclass
class Series:
    """One line of an order figure: errors against depth, and optionally its fitted order."""

    label: str
    depths: Sequence[float]
    errors: Sequence[float]
    fit: OrderFit | None = None


def order_figure(title: str, series: Sequence[Series], *, reference_order: float = 1.0,
                 ylabel: str = "error", xlabel: str = "depth L") -> FigureDrawer:
    """A log-log figure of error against depth, each series with its fitted slope, and a
    reference slope ``-reference_order`` through the first series' last point."""

    def draw(fig):
        order_axes(fig.add_subplot(), title, series, reference_order=reference_order,
                   ylabel=ylabel, xlabel=xlabel)

    return draw


def order_axes(ax, title: str, series: Sequence[Series], *, reference_order: float = 1.0,
               ylabel: str = "error", xlabel: str = "depth L") -> None:
    """Draw :func:`order_figure`'s content on one matplotlib axes (for multi-panel figures)."""
    for s in series:
        d = np.asarray(s.depths, dtype=float)
        e = np.asarray(s.errors, dtype=float)
        label = s.label
        if s.fit is not None and math.isfinite(s.fit.order):
            label += f" (order {s.fit.order:.3f})"
        (line,) = ax.loglog(d, e, "o", label=label)
        if s.fit is not None and math.isfinite(s.fit.order):
            ax.loglog(d, s.fit.predict(d), "-", color=line.get_color(), alpha=0.7)
    if series:
        d = np.asarray(series[0].depths, dtype=float)
        e_end = float(series[0].errors[-1])
        if math.isfinite(e_end) and e_end > 0:
            ref = e_end * (d / d[-1]) ** (-reference_order)
            ax.loglog(d, ref, "k--", lw=1, label=f"reference slope -{reference_order:g}")
    if series:
        from matplotlib.ticker import NullFormatter

        ticks = sorted({float(x) for s in series for x in s.depths})
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def depth_axes(ax, title: str, depths: Sequence[float], curves: dict, *, ylabel: str,
               bounds: dict | None = None, ylim_top: float | None = None) -> None:
    """Quantities against depth on a log-log2 axes: ``curves`` maps a label to values per depth
    (markers and lines), ``bounds`` a label to values drawn dashed in the same colour.  Values
    that overflowed (inf, or beyond 1e150) are not drawn."""
    def finite(values):  # overflowed values (inf, or beyond 1e150) are left out of the plot
        values = np.asarray(values, dtype=float)
        return np.where(np.isfinite(values) & (np.abs(values) < 1e150), values, np.nan)

    for label, values in curves.items():
        (line,) = ax.plot(depths, finite(values), "o-", label=label)
        if bounds and label in bounds:
            ax.plot(depths, finite(bounds[label]), "--", color=line.get_color(), lw=1,
                    label=f"{label}: bound")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if ylim_top is not None:
        ax.set_ylim(top=ylim_top)
    ax.set_xlabel("depth L")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
