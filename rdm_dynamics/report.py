"""Check results, order fitting, the verdict table, the JSON report and the figures.

The JSON report is a contract (DESIGN.md section 4): top-level keys ``depth, gating, seed, dtype,
device, passed, seconds, versions, checks``; each check ``id, claim, passed, seconds, metrics,
expected, summary``.  ``metrics`` maps names to numbers (a sample estimate ``x`` comes with its
standard error ``x_se``); ``expected`` maps a metric name to the closed interval ``[lo, hi]`` the
pass rule asks for (``null`` for an open end).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["CheckResult", "OrderFit", "Series", "fit_order", "within", "order_figure",
           "format_table", "atomic_write_bytes", "atomic_write_json", "save_figure", "RateFit",
           "fit_growth_rate", "within_se", "mean_se", "order_axes", "depth_axes",
           "per_sample_growth_rates", "depth_trend_metrics", "error_trend"]


# ------------------------------------------------------------------------------------------------
# Order fitting
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OrderFit:
    """Least-squares fit log(error) = intercept - order * log(depth)."""

    order: float
    intercept: float
    stderr: float  # standard error of the slope from the fit's residuals (0 for two points)

    def predict(self, depths) -> np.ndarray:
        return np.exp(self.intercept) * np.asarray(depths, dtype=float) ** (-self.order)


def fit_order(depths: Sequence[float], errors: Sequence[float]) -> OrderFit:
    """Fit the convergence order: minus the slope of log(error) against log(depth).

    Returns NaNs when fewer than two points have a finite, positive error: an order that cannot
    be measured never passes.
    """
    x = np.log(np.asarray(depths, dtype=float))
    y = np.asarray(errors, dtype=float)
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 2 or not ok.all():
        return OrderFit(math.nan, math.nan, math.nan)
    y = np.log(y)
    A = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    n = len(x)
    if n > 2:
        resid = y - A @ coef
        s2 = float(resid @ resid) / (n - 2)
        stderr = math.sqrt(s2 / float(((x - x.mean()) ** 2).sum()))
    else:
        stderr = 0.0
    return OrderFit(order=-float(coef[1]), intercept=float(coef[0]), stderr=stderr)


def within(value: float, interval: Sequence[float | None]) -> bool:
    """value lies in the closed interval [lo, hi] (None = unbounded); NaN is never within."""
    lo, hi = interval
    if value is None or not math.isfinite(value):
        return False
    return (lo is None or value >= lo) and (hi is None or value <= hi)


@dataclass(frozen=True)
class RateFit:
    """Least-squares fit log(value) = intercept + rate * depth: geometric growth per layer."""

    rate: float
    intercept: float
    stderr: float

    def predict(self, depths) -> np.ndarray:
        return np.exp(self.intercept + self.rate * np.asarray(depths, dtype=float))


def fit_growth_rate(depths: Sequence[float], values: Sequence[float]) -> RateFit:
    """Fit the growth rate per layer: the slope of log(value) against depth.

    Uses the points with a finite, positive value (a deep run that overflowed is left out);
    NaNs when fewer than two remain.
    """
    x = np.asarray(depths, dtype=float)
    y = np.asarray(values, dtype=float)
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 2:
        return RateFit(math.nan, math.nan, math.nan)
    x, y = x[ok], np.log(y[ok])
    A = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    n = len(x)
    stderr = 0.0
    if n > 2:
        resid = y - A @ coef
        stderr = math.sqrt(float(resid @ resid) / (n - 2) / float(((x - x.mean()) ** 2).sum()))
    return RateFit(rate=float(coef[1]), intercept=float(coef[0]), stderr=stderr)


def mean_se(samples) -> tuple[float, float]:
    """Sample mean and its standard error (std / sqrt(n)); NaNs if any sample is not finite."""
    x = np.asarray(samples, dtype=float).ravel()
    if x.size == 0 or not np.isfinite(x).all():
        return math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se


def per_sample_growth_rates(depths: Sequence[float], values) -> np.ndarray:
    """The fitted growth rate per layer (:func:`fit_growth_rate`) of each column of ``values``
    (rows: depths, columns: samples)."""
    values = np.asarray(values, dtype=float)
    return np.array([fit_growth_rate(depths, values[:, s]).rate for s in range(values.shape[1])])


def depth_trend_metrics(depths: Sequence[float], values, *, value: str, ratio: str,
                        rate: str) -> dict[str, float]:
    """Summaries of a per-sample quantity measured at increasing depths (rows: depths, columns:
    samples), each a sample mean with its standard error ``<name>_se``: ``value`` its mean at the
    last depth, ``ratio`` the mean per-sample ratio of the last depth to the first, ``rate`` the
    mean per-sample growth rate per layer."""
    values = np.asarray(values, dtype=float)
    out = {}
    for name, samples in ((value, values[-1]), (ratio, values[-1] / values[0]),
                          (rate, per_sample_growth_rates(depths, values))):
        out[name], out[f"{name}_se"] = mean_se(samples)
    return out


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


def within_se(value: float, se: float, interval: Sequence[float | None], k: float = 3.0) -> bool:
    """The whole band value +/- k se lies in the closed interval [lo, hi] (None = unbounded):
    a sample estimate passes only if the interval holds with its sampling error accounted for."""
    if value is None or se is None or not (math.isfinite(value) and math.isfinite(se)):
        return False
    return within(value - k * se, interval) and within(value + k * se, interval)


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------

FigureDrawer = Callable[["matplotlib.figure.Figure"], None]  # noqa: F821


@dataclass
class CheckResult:
    """What one check measured, what theory expects, and the verdict."""

    id: str
    claim: str
    passed: bool
    metrics: dict[str, float]
    expected: dict[str, list]
    summary: str
    seconds: float = 0.0
    figure: FigureDrawer | None = field(default=None, repr=False)
    #: Short strings for the table: what was measured and what theory says.
    measured_text: str = ""
    theory_text: str = ""

    def to_json(self) -> dict:
        return {"id": self.id, "claim": self.claim, "passed": bool(self.passed),
                "seconds": round(float(self.seconds), 3),
                "metrics": {k: _json_number(v) for k, v in self.metrics.items()},
                "expected": {k: [_json_number(v) for v in iv] for k, iv in self.expected.items()},
                "summary": self.summary}


def _json_number(v):
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return v if math.isfinite(v) else None


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------

def format_table(results: Sequence[CheckResult]) -> str:
    """One row per check: id, claim, what was measured, what theory says, PASS/FAIL."""
    rows = [("check", "claim", "measured", "theory", "verdict")]
    for r in results:
        rows.append((r.id, r.claim, r.measured_text, r.theory_text, "PASS" if r.passed else "FAIL"))
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and os.replace, so a
    reader never sees a half-written file and an interrupted run leaves the old file intact."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


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
