"""C1 `depth-limit`: the gated stack converges to its ODE as depth grows (Gating-Residual ODE).

Setting: F(z, tau) = tanh(W(tau) z + c(tau)) with weights smooth in depth, per-channel gate
coefficients a(tau) = 1 + 0.5 sin(2 pi tau + phase), b(tau) = 0.5 sin(2 pi tau + phase'), and
alpha_i = h a(tau_i), beta_i = h b(tau_i) for ODE-consistent gates.  The reference is the ODE
dz/dtau = a F + b solved by torchdiffeq dopri5 (rtol 1e-10, atol 1e-12, float64) on the finest
grid.  Every rung of the depth ladder starts from the same initial points.

Metric: error(L) = max over layers i and samples of |z_i - z(tau_i)|_2; the order is minus the
fitted slope of log error against log L.  Pass (``rules.order_rules``): the fitted order, the
end-to-end order between the coarsest and the deepest rung (``order_span``) and the local order
between the two deepest rungs (``order_deep``) in 1 +/- 0.15 (the last two within 3 standard
errors of the fit).  The control, gated too: the same measurement with layer weights W(tau_i) +
i.i.d. noise, which has no ODE limit, must not converge: ``iid_order`` and ``iid_order_deep``
<= 0.5 (an error that does not vanish at 1/L scaling).
"""

from __future__ import annotations

import torch

from ..analysis.fields import iid_tanh_layers
from ..paths import solve_ode
from ..stack import GatedResidualStack, get_gating
from ..stats import fit_order
from . import CheckConfig
from .problems import pathwise_error, smooth_problem
from .report import CheckResult, Series, error_trend, order_figure
from .rules import Rule, judge, order_rules

CLAIM = "C1"
ID = "depth-limit"
TITLE = "Gating-Residual ODE: the depth-L stack converges to its ODE at order 1"
#: Serial seconds at --depth 256 on one idle core (measured 2026-12-01): a scheduling hint.
COST = 0.8

ORDER_RANGE = (0.85, 1.15)
#: The i.i.d. control "does not converge": its fitted and deepest local orders at most this.
IID_ORDER_MAX = 0.5


def build_problem(config: CheckConfig):
    """The smooth-in-depth problem (``problems.smooth_problem``, ||W|| about 1.5, no linear part)
    in the config's dtype and device: field, gain, bias, z0 and the stream's generator."""
    p = smooth_problem(config, stream=1, scale=1.5)
    to = config.placement
    return p.field.to(**to), p.gain.to(**to), p.bias.to(**to), p.z0.to(**to), p.generator


def run(config: CheckConfig) -> CheckResult:
    field, gain, bias, z0, g = build_problem(config)
    depth = config.ladder[-1]
    with torch.no_grad():
        smooth_stack = GatedResidualStack(field, depth, gating="euler", gain=gain, bias=bias,
                                          **config.placement)
        times = smooth_stack.times
        reference = solve_ode(smooth_stack.continuous_limit(), z0, times)

        errors, iid_errors = [], []
        for L in config.ladder:
            stride = depth // L
            ref_L = reference[::stride]
            stack = GatedResidualStack(field, L, gating=config.gating, gain=gain, bias=bias,
                                       **config.placement)
            errors.append(pathwise_error(stack(z0, return_all=True), ref_L))
            layers = [layer.to(**config.placement)
                      for layer in iid_tanh_layers(field, L, noise=1.0, generator=g)]
            iid_stack = GatedResidualStack(layers, L, gating=config.gating, gain=gain, bias=bias,
                                           **config.placement)
            iid_errors.append(pathwise_error(iid_stack(z0, return_all=True), ref_L))

    fit, iid_fit = fit_order(config.ladder, errors), fit_order(config.ladder, iid_errors)
    metrics, rules = order_rules("order", config.ladder, errors, ORDER_RANGE)
    metrics.update(order_fit_se=fit.stderr, error=errors[-1], iid_order=iid_fit.order,
                   iid_error=iid_errors[-1],
                   iid_order_deep=fit_order(config.ladder[-2:], iid_errors[-2:]).order)
    rules += [Rule("iid_order", (None, IID_ORDER_MAX)),
              Rule("iid_order_deep", (None, IID_ORDER_MAX))]
    verdict = judge(metrics, rules)

    ladder = f"L = {config.ladder[0]}..{depth}"
    gating = get_gating(config.gating).name
    summary = (f"With {gating} gates the error against the dopri5 solution of the ODE "
               f"{error_trend(fit.order)}: order {fit.order:.3f} over {ladder}, "
               f"{errors[-1]:.2e} at L = {depth}. With i.i.d. weights per layer it "
               f"{error_trend(iid_fit.order)}: order {iid_fit.order:.3f}, {iid_errors[-1]:.2e} "
               f"at L = {depth}.")
    figure = order_figure(
        f"C1 depth-limit ({gating} gates)",
        [Series("smooth weights", config.ladder, errors, fit),
         Series("i.i.d. weights per layer", config.ladder, iid_errors, iid_fit)],
        reference_order=1.0, ylabel="max_i |z_i - z(tau_i)|")
    return CheckResult(
        id=ID, claim=CLAIM, metrics=metrics, verdict=verdict, summary=summary, figure=figure,
        measured_text=f"order {fit.order:.3f}, error {errors[-1]:.1e}; "
                      f"iid order {iid_fit.order:.2f}",
        theory_text=f"order 1 +/- {ORDER_RANGE[1] - 1:.2f}")
