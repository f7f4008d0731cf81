"""C1 `depth-limit`: the gated stack converges to its ODE as depth grows (Gating-Residual ODE).

Setting: F(z, tau) = tanh(W(tau) z + c(tau)) with weights smooth in depth, per-channel gate
coefficients a(tau) = 1 + 0.5 sin(2 pi tau + phase), b(tau) = 0.5 sin(2 pi tau + phase'), and
alpha_i = h a(tau_i), beta_i = h b(tau_i) for ODE-consistent gates.  The reference is the ODE
dz/dtau = a F + b solved by torchdiffeq dopri5 (rtol 1e-10, atol 1e-12, float64) on the finest
grid.  Every rung of the depth ladder starts from the same initial points.

Metric: error(L) = max over layers i and samples of |z_i - z(tau_i)|_2; the order is minus the
fitted slope of log error against log L, gated as first order (``rules.order_rules``: fitted,
end to end and between the two deepest rungs).  The control, gated too: the same measurement
with layer weights W(tau_i) + i.i.d. noise, which has no ODE limit, must not converge (an error
that does not vanish at 1/L scaling).
"""

from __future__ import annotations

import torch

from ..analysis.fields import iid_tanh_layers
from ..solvers import solve_ode
from ..stack import GatedResidualStack, get_schedule
from ..stats import fit_order, two_point_order
from . import CheckConfig
from .claim import Measurement
from .problems import pathwise_error, smooth_problem
from .report import Series, error_trend, order_figure
from .rules import FIRST_ORDER, Rule, order_metrics, order_rules

CLAIM = "C1"
ID = "depth-limit"
TITLE = "Gating-Residual ODE: the depth-L stack converges to its ODE at order 1"
THEORY = f"order 1 +/- {FIRST_ORDER[1] - 1:.2f}"
#: A scheduling hint: serial seconds at --depth 256 (``workers.cost`` says how it is measured).
COST = 0.8

#: The i.i.d. control "does not converge": its fitted and deepest local orders at most this.
IID_ORDER_MAX = 0.5

RULES = [*order_rules("order", FIRST_ORDER),
         Rule("iid_order", (None, IID_ORDER_MAX)), Rule("iid_order_deep", (None, IID_ORDER_MAX))]


def build_problem(config: CheckConfig):
    """The smooth-in-depth problem (``problems.smooth_problem``, ||W|| about 1.5, no linear part)
    in the config's dtype and device: field, gain, bias, z0 and the stream's generator."""
    p = smooth_problem(config, stream=1, scale=1.5)
    to = config.placement
    return p.field.to(**to), p.gain.to(**to), p.bias.to(**to), p.z0.to(**to), p.generator


def pathwise_errors(config: CheckConfig) -> tuple[list[float], list[float]]:
    """Per rung of the ladder, the pathwise error of the stack with smooth weights and of the
    stack with i.i.d. weights per layer, both against the dopri5 solution of the smooth ODE."""
    field, gain, bias, z0, g = build_problem(config)
    depth = config.ladder[-1]
    with torch.no_grad():
        smooth_stack = GatedResidualStack(field, depth, schedule="euler", gain=gain, bias=bias,
                                          **config.placement)
        reference = solve_ode(smooth_stack.continuous_limit(), z0, smooth_stack.times)
        errors, iid_errors = [], []
        for L in config.ladder:
            ref_L = reference[::depth // L]
            stack = GatedResidualStack(field, L, schedule=config.schedule, gain=gain, bias=bias,
                                       **config.placement)
            errors.append(pathwise_error(stack(z0, return_all=True), ref_L))
            layers = [layer.to(**config.placement)
                      for layer in iid_tanh_layers(field, L, noise=1.0, generator=g)]
            iid_stack = GatedResidualStack(layers, L, schedule=config.schedule, gain=gain,
                                           bias=bias, **config.placement)
            iid_errors.append(pathwise_error(iid_stack(z0, return_all=True), ref_L))
    return errors, iid_errors


def measure(config: CheckConfig) -> Measurement:
    errors, iid_errors = pathwise_errors(config)
    ladder = config.ladder
    fit, iid_fit = fit_order(ladder, errors), fit_order(ladder, iid_errors)
    metrics = order_metrics("order", ladder, errors)
    metrics.update(order_fit_se=fit.stderr, error=errors[-1], iid_order=iid_fit.order,
                   iid_error=iid_errors[-1],
                   iid_order_deep=two_point_order(ladder[-2:], iid_errors[-2:]))
    return Measurement(metrics, config, curves={"smooth": (errors, fit),
                                                 "iid": (iid_errors, iid_fit)})


def summary(measured: Measurement, verdict) -> str:
    m, depth = measured.metrics, measured.config.ladder[-1]
    schedule = get_schedule(measured.config.schedule).name
    return (f"With {schedule} gates the error against the dopri5 "
            f"solution of the ODE {error_trend(m['order'])}: order {m['order']:.3f} over "
            f"L = {measured.config.ladder[0]}..{depth}, {m['error']:.2e} at L = {depth}. With "
            f"i.i.d. weights per layer it {error_trend(m['iid_order'])}: order "
            f"{m['iid_order']:.3f}, {m['iid_error']:.2e} at L = {depth}.")


def headline(measured: Measurement) -> str:
    m = measured.metrics
    return f"order {m['order']:.3f}, error {m['error']:.1e}; iid order {m['iid_order']:.2f}"


def figure(measured: Measurement):
    ladder = measured.config.ladder
    return order_figure(
        f"C1 depth-limit ({get_schedule(measured.config.schedule).name} gates)",
        [Series("smooth weights", ladder, *measured.curves["smooth"]),
         Series("i.i.d. weights per layer", ladder, *measured.curves["iid"])],
        reference_order=1.0, ylabel="max_i |z_i - z(tau_i)|")
