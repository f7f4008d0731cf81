"""C5 `error-propagation`: the Gronwall bound holds for every stack, and the check can fail."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rdm_dynamics.analysis.fields import (
    SmoothCoefficient,
    SmoothTanhField,
    TanhLayer,
    frozen_layers,
)
from rdm_dynamics.analysis.lipschitz import LipschitzBound
from rdm_dynamics.analysis.propagation import gronwall_bound, gronwall_exp_bound, propagation_run
from rdm_dynamics.checks import CheckConfig, error_propagation, run_claim
from rdm_dynamics.checks.problems import propagation_depths
from rdm_dynamics.stack import GatedResidualStack

SCHEDULES = ["rdm", "euler", "plain", "inv-sqrt"]


@given(n=st.integers(0, 12), seed=st.integers(0, 10_000))
def test_gronwall_recursion_matches_the_closed_form_and_the_exponential_bound(n, seed):
    g = torch.Generator().manual_seed(seed)
    gains = torch.rand(n, generator=g, dtype=torch.float64)
    d0 = torch.rand(3, generator=g, dtype=torch.float64)
    errors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    bound = gronwall_bound(gains, d0, errors)[-1]
    closed = torch.prod(1 + gains) * d0 + sum(torch.prod(1 + gains[i + 1:]) * errors[i]
                                              for i in range(n))
    assert torch.allclose(bound, closed, rtol=1e-8) and (bound >= closed).all()  # 1e-9 margin
    assert (gronwall_exp_bound(gains, d0, errors) >= bound).all()


def test_gronwall_bound_refuses_negative_gains():
    with pytest.raises(ValueError, match=">= 0"):
        gronwall_bound(torch.tensor([-0.1]), torch.ones(1))


def _stack(dim, depth, schedule, seed, scale, slope, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    field = SmoothTanhField(dim, scale=scale, slope=slope, generator=g)
    gain = SmoothCoefficient(dim, mean=1.0, amplitude=0.5, generator=g)
    bias = SmoothCoefficient(dim, mean=0.0, amplitude=0.5, generator=g)
    times = torch.arange(depth, dtype=torch.float64) / depth
    stack = GatedResidualStack(frozen_layers(field, times), depth, schedule=schedule, gain=gain,
                               bias=bias)
    z0 = 2 * torch.randn(8, dim, generator=g, dtype=torch.float64)
    direction = torch.randn(8, dim, generator=g, dtype=torch.float64)
    noise = torch.randn(depth, 8, dim, generator=g, dtype=torch.float64)
    return stack, z0, direction / direction.norm(dim=1, keepdim=True), noise


@given(dim=st.integers(1, 8), depth=st.integers(1, 24), schedule=st.sampled_from(SCHEDULES),
       seed=st.integers(0, 10_000), scale=st.floats(0.1, 3.0), slope=st.floats(-1.0, 1.0),
       delta=st.floats(1e-8, 1.0), noise=st.sampled_from([0.0, 1e-6, 1e-2]))
def test_measured_deviation_never_exceeds_the_bound(dim, depth, schedule, seed, scale, slope,
                                                     delta, noise):
    """For random widths, depths, gates and weights: |delta_i| <= B_i at every layer."""
    stack, z0, direction, e = _stack(dim, depth, schedule, seed, scale, slope)
    run = propagation_run(stack, z0, delta0=delta * direction,
                          errors=noise * e if noise else None)
    assert run.finite.all()
    assert run.violations == 0
    assert (run.measured <= run.bound).all()
    assert (run.bound[-1] <= run.exp_bound).all()


@given(depth=st.integers(1, 48), schedule=st.sampled_from(SCHEDULES), seed=st.integers(0, 10_000),
       dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]))
def test_low_precision_forward_stays_within_its_bound(depth, schedule, seed, dtype):
    stack, z0, _, _ = _stack(4, depth, schedule, seed, 1.0, 0.5)
    run = propagation_run(stack, z0, dtype=dtype, reference_dtype=torch.float64)
    finite = run.finite
    assert (run.measured[:, finite] <= run.bound[:, finite]).all()


class UnderstatedLayer(TanhLayer):
    """A forged "certified" bound 10x below the truth (what an estimate could produce)."""

    def lipschitz_bound(self, t=None):
        true = LipschitzBound.spectral_norm(self.W) + LipschitzBound.constant(self.slope)
        return LipschitzBound(true.value / 10, "spectral-norm", True)


def test_an_understated_lipschitz_constant_produces_violations():
    """Negative control: the bound comparison detects a constant that is too small."""
    stack, z0, direction, _ = _stack(6, 32, "plain", 0, 1.0, 0.5)
    forged = [UnderstatedLayer(layer.W.detach(), layer.c.detach(), layer.slope)
              for layer in stack.residuals]
    forged_stack = GatedResidualStack(forged, 32, schedule="plain",
                                      gain=stack.gain, bias=stack.bias)
    assert propagation_run(stack, z0, delta0=1e-6 * direction).violations == 0
    assert propagation_run(forged_stack, z0, delta0=1e-6 * direction).violations > 0


def test_stack_perturbations_are_added_after_each_unit():
    stack, z0, _, e = _stack(3, 5, "euler", 1, 1.0, 0.0)
    with torch.no_grad():
        states = stack(z0, perturbations=1e-2 * e, return_all=True)
        manual = z0
        for i in range(5):
            manual = stack.unit(i, manual) + 1e-2 * e[i]
            assert torch.equal(states[i + 1], manual)
    with pytest.raises(ValueError, match="perturbations must have shape"):
        stack(z0, perturbations=e[:2])


def test_propagation_depths():
    assert propagation_depths(256) == [16, 32, 64, 128, 256]
    assert propagation_depths(100) == [16, 32, 64, 100]
    assert propagation_depths(16) == [16]
    assert propagation_depths(8) == [8]


def test_gated_check_passes():
    r = run_claim(error_propagation, CheckConfig(depth=64, quick=True))
    assert r.passed, r.summary
    m = r.metrics
    assert m["bound_violations"] == 0 and m["rounding_model_violations"] == 0
    assert 0.5 < m["amplification_ratio_gated"] < 2
    assert m["growth_rate_plain"] > 0.1 and abs(m["growth_rate_gated"]) < 0.01
    assert m["lowp_bound_ratio"] <= 1
    assert m["lowp_error_bf16"] > m["lowp_error_fp16"] > 0  # bfloat16 is the coarser type


@pytest.mark.parametrize("schedule", ["plain", "inv-sqrt"])
def test_negative_controls_fail(schedule):
    r = run_claim(error_propagation, CheckConfig(depth=64, schedule=schedule, quick=True))
    assert not r.passed
    assert r.metrics["amplification_ratio_gated"] > 2 or math.isnan(
        r.metrics["amplification_ratio_gated"])
    assert r.metrics["bound_violations"] == 0  # the bound still holds: it is the ratio that fails


def test_reproducible_and_seed_dependent():
    a = run_claim(error_propagation, CheckConfig(depth=32, seed=3, quick=True))
    b = run_claim(error_propagation, CheckConfig(depth=32, seed=3, quick=True))
    c = run_claim(error_propagation, CheckConfig(depth=32, seed=4, quick=True))
    same = [k for k in a.metrics if not (a.metrics[k] == b.metrics[k]
                                         or (math.isnan(a.metrics[k])
                                             and math.isnan(b.metrics[k])))]
    assert not same
    assert a.metrics["amplification_gated"] != c.metrics["amplification_gated"]
