"""Certified Lipschitz constants: upper bounds are accepted, estimates from below are refused."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rdm_dynamics.analysis.fields import SmoothTanhField, TanhLayer, frozen_layers
from rdm_dynamics.analysis.lipschitz import (
    LipschitzBound,
    UncertifiedLipschitzError,
    certified_lipschitz,
    require_certified,
    stack_gains,
)
from rdm_dynamics.analysis.propagation import propagation_run
from rdm_dynamics.stack import GatedResidualStack


class PowerIterationLayer(TanhLayer):
    """A layer that reports a power-iteration estimate as its Lipschitz constant."""

    def lipschitz_bound(self, t=None):
        return LipschitzBound.power_iteration(self.W, iterations=3)


class BareNumberLayer(TanhLayer):
    """A layer that reports a bare float: no certificate at all."""

    def lipschitz_bound(self, t=None):
        return float(torch.linalg.matrix_norm(self.W.detach(), ord=2))


def _layers(cls, depth=4, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [cls(torch.randn(dim, dim, generator=g, dtype=torch.float64),
                torch.randn(dim, generator=g, dtype=torch.float64)) for _ in range(depth)]


@given(d=st.integers(1, 8), seed=st.integers(0, 10_000), scale=st.floats(0.01, 10))
def test_spectral_norm_is_an_upper_bound_and_power_iteration_a_lower_one(d, seed, scale):
    g = torch.Generator().manual_seed(seed)
    W = scale * torch.randn(d, d, generator=g, dtype=torch.float64)
    sigma = torch.linalg.svdvals(W)[0].item()
    upper = LipschitzBound.spectral_norm(W)
    lower = LipschitzBound.power_iteration(W, iterations=5, generator=g)
    assert upper.certified and upper.value >= sigma
    assert not lower.certified and lower.value <= sigma * (1 + 1e-12)
    # |W x| <= value |x| for random x: the certified value really bounds the map
    x = torch.randn(32, d, generator=g, dtype=torch.float64)
    assert ((x @ W.T).norm(dim=1) <= upper.value * x.norm(dim=1) * (1 + 1e-12)).all()


def test_power_iteration_estimate_is_rejected_with_a_clear_error():
    W = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
    estimate = LipschitzBound.power_iteration(W, iterations=1)
    with pytest.raises(UncertifiedLipschitzError, match="power-iteration.*estimates from below"):
        require_certified(estimate)
    with pytest.raises(UncertifiedLipschitzError, match="bare number"):
        require_certified(3.0)
    with pytest.raises(UncertifiedLipschitzError, match="cannot be certified"):
        LipschitzBound(3.0, "power-iteration", True)


def test_an_uncertified_part_makes_a_sum_uncertified():
    W = torch.eye(2, dtype=torch.float64)
    total = LipschitzBound.spectral_norm(W) + LipschitzBound.power_iteration(W)
    assert not total.certified
    with pytest.raises(UncertifiedLipschitzError):
        require_certified(total)
    assert (LipschitzBound.spectral_norm(W) + LipschitzBound.constant(-0.5)).certified


@pytest.mark.parametrize("cls, message", [(PowerIterationLayer, "estimates from below"),
                                          (BareNumberLayer, "bare number")])
def test_a_stack_with_uncertified_constants_gets_no_bound(cls, message):
    """Negative control: the bound refuses to run, rather than silently using an estimate."""
    layers = _layers(cls)
    stack = GatedResidualStack(layers, len(layers), schedule="euler")
    z0 = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(UncertifiedLipschitzError, match=message):
        stack_gains(stack)
    with pytest.raises(UncertifiedLipschitzError, match=message):
        propagation_run(stack, z0, delta0=1e-3 * torch.ones_like(z0))


def test_a_residual_without_a_bound_is_refused():
    stack = GatedResidualStack(lambda z, t: torch.tanh(z), 4, schedule="euler")
    with pytest.raises(UncertifiedLipschitzError, match="provides no lipschitz_bound"):
        stack_gains(stack)


def test_field_bounds_match_the_frozen_layers_and_include_the_slope():
    g = torch.Generator().manual_seed(1)
    field = SmoothTanhField(5, slope=0.5, generator=g)
    times = torch.linspace(0, 1, 7, dtype=torch.float64)
    from_field = certified_lipschitz(field, times)
    from_layers = [layer.lipschitz_bound() for layer in frozen_layers(field, times)]
    for a, b, t in zip(from_field, from_layers, times, strict=True):
        assert a.certified and b.certified
        assert a.value == pytest.approx(b.value, rel=1e-12)
        assert a.value == pytest.approx(float(field.lipschitz(t).detach()), rel=1e-9)
        assert a.value > 0.5  # |slope| + ||W||


def test_stack_gains_are_max_gate_times_lipschitz():
    g = torch.Generator().manual_seed(2)
    field = SmoothTanhField(4, generator=g)
    stack = GatedResidualStack(field, 8, schedule="euler", gain=lambda t: torch.tensor([1.0, 2.0,
                                                                                      -3.0, 0.5]))
    gains = stack_gains(stack)
    lips = torch.tensor([field.lipschitz(t).item() for t in stack.times[:-1]], dtype=torch.float64)
    assert torch.allclose(gains, 3.0 / 8 * lips, rtol=1e-9)
