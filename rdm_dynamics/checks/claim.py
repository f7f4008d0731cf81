"""The shape of a claim module, and the one function that runs it.

A claim module (one per claim: ``depth_limit``, ``pf_ode``, ...) declares

* ``CLAIM`` ("C1", ...), ``ID`` (the name ``--only`` takes), ``TITLE``, ``THEORY`` (what theory
  says, for the table's theory column; or ``theory(measurement)`` where it depends on the run,
  such as a tolerance of the run's dtype) and optionally ``COST`` (a scheduling hint for the
  workers); its kind is where ``checks.CLAIM_MODULES`` lists it;
* ``measure(config, **controls) -> Measurement``: the metrics (numbers only, each sample estimate
  ``x`` with its standard error ``x_se``) and the curves its figure draws.  No judging: a measure
  function never looks at a pass band.  Keyword arguments plant the check's negative controls;
* ``RULES`` (a list of :class:`~rdm_dynamics.checks.rules.Rule`, declared once) or
  ``rules(measurement) -> list[Rule]`` (built from the metrics' names, when which metrics exist
  depends on the run: the SDEs measured, a chain of units or not);
* ``summary(measurement, verdict) -> str``: one sentence a person can read;
* ``headline(measurement) -> str``: the table's "measured" cell;
* optionally ``DERIVED`` (metric patterns -> how each is computed in one line from gated
  metrics) and ``SETTINGS`` (patterns of the metrics that describe the measurement: counts,
  bins), from which the report's ``provenance`` says of every metric whether it is gated,
  derived, a setting or reported only;
* ``figure(measurement)``: a drawer ``fig -> None`` (``report.render_figure`` draws it), or None.

:func:`run_claim` composes them: measure, judge the rules (``rules.judge``, the one place a verdict
is made), word the summary, attach the figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from .report import CheckResult
from .rules import Rule, Verdict, judge

__all__ = ["Measurement", "run_claim", "claim_rules", "claim_theory", "provenance"]


@dataclass
class Measurement:
    """What a claim module's ``measure`` returns.

    ``metrics``: name -> number, the report's ``metrics`` (a sample estimate ``x`` with its
    standard error ``x_se``); ``config``: what it was measured with (a summary names its depths);
    ``curves``: what the figure and the summary draw on beyond the metrics (per-rung errors,
    profiles), never written to the report; ``not_applicable``: why the claim does not apply to
    what it was run on ("" when it applies; then ``metrics`` is empty).
    """

    metrics: dict[str, float]
    config: Any = None
    curves: dict[str, Any] = field(default_factory=dict)
    not_applicable: str = ""


def claim_rules(module: ModuleType, measurement: Measurement) -> list[Rule]:
    """The module's pass rules for this measurement: ``rules(measurement)`` where the module
    builds them from the metrics' names, else its ``RULES``."""
    build = getattr(module, "rules", None)
    return list(build(measurement)) if callable(build) else list(module.RULES)


def claim_theory(module: ModuleType, measured: Measurement) -> str:
    """The table's theory cell: ``theory(measurement)`` where the module words it from the run,
    else its ``THEORY``."""
    word = getattr(module, "theory", None)
    return word(measured) if callable(word) else module.THEORY


def run_claim(module: ModuleType, config, **controls) -> CheckResult:
    """Measure one claim, judge it and word it: the :class:`CheckResult` of ``module`` run with
    ``config`` (``controls`` go to its ``measure``: the negative controls)."""
    measured = module.measure(config, **controls)
    if measured.not_applicable:
        return CheckResult.inapplicable(module.ID, module.CLAIM, measured.not_applicable)
    verdict: Verdict = judge(measured.metrics, claim_rules(module, measured))
    return CheckResult(id=module.ID, claim=module.CLAIM, metrics=measured.metrics,
                       verdict=verdict, summary=module.summary(measured, verdict),
                       figure=module.figure(measured), measured_text=module.headline(measured),
                       theory_text=claim_theory(module, measured),
                       provenance=provenance(module, measured.metrics, verdict))


def provenance(module: ModuleType, metrics: dict, verdict: Verdict) -> dict:
    """For a module that declares ``DERIVED`` (fnmatch patterns, comma separated, -> how each
    is computed in one line from gated figures) and optionally ``SETTINGS`` (patterns of the
    metrics that say how it measured: counts, bins, positions): every metric of ``metrics``
    but the standard errors (which follow their figure) as ``gated`` (it has a rule),
    ``derived`` (name -> how), ``settings``, or ``reported`` (none of these); {} for a module
    that declares no ``DERIVED``."""
    from fnmatch import fnmatchcase

    if not hasattr(module, "DERIVED"):
        return {}

    def matches(name, key):
        return any(fnmatchcase(name, p.strip()) for p in key.split(","))

    out = {"gated": [], "derived": {}, "settings": [], "reported": []}
    settings = ",".join(getattr(module, "SETTINGS", ())) or "\0"
    for name in metrics:
        if name.endswith("_se") and name[:-3] in metrics:
            continue
        how = next((h for key, h in module.DERIVED.items() if matches(name, key)), None)
        if name in verdict.expected:
            out["gated"].append(name)
        elif how is not None:
            out["derived"][name] = how
        elif matches(name, settings):
            out["settings"].append(name)
        else:
            out["reported"].append(name)
    return out
