"""One verdict mechanism: re-applying a report's ``expected`` to its ``metrics`` gives ``passed``.

Every check is run (quick) under the negative control, and its JSON (as a tool would read it,
after a round trip through ``json``) is judged again from ``expected`` alone: closed intervals,
``null`` for an open end, and a metric without a value failing.  The verdict, and the list of
failed metrics, must be reproduced exactly, check by check.  The passes (rdm gates at depth 256,
every check) are judged again the same way in tests/test_verify.py, on the README command's own
report, so that run is not paid twice.
"""

from __future__ import annotations

import json
import math

import pytest

from rdm_dynamics.checks import CheckConfig, registry, run_claim
from rdm_dynamics.checks.rules import EMPTY_BAND, Rule, judge, within

#: Failures (plain at 64, the negative control: every gate-dependent check fails, C7 passes).
#: The passes (rdm at 256) are rejudged in test_verify.py on the default run's report.  euler is
#: left out (its gates are rdm's initial gates, so its runs are rdm's, number for number),
#: inv-sqrt too (it fails where plain does), and rdm at 64 (its pre-asymptotic VE ladders fail
#: some rules of passing checks: test_self_test's clean runs need 256 for that reason).
RUNS = [("plain", 64)]


def rejudge(check_json: dict) -> tuple[bool, list[str]]:
    """The verdict a tool reading only ``metrics`` and ``expected`` reaches."""
    metrics, expected = check_json["metrics"], check_json["expected"]
    failed = [name for name, band in expected.items() if not within(metrics.get(name), band)]
    return not failed, failed


#: The run whose verdict is known for every check: every gate-dependent check fails with plain
#: residuals (the negative control).  A check that runs its own scalings
#: (``USES_SCHEDULE = False``: C7) ignores --schedule.
ALL_FAIL = ("plain", 64)


@pytest.mark.parametrize("schedule, depth", RUNS)
def test_expected_reproduces_passed_for_every_check(schedule, depth):
    config = CheckConfig(depth=depth, schedule=schedule, quick=True)
    verdicts = {}
    for cid, module in registry().items():
        result = json.loads(json.dumps(run_claim(module, config).to_json()))
        assert result["expected"], f"{cid} under {schedule} declares no rule"
        assert rejudge(result) == (result["passed"], result["failed"]), (cid, schedule, depth)
        verdicts[cid] = result["passed"]
    if (schedule, depth) == ALL_FAIL:
        checks = registry()
        assert not any(passed for cid, passed in verdicts.items()
                       if getattr(checks[cid], "USES_SCHEDULE", True)), verdicts


def test_margins_shrink_or_widen_the_interval_and_are_written_into_expected():
    metrics = {"ratio": 1.0, "ratio_se": 0.1, "bias": 0.3, "bias_se": 0.1, "order": 1.0}
    verdict = judge(metrics, [Rule("ratio", (0.5, 2.0), margin=3),
                              Rule("bias", (0.0, 0.0), margin=-4),
                              Rule("order", (0.85, None))])
    assert verdict.expected["ratio"] == pytest.approx([0.8, 1.7])
    assert verdict.expected["bias"] == pytest.approx([-0.4, 0.4])
    assert verdict.expected["order"] == [0.85, None]
    assert verdict.passed and verdict.failed == []
    tight = judge({**metrics, "ratio_se": 0.4}, [Rule("ratio", (0.5, 2.0), margin=3)])
    assert not tight.passed and tight.failed == ["ratio"]  # 1.0 - 3 * 0.4 < 0.5


@pytest.mark.parametrize("se", [math.nan, math.inf, None, -1.0])
def test_a_margin_without_a_finite_standard_error_fails_and_says_so(se):
    metrics = {"ratio": 1.0} if se is None else {"ratio": 1.0, "ratio_se": se}
    verdict = judge(metrics, [Rule("ratio", (0.5, 2.0), margin=3)])
    assert not verdict.passed and verdict.expected["ratio"] == list(EMPTY_BAND)
    assert not within(1.0, verdict.expected["ratio"])


@pytest.mark.parametrize("value", [math.nan, math.inf, None])
def test_a_metric_without_a_value_fails(value):
    verdict = judge({"order": value}, [Rule("order", (None, None))])
    assert not verdict.passed and verdict.failed == ["order"]


def test_a_check_needs_rules_and_one_rule_per_metric():
    with pytest.raises(ValueError, match="at least one"):
        judge({"x": 1.0}, [])
    with pytest.raises(ValueError, match="two rules"):
        judge({"x": 1.0}, [Rule("x", (0, 2)), Rule("x", (0, 1))])
