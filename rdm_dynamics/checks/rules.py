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

__all__ = ["within", "Rule", "Verdict", "judge", "EMPTY_BAND"]

#: The band of a rule whose margin cannot be applied: lo > hi, so nothing lies within it.
EMPTY_BAND = (1.0, 0.0)


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
