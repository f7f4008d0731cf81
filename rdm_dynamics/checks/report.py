"""Check results, the verdict table, the JSON report, summary words and the figures.

The JSON report is a contract (DESIGN.md section 4): top-level keys ``depth``, what the
configuration reports of itself (``schedule`` for the theory checks; ``gate`` and ``checkpoint`` for
a trained model; ``gating``, the former key of both, kept for one release), ``seed, dtype, device,
passed, status, seconds, versions, checks``; each check ``id, claim, passed, seconds, metrics,
expected, summary``. ``metrics`` maps names to numbers (a sample estimate ``x`` comes with its
standard error ``x_se``); ``expected`` maps a metric name to the closed interval ``[lo, hi]`` the
verdict applies, standard-error margins included (``null`` for an open end; lo > hi where no value
can pass), so re-applying ``expected`` to ``metrics`` reproduces ``passed``; ``failed`` lists the
metrics whose rule failed. ``status`` (top level and per check) is ``pass``, ``fail``, ``n/a`` or
``error``. A check that crashed is an error of the toolkit, not a failed claim: it has ``error``
(the exception in one line) and ``traceback``, no metrics and empty ``expected`` (no rule was
applied), and ``passed`` false. A check that does not apply to what it ran on (``n/a``) has
``"applicable": false`` and a ``reason``, no metrics and no rules (so it passes vacuously and does
not fail the run). The report lists the ``figures`` it wrote; the reports of checkpoint checks also
name the ``checkpoint``.

Where a check declares it, ``provenance`` sorts every metric but the standard errors into
``gated`` (a rule applies), ``derived`` in one line from gated ones (name -> how), ``settings``
(counts, bins) and ``reported`` (none of these).
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

__all__ = ["CheckResult", "build_report", "is_report", "check_report_targets", "render_figures",
           "is_toolkit_figure", "FIGURE_TAG",
           "write_report",
           "versions", "overall_status", "wrap_summary", "WIDTH", "Series", "order_figure",
           "format_table", "save_figure", "render_figure", "RenderedFigure", "figure_bytes",
           "order_axes", "depth_axes", "error_trend", "depth_trend_words", "out_of_range",
           "legend_outside", "MARKERS"]


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


def out_of_range(verdict: Verdict) -> str:
    """The end of a summary: "." when every rule held, else the metrics out of their bands."""
    return f"; out of range: {', '.join(verdict.failed)}." if verdict.failed else "."


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
    figure: FigureDrawer | RenderedFigure | None = field(default=None, repr=False)
    #: Short strings for the table: what was measured and what theory says.
    measured_text: str = ""
    theory_text: str = ""
    #: Why the check does not apply to what it was run on ("" when it applies).
    not_applicable: str = ""
    #: Which metrics are gated (a rule), derived in one line from gated ones (name -> how),
    #: settings or reported only; {} when the check does not say (``claim.provenance``).
    provenance: dict = field(default_factory=dict)

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
    #: Set when the check crashed (an error of the toolkit, not a failed claim): the exception
    #: in one line, and its traceback for the report.
    error: str | None = None
    traceback: str | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return self.verdict.passed and self.error is None

    @property
    def status(self) -> str:
        """``pass``, ``fail`` (the rules rejected the metrics), ``n/a`` (the check does not apply)
        or ``error`` (the check crashed)."""
        if self.error is not None:
            return "error"
        if not self.applicable:
            return "n/a"
        return "pass" if self.passed else "fail"

    @property
    def verdict_word(self) -> str:
        """The status as the table prints it: PASS, FAIL, N/A or ERROR."""
        return self.status.upper()

    @property
    def expected(self) -> dict[str, list]:
        return self.verdict.expected

    def to_json(self) -> dict:
        return {"id": self.id, "claim": self.claim, "passed": bool(self.passed),
                "seconds": round(float(self.seconds), 3),
                "metrics": {k: _json_number(v) for k, v in self.metrics.items()},
                "expected": {k: [_json_number(v) for v in iv] for k, iv in self.expected.items()},
                "failed": list(self.verdict.failed), "summary": self.summary,
                "status": self.status,
                **({} if self.applicable else {"applicable": False,
                                               "reason": self.not_applicable}),
                **({"error": self.error, "traceback": self.traceback} if self.error else {}),
                **({"provenance": self.provenance} if self.provenance else {})}


def _json_number(v):
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return v if math.isfinite(v) else None


def overall_status(results: Sequence[CheckResult]) -> str:
    """``error`` if a check crashed, else ``fail`` if one failed, else ``pass``."""
    statuses = {r.status for r in results}
    return "error" if "error" in statuses else "fail" if "fail" in statuses else "pass"


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


def is_report(path) -> bool:
    """Whether ``path`` holds a report this toolkit wrote (verify's or the study's), so that it
    may be replaced; anything else in its place is the user's and is left as it is."""
    from ..limits import load_json

    try:  # bounded (limits.py): a bomb in place of a report is not a report
        old = load_json(path, "report")
    except (OSError, ValueError):
        return False
    return isinstance(old, dict) and isinstance(old.get("checks"), list) and "versions" in old


def _listed_figures(out) -> set[str]:
    """The figures the toolkit's report in ``out`` (if any) names as its own."""
    from ..limits import load_json

    if not is_report(out / "report.json"):
        return set()
    previous = load_json(out / "report.json", "report")
    names = previous.get("figures") or [f"{c.get('id')}.png" for c in previous["checks"]
                                        if isinstance(c, dict)]
    return {n for n in names if isinstance(n, str)}


def check_report_targets(out, json_path, command: str, figures=()) -> None:
    """Refuse (UsageError, one line) report targets that would replace what the toolkit did not
    write: ``--out`` a file, or a folder holding a ``report.json`` that is not a report
    (:func:`is_report`) or a file named as one of the ``figures`` the run will draw that is
    neither a figure of the toolkit (:func:`is_toolkit_figure`) nor one its report there
    names; ``--json`` a folder, in a missing folder, or an existing file that is not a report.
    The one definition verify and study share; ``command`` names the caller."""
    from pathlib import Path

    from ..cli import UsageError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file, not a folder")
    if json_path is not None:
        json_path = Path(json_path)
        if json_path.is_dir():
            raise UsageError(f"--json {str(json_path)!r} is a folder, not a file")
        if not json_path.parent.is_dir():
            raise UsageError(f"--json {str(json_path)!r}: folder {str(json_path.parent)!r} "
                             "does not exist")
        if json_path.exists() and not is_report(json_path):
            raise UsageError(f"--json {str(json_path)!r} exists and is not a {command} report: "
                             "choose another path (it is left as it is)")
    if (out / "report.json").exists() and not is_report(out / "report.json"):
        raise UsageError(f"--out {str(out)!r} holds a report.json that {command} did not write: "
                         "choose another folder (it is left as it is)")
    listed = _listed_figures(out)
    for name in figures:
        if (out / name).exists() and name not in listed and not is_toolkit_figure(out / name):
            raise UsageError(f"--out {str(out)!r} holds a {name} that {command} did not draw: "
                             "choose another folder (it is left as it is)")


def render_figures(results: Sequence[CheckResult]) -> dict[str, bytes]:
    """{file name: PNG bytes} of every result's figure, drawn before any file is written."""
    return {f"{r.id}.png": figure_bytes(r.figure) for r in results if r.figure is not None}


def write_report(out, report: dict, figures: dict[str, bytes], json_path=None,
                 extra: dict[str, bytes] | None = None) -> None:
    """Write a report folder: the figures (``render_figures``) and ``extra`` files (name ->
    bytes), then ``report.json`` (and a copy at ``json_path``), each atomically, so a reader
    sees the old or the new one; then remove the figures an earlier report in ``out`` listed
    and this one did not draw (no figure is left beside a report it does not belong to).
    ``report["figures"]`` is set to the names written."""
    from pathlib import Path

    from ..files import atomic_write_bytes, atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old = _listed_figures(out)
    for name, data in {**figures, **(extra or {})}.items():
        atomic_write_bytes(out / name, data)
    report["figures"] = sorted(figures)
    atomic_write_json(out / "report.json", report)
    if json_path is not None:
        atomic_write_json(json_path, report)
    for name in old:
        if isinstance(name, str) and name not in figures and name == Path(name).name \
                and name.endswith(".png"):
            (out / name).unlink(missing_ok=True)


def build_report(config, results: Sequence[CheckResult], seconds: float) -> dict:
    """The JSON report of a verify run (DESIGN.md section 4): the run's settings (with what its
    config adds, ``config.report_fields``), the overall verdict, the wall time, the library
    versions, and every check's ``to_json``."""
    return {"depth": config.depth, **config.report_fields, "seed": config.seed,
            "dtype": str(config.dtype).removeprefix("torch."), "device": config.device,
            "passed": all(r.passed for r in results), "status": overall_status(results),
            "seconds": round(seconds, 3), "versions": versions(),
            "checks": [r.to_json() for r in results]}


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------

#: The printed table and summaries fit this many columns.
WIDTH = 100


def format_table(results: Sequence[CheckResult], width: int = WIDTH) -> str:
    """One row per check: id, claim, what was measured, what theory says, PASS/FAIL/ERROR;
    the measured and theory cells are wrapped so that every line fits ``width`` columns."""
    import textwrap

    head = ("check", "claim", "measured", "theory", "verdict")
    rows = [(r.id, r.claim, r.measured_text, r.theory_text, r.verdict_word) for r in results]
    fixed = [max(len(head[c]), *(len(row[c]) for row in rows)) for c in (0, 1, 4)]
    room = max(20, width - sum(fixed) - 2 * 4)  # what the measured and theory columns share
    natural = [max(len(head[c]), *(len(row[c]) for row in rows)) for c in (2, 3)]
    if sum(natural) <= room:
        wide = natural
    else:  # the theory column keeps its width up to a third of the room; measured takes the rest
        theory = min(natural[1], max(room // 3, 8))
        wide = [room - theory, theory]
    widths = [fixed[0], fixed[1], wide[0], wide[1], fixed[2]]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(head, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for row in rows:
        cells = [textwrap.wrap(cell, w, break_long_words=True) or [""]
                 for cell, w in zip(row, widths, strict=True)]
        for k in range(max(map(len, cells))):
            parts = [(c[k] if k < len(c) else "").ljust(w)
                     for c, w in zip(cells, widths, strict=True)]
            lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def wrap_summary(result: CheckResult, width: int = WIDTH) -> str:
    """``[PASS] id: summary`` wrapped to ``width`` columns, continuation lines indented."""
    import textwrap

    return textwrap.fill(f"[{result.verdict_word}] {result.id}: {result.summary}", width,
                         subsequent_indent="    ", break_long_words=False,
                         break_on_hyphens=False)


@dataclass(frozen=True)
class RenderedFigure:
    """A figure already drawn, as PNG bytes (what a worker process sends back in place of the
    drawer, a closure that cannot cross processes); ``save_figure`` writes it as it is."""

    png: bytes


def render_figure(drawer: FigureDrawer) -> RenderedFigure:
    """Draw a figure with ``drawer`` into PNG bytes (6.4 x 4.4 inches, 110 dpi)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    drawer(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={FIGURE_TAG[0]: FIGURE_TAG[1]})
    return RenderedFigure(buf.getvalue())


#: The PNG text entry every figure of the toolkit carries: a figure file with it is the
#: toolkit's to replace; any other file of that name is the user's (``check_report_targets``).
FIGURE_TAG = ("Source", "rdm_dynamics report figure")


def is_toolkit_figure(path) -> bool:
    """Whether ``path`` is a PNG this toolkit drew (its text entry :data:`FIGURE_TAG`, which
    matplotlib writes before the image data: the first 4 KiB are read, nothing more)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    key, value = (t.encode() for t in FIGURE_TAG)
    return head.startswith(b"\x89PNG") and key + b"\x00" + value in head


def save_figure(drawer: FigureDrawer | RenderedFigure, path: str | os.PathLike) -> None:
    """Draw a figure with ``drawer`` (or take one already rendered) and save it as PNG
    atomically."""
    figure = drawer if isinstance(drawer, RenderedFigure) else render_figure(drawer)
    atomic_write_bytes(path, figure.png)


def figure_bytes(figure: FigureDrawer | RenderedFigure) -> bytes:
    """The PNG bytes of a figure, drawing it first if it is a drawer."""
    return (figure if isinstance(figure, RenderedFigure) else render_figure(figure)).png


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
        fig.set_size_inches(8.0, 4.4)  # room for the legend beside the axes
        order_axes(fig.add_subplot(), title, series, reference_order=reference_order,
                   ylabel=ylabel, xlabel=xlabel)

    return draw


#: Marker shapes cycled over the series of a figure, so that series on top of each other stay
#: distinguishable (open markers of different shapes and sizes).
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")


def legend_outside(ax, fontsize: float = 7) -> None:
    """The legend to the right of the axes, where it covers no point."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=fontsize, loc="upper left",
                  bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def order_axes(ax, title: str, series: Sequence[Series], *, reference_order: float = 1.0,
               ylabel: str = "error", xlabel: str = "depth L", legend: bool = True) -> None:
    """Draw :func:`order_figure`'s content on one matplotlib axes (for multi-panel figures):
    each series with its own open marker (shape and size differ, so coinciding series stay
    visible) and its fitted line; a reference slope drawn a factor 2 below the lowest series,
    where it hides none; the legend outside the axes (``legend``)."""
    lowest = math.inf
    for k, s in enumerate(series):
        d = np.asarray(s.depths, dtype=float)
        e = np.asarray(s.errors, dtype=float)
        label = s.label
        if s.fit is not None and math.isfinite(s.fit.order):
            label += f" (order {s.fit.order:.3f})"
        (line,) = ax.loglog(d, e, MARKERS[k % len(MARKERS)], label=label, mfc="none",
                            ms=9 - 4 * k / max(len(series) - 1, 1), mew=1.4)
        if s.fit is not None and math.isfinite(s.fit.order):
            ax.loglog(d, s.fit.predict(d), "-", color=line.get_color(), alpha=0.6, lw=1)
        if len(e) and math.isfinite(e[-1]) and e[-1] > 0:
            lowest = min(lowest, float(e[-1]))
    if series and math.isfinite(lowest):
        d = np.asarray(series[0].depths, dtype=float)
        ref = 0.5 * lowest * (d / d[-1]) ** (-reference_order)
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
    if legend:
        legend_outside(ax)


def depth_axes(ax, title: str, depths: Sequence[float], curves: dict, *, ylabel: str,
               bounds: dict | None = None, ylim_top: float | None = None) -> None:
    """Quantities against depth on a log-log2 axes: ``curves`` maps a label to values per depth
    (markers and lines), ``bounds`` a label to values drawn dashed in the same colour.  Values
    that overflowed (inf, or beyond 1e150) are not drawn, and a line with nothing to draw gets
    no legend entry.  With ``ylim_top``, a line that leaves the axes says so in its label (its
    largest value and where), and the y range ends a factor 3 below the smallest value drawn.
    The legend is outside the axes."""
    def finite(values):  # overflowed values (inf, or beyond 1e150) are left out of the plot
        values = np.asarray(values, dtype=float)
        return np.where(np.isfinite(values) & (np.abs(values) < 1e150), values, np.nan)

    drawn = []

    def plot(values, label, *style, **kw):
        v = finite(values)
        if not np.isfinite(v).any():
            return None
        above = np.zeros(len(v), dtype=bool)
        if ylim_top is not None and np.nanmax(v) > ylim_top:
            i = int(np.nanargmax(v))
            label += f" (^ above the axes: up to {v[i]:.1e} at L = {depths[i]:g})"
            above = np.isfinite(v) & (v > ylim_top)
        inside = np.where(above, np.nan, v)
        drawn.extend(inside[np.isfinite(inside) & (inside > 0)])
        (line,) = ax.plot(depths, inside, *style, label=label, **kw)
        if above.any():  # off-scale values as arrows at the top edge, in the line's colour
            bound = "--" in style  # a bound's arrows are open and a little lower
            ax.plot(np.asarray(depths)[above], np.full(above.sum(), ylim_top / (2.5 if bound
                                                                                else 1.6)),
                    "^", color=line.get_color(), ms=6, mfc="none" if bound else None)
        return line

    for k, (label, values) in enumerate(curves.items()):
        line = plot(values, label, "-", marker=MARKERS[k % len(MARKERS)], mfc="none", mew=1.4)
        if bounds and label in bounds:
            plot(bounds[label], f"{label}: bound", "--",
                 color=None if line is None else line.get_color(), lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if drawn:
        top = ylim_top if ylim_top is not None else 3 * max(drawn)
        ax.set_ylim(bottom=min(min(drawn) / 3, top / 10), top=top)
    ax.set_xlabel("depth L")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    legend_outside(ax, fontsize=6)
