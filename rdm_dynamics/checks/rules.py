"""Pass rules and the one function that applies them.

A check declares its pass rules once, as :class:`Rule` objects: a metric, the closed interval
[lo, hi] theory asks for (None for an open end), and a margin in standard errors.  :func:`judge`
applies them to the check's metrics and returns a :class:`Verdict`: whether every rule holds,
the ``expected`` bands of the report (the intervals with their margins applied, so that a tool
which re-applies ``expected`` to ``metrics`` gets ``passed``), and the metrics that failed.

Margins.  A sample estimate x with standard error se (the metric ``x_se``) and margin k:

* k > 0 (strict): the whole band x +/- k se must lie in [lo, hi], i.e. x in [lo + k se, hi - k se].
  A claim such as "the ratio lies in [1/2, 2]" passes only when it holds beyond sampling error.
* k < 0 (consistent): x must lie within |k| se of [lo, hi], i.e. x in [lo - |k| se, hi + |k| se].
  A claim such as "the bias is 0" passes unless the data reject it at |k| standard errors.

Where a margin needs a standard error that is not finite, no value can pass: the band is
:data:`EMPTY_BAND` (lo > hi), written as such into ``expected``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["within", "Rule", "Verdict", "judge", "EMPTY_BAND", "order_metrics", "order_rules",
           "ORDER_SE_MARGIN", "FIRST_ORDER", "AT_LEAST_FIRST_ORDER", "BOUNDED_RATIO"]

#: The band of a rule whose margin cannot be applied: lo > hi, so nothing lies within it.
EMPTY_BAND = (1.0, 0.0)

#: "Converges at order 1": a fitted order in 1 +/- 0.15 (DESIGN.md section 3, C1..C6).
FIRST_ORDER = (0.85, 1.15)
#: "At least first order": where the claim is O(h) and a higher order is no failure (the weak
#: error of VE, a law error approached from above, a local order on the deepest rungs).
AT_LEAST_FIRST_ORDER = (FIRST_ORDER[0], None)
#: "Stays bounded in depth": the ratio of a quantity at --depth to its value at the shallowest
#: depth lies in [1/2, 2].
BOUNDED_RATIO = (0.5, 2.0)


def within(value: float | None, interval: Sequence[float | None]) -> bool:
    """value lies in the closed interval [lo, hi] (None = unbounded); NaN or None never does."""
    lo, hi = interval
    if value is None or not math.isfinite(value):
        return False
    return (lo is None or value >= lo) and (hi is None or value <= hi)


@dataclass(frozen=True)
class Rule:
    """``metric`` must lie in [lo, hi] (None = unbounded), with ``margin`` standard errors
    (taken from the metric ``se``, by default ``metric + "_se"``; see the module docstring)."""

    metric: str
    interval: tuple[float | None, float | None]
    margin: float = 0.0
    se: str | None = None

    def band(self, metrics: Mapping[str, float]) -> tuple[float | None, float | None]:
        """The interval with the margin applied: what the metric's value is held against."""
        lo, hi = self.interval
        if self.margin == 0:
            return lo, hi
        se = metrics.get(self.se or f"{self.metric}_se")
        if se is None or not math.isfinite(se) or se < 0:
            return EMPTY_BAND
        shift = self.margin * se
        return (None if lo is None else lo + shift, None if hi is None else hi - shift)


@dataclass(frozen=True)
class Verdict:
    """The outcome of a check's rules: all held (``passed``), the bands applied (``expected``,
    metric -> [lo, hi]) and the metrics whose rule failed, in rule order."""

    passed: bool
    expected: dict[str, list] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


def judge(metrics: Mapping[str, float], rules: Iterable[Rule]) -> Verdict:
    """Apply ``rules`` to ``metrics``.  A metric without a value fails its rule; each metric may
    carry one rule."""
    expected: dict[str, list] = {}
    failed: list[str] = []
    rules = list(rules)
    if not rules:
        raise ValueError("a check needs at least one pass rule")
    for rule in rules:
        if rule.metric in expected:
            raise ValueError(f"two rules for the metric {rule.metric!r}")
        band = rule.band(metrics)
        expected[rule.metric] = list(band)
        if not within(metrics.get(rule.metric), band):
            failed.append(rule.metric)
    return Verdict(passed=not failed, expected=expected, failed=failed)


#: Standard errors by which the end-to-end and the deepest local order may miss the order band.
ORDER_SE_MARGIN = 3.0


def order_metrics(name: str, ladder, errors, *, error_ses=None, deep: str | None = None,
                  span: str | None = None) -> dict[str, float]:
    """The metrics of one convergence-order statement, e(L) ~ C L^(-p) (gated by
    :func:`order_rules`).

    A fitted slope alone can be fooled (an error that falls on the coarse rungs and then stalls
    or grows still fits a slope near 1), so three orders are measured:

    * ``name``: the least-squares order on the whole ladder (``stats.fit_order``), with
      ``name_se`` its standard error from the fit's residuals;
    * ``span`` (default ``name_span``): the end-to-end order log(e(L_0) / e(L_n)) / log(L_n / L_0),
      i.e. the deepest error is below the coarsest by the factor (L_n / L_0)^p the order implies;
    * ``deep`` (default ``name_deep``): the local order between the two deepest rungs, where the
      asymptotic regime is.

    The standard error ``_se`` of the last two is the larger of the fit's and the sampling error
    of the ratio (delta method from the errors' standard errors ``error_ses``, treated as
    independent).
    """
    from ..stats import fit_order, two_point_order

    ladder, errors = list(ladder), [float(e) for e in errors]
    fitted = fit_order(ladder, errors)
    metrics = {name: fitted.order, f"{name}_se": fitted.stderr}
    for key, (i, j) in ((span or f"{name}_span", (0, -1)), (deep or f"{name}_deep", (-2, -1))):
        sampling = 0.0
        if error_ses is not None:
            rel = [float(error_ses[k]) / errors[k] if errors[k] > 0 else math.inf for k in (i, j)]
            sampling = math.hypot(*rel) / math.log(ladder[j] / ladder[i])
        fit_se = fitted.stderr if math.isfinite(fitted.stderr) else math.inf
        metrics[key] = two_point_order([ladder[i], ladder[j]], [errors[i], errors[j]])
        metrics[f"{key}_se"] = max(fit_se, sampling)
    return metrics


def order_rules(name: str, band=FIRST_ORDER, *, deep: str | None = None,
                span: str | None = None, fit: bool = True,
                margin: float = ORDER_SE_MARGIN) -> list[Rule]:
    """The rules of one convergence-order statement (:func:`order_metrics`), p in ``band``: the
    fitted order in ``band`` (no margin; with ``fit=False`` it is reported but not gated, for a
    caller gating it by its own rule), the end-to-end and the deepest local order within
    ``margin`` standard errors of ``band``."""
    return ([Rule(name, tuple(band))] if fit else []) + [
        Rule(key, tuple(band), margin=-margin)
        for key in (span or f"{name}_span", deep or f"{name}_deep")]

