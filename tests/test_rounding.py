"""The rounding model of low-precision runs: verified on this backend, and able to fail."""

import dataclasses

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
from rdm_dynamics.analysis.rounding import (
    RoundingModel,
    all_finite_values,
    elementary_violations,
    local_errors,
    stack_error_bounds,
)
from rdm_dynamics.stack import GatedResidualStack

LOW = [torch.bfloat16, torch.float16]


def test_model_constants():
    bf16, fp16, f64 = (RoundingModel.of(t) for t in (torch.bfloat16, torch.float16,
                                                       torch.float64))
    assert bf16.u == 2.0**-8 and fp16.u == 2.0**-11 and f64.u == 2.0**-53
    assert bf16.rho > bf16.u and f64.rho == f64.u  # 16-bit types round twice (via float32)
    assert fp16.eta == 2.0**-25 and bf16.eta == 2.0**-134
    assert bf16.gamma(3) == pytest.approx(3 * bf16.rho / (1 - 3 * bf16.rho))
    with pytest.raises(ValueError, match="gamma_300 undefined"):
        bf16.gamma(300)


@pytest.mark.parametrize("dtype", LOW)
def test_tanh_meets_the_model_on_every_finite_input(dtype):
    values = all_finite_values(dtype)
    assert values.dtype == dtype and torch.isfinite(values).all() and values.numel() > 60_000
    assert elementary_violations(torch.tanh, RoundingModel.of(dtype)) == 0


@pytest.mark.parametrize("dtype", LOW)
def test_exhaustive_check_refutes_an_overclaimed_model(dtype):
    """Negative control: claiming tanh is accurate to u/8 is refuted by the exhaustive check."""
    model = dataclasses.replace(RoundingModel.of(dtype), rho_fn=RoundingModel.of(dtype).u / 8)
    assert elementary_violations(torch.tanh, model) > 100


@pytest.mark.parametrize("dtype", LOW + [torch.float32])
def test_add_and_mul_meet_the_model(dtype):
    g = torch.Generator().manual_seed(0)
    model = RoundingModel.of(dtype)
    x = (torch.randn(20_000, generator=g, dtype=torch.float64)
         * torch.exp(4 * torch.randn(20_000, generator=g, dtype=torch.float64))).to(dtype)
    y = (torch.randn(20_000, generator=g, dtype=torch.float64)
         * torch.exp(4 * torch.randn(20_000, generator=g, dtype=torch.float64))).to(dtype)
    for op in (torch.add, torch.mul):
        exact = op(x.double(), y.double())
        err = (op(x, y).double() - exact).abs()
        ok = torch.isfinite(op(x, y))
        assert (err[ok] <= model.rho * exact[ok].abs() + model.eta).all()


@given(dim=st.integers(1, 16), seed=st.integers(0, 10_000), scale=st.floats(0.1, 4.0),
       slope=st.sampled_from([0.0, 0.5, -1.25]), dtype=st.sampled_from(LOW),
       magnitude=st.floats(1e-6, 30.0))
def test_tanh_layer_rounding_bound_holds(dim, seed, scale, slope, dtype, magnitude):
    g = torch.Generator().manual_seed(seed)
    W = scale * torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    c = torch.randn(dim, generator=g, dtype=torch.float64)
    layer = TanhLayer(W, c, slope)
    x = (magnitude * torch.randn(64, dim, generator=g, dtype=torch.float64)).to(dtype)
    low = TanhLayer(W.to(dtype), c.to(dtype), slope)
    with torch.no_grad():
        err = (low(x).double() - layer(x.double())).abs()
        bound = layer.rounding_bound(x.double(), RoundingModel.of(dtype))
    assert (err <= bound).all()


def _stack(depth, dtype, seed=0, schedule="euler"):
    g = torch.Generator().manual_seed(seed)
    field = SmoothTanhField(6, slope=0.5, generator=g)
    gain = SmoothCoefficient(6, mean=1.0, amplitude=0.5, generator=g)
    bias = SmoothCoefficient(6, mean=0.0, amplitude=0.5, generator=g)
    times = torch.arange(depth, dtype=torch.float64) / depth
    stack = GatedResidualStack(frozen_layers(field, times), depth, schedule=schedule, gain=gain,
                               bias=bias)
    z0 = torch.randn(16, 6, generator=g, dtype=torch.float64)
    import copy

    return stack, copy.deepcopy(stack).to(dtype), z0


@pytest.mark.parametrize("dtype", LOW)
def test_local_errors_of_a_low_precision_stack_are_within_their_a_priori_bounds(dtype):
    stack, low, z0 = _stack(64, dtype)
    with torch.no_grad():
        states = low(z0.to(dtype), return_all=True)
    measured = local_errors(stack, states)
    bound = stack_error_bounds(stack, states, RoundingModel.of(dtype))
    assert (measured <= bound).all()
    assert (measured / bound).max() > 0.05  # and the bound is not vacuous


@pytest.mark.parametrize("dtype", LOW)
def test_an_understated_rounding_model_is_caught(dtype):
    """Negative control: a model with a 32x too small unit roundoff is violated unit by unit."""
    stack, low, z0 = _stack(64, dtype)
    with torch.no_grad():
        states = low(z0.to(dtype), return_all=True)
    true = RoundingModel.of(dtype)
    wrong = dataclasses.replace(true, rho=true.rho / 32, rho_fn=true.rho_fn / 32)
    assert (local_errors(stack, states) > stack_error_bounds(stack, states, wrong)).any()


def test_float64_runs_have_float64_sized_bounds():
    stack, _, z0 = _stack(32, torch.float64)
    with torch.no_grad():
        states = stack(z0, return_all=True)
    bound = stack_error_bounds(stack, states, RoundingModel.of(torch.float64))
    assert (bound < 1e-13).all() and (bound > 0).all()


def test_stochastic_units_are_refused():
    stack = GatedResidualStack([TanhLayer(torch.eye(2, dtype=torch.float64),
                                          torch.zeros(2, dtype=torch.float64))], 1,
                               noise=lambda t: torch.tensor(1.0))
    with pytest.raises(ValueError, match="deterministic units only"):
        stack_error_bounds(stack, torch.zeros(2, 1, 2, dtype=torch.float64),
                           RoundingModel.of(torch.bfloat16))


def test_exhaustive_enumeration_is_for_16_bit_types_only():
    with pytest.raises(ValueError, match="16-bit"):
        all_finite_values(torch.float32)
