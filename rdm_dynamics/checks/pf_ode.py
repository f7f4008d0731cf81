"""C2 `pf-ode`: the Euler-gated stack is the Euler scheme of the probability-flow ODE.

Setting: for each SDE (VP, sub-VP, VE) and each data law (a Gaussian in R^4 and a 4-component
Gaussian mixture in R^2), a depth-L stack on t_i = T - i h, h = (T - eps) / L, eps = 1e-3, with
residual F = PF-ODE denoising field with the exact score, F(z, t) = -(f(t) z - g(t)^2 s(z, t) / 2),
and the config's gates (alpha_i = h for euler/rdm).  Its inputs are exact samples of p_T.

References: the closed-form Gaussian flow map (``Gaussian.pf_ode_map``); for the mixture,
torchdiffeq dopri5 at rtol 1e-10, atol 1e-12 in float64 on the finest grid.  Every rung of the
depth ladder starts from the same samples.

Metrics per SDE and law: the pathwise error max_{i, samples} |z_i - x(t_i)| at --depth and its
order on the ladder.  Pass (``rules.order_rules``): every one of the six fitted orders, their
end-to-end orders (``order_<sde>_<law>_span``) and their local orders between the two deepest
rungs (``_deep``) in 1 +/- 0.15 (the last two within 3 fit standard errors).

"The stack carries p_T to p_eps", gated twice.  Gaussian data: every unit is affine, so the
stack's output law is propagated exactly (no sampling); its W2 distance to p_eps at --depth and
the order of that W2 on the ladder are reported, and the local order between the two deepest
rungs is gated >= 0.85 (``transport_order_deep_<sde>``; the fitted order is reported only: the
coarse rungs are pre-asymptotic for it, 0.80..1.15 over random Gaussian laws for VP on
L = 16..256).  Mixture data, against references that share no code with the stack
(``problems.output_law_metrics``): 1200 outputs (600 quick) from x_T pushed through the SDE's
exact transition against as many exact samples of p_eps made the same way, by the energy
distance (0 in law) and the components' posterior shares against the mixture weights, at
family-wise false-alarm rate 1e-3.  And the law code itself (``problems.law_reference_metrics``):
log-densities and scores of both laws against torch.distributions with marginal coefficients by
quadrature of f and g, and the Fokker-Planck equation of the diffused density, by autograd.

``measure`` takes the negative controls as arguments (a score of the wrong sign; the PF-ODE drift
without its 1/2, i.e. ``pf_weight=1``); ``run`` calls it with the true values.
"""

from __future__ import annotations

import torch

from ..laws import Gaussian
from ..paths import solve_ode
from ..sde import make_sde
from ..stack import get_gating
from ..stats import fit_order, gaussian_w2_moments
from . import CheckConfig
from .problems import (
    EPS,
    NAMES,
    OUTPUT_SAMPLES,
    SDE_NAMES,
    data_laws,
    denoising_stack,
    law_reference_metrics,
    law_reference_rules,
    output_law_metrics,
    output_law_rules,
    pathwise_error,
    reference_config,
    sample_prior,
)
from .report import CheckResult, Series, extremes, order_figure, trend
from .rules import Rule, judge, order_metrics_and_rules

CLAIM = "C2"
ID = "pf-ode"
TITLE = "Denoising-Dynamics ODE: the Euler-gated stack follows the PF-ODE flow at order 1"
#: Serial seconds at --depth 256 on one idle core (measured 2026-12-01): a scheduling hint.
COST = 2.3

ORDER_RANGE = (0.85, 1.15)
TRANSPORT_DEEP_RANGE = (0.85, None)


def exact_trajectory(sde, law, x_T: torch.Tensor, times: torch.Tensor,
                     config: CheckConfig) -> torch.Tensor:
    """The PF-ODE solution from x_T at every time of ``times`` (T down to eps): (n, B, d).

    Closed form for Gaussian data; dopri5 (rtol 1e-10, atol 1e-12) of the same denoising field
    for a mixture, never stepping below eps.
    """
    if isinstance(law, Gaussian):
        return torch.stack([law.pf_ode_map(sde, sde.T, t)(x_T) for t in times])
    field = denoising_stack(sde, law, len(times) - 1, config, gating="euler",
                            probability_flow=True).continuous_limit()
    return solve_ode(field, x_T, times)


def transport_errors(stack, law: Gaussian, sde) -> tuple[float, float, float]:
    """Mean error, covariance error (Frobenius) and W2 of the stack's exact output law against
    p_eps, for z_0 ~ p_T Gaussian (every unit is affine, so the output law is Gaussian).  The
    moments are propagated in the stack's dtype and compared in ``law``'s."""
    p_T, p_eps = law.marginal(sde, sde.T), law.marginal(sde, EPS)
    dtype = stack.times.dtype
    means, covs = stack.propagate_moments(p_T.mean.to(dtype), p_T.cov.to(dtype))
    mean, cov = means[-1].to(p_eps.mean), covs[-1].to(p_eps.mean)
    w2 = gaussian_w2_moments(mean, cov, p_eps.mean, p_eps.cov)
    return (float((mean - p_eps.mean).norm()), float(torch.linalg.matrix_norm(cov - p_eps.cov)),
            float(w2))


def measure(config: CheckConfig, *, score_sign: float = 1.0, pf_weight: float = 0.5,
            sdes: tuple[str, ...] = SDE_NAMES) -> CheckResult:
    """Run C2 with the stack's residual F = -(f z - pf_weight g^2 (score_sign s)).

    The true PF-ODE is score_sign = 1, pf_weight = 1/2; anything else is a negative control and
    must fail.  The references always use the true PF-ODE.  ``sdes`` restricts the SDEs (for
    fast tests).
    """
    g = config.generator(stream=2)
    laws = data_laws(config, g)
    batch = 16 if config.quick else 64
    ladder, depth = config.ladder, config.ladder[-1]
    score_scale = score_sign * 2.0 * pf_weight
    metrics: dict[str, float] = {"eps": EPS}
    rules: list[Rule] = []
    n_out = OUTPUT_SAMPLES[config.quick]
    keys: list[str] = []  # sde_law of every pathwise comparison
    series: list[Series] = []
    with torch.no_grad():
        for sde_name in sdes:
            sde = make_sde(sde_name)
            for law_name, law in laws.items():
                x_T = sample_prior(law, sde, batch, g, config)  # float64
                law64 = law.to(**config.reference_placement)
                law_dev = law.to(**config.placement)
                times = denoising_stack(sde, law64, depth, reference_config(config),
                                        probability_flow=True).times
                reference = exact_trajectory(sde, law64, x_T, times, reference_config(config))
                errors, w2s, transport = [], [], None
                for L in ladder:
                    stack = denoising_stack(sde, law_dev, L, config, probability_flow=True,
                                            score_scale=score_scale)
                    states = stack(x_T.to(config.dtype), return_all=True)
                    errors.append(pathwise_error(states.to(reference),
                                                 reference[::depth // L]))
                    if isinstance(law, Gaussian):
                        transport = transport_errors(stack, law64, sde)
                        w2s.append(transport[2])
                key = f"{sde_name}_{law_name}"
                fit = fit_order(ladder, errors)
                order_metrics, order_rule_list = order_metrics_and_rules(
                    f"order_{key}", ladder, errors,
                                                             ORDER_RANGE)
                metrics.update(order_metrics)
                rules += order_rule_list
                metrics[f"error_{key}"] = errors[-1]
                keys.append(key)
                series.append(Series(f"{sde_name}, {law_name}", ladder, errors, fit))
                if transport is not None:
                    w2_fit = fit_order(ladder, w2s)
                    metrics[f"transport_order_{sde_name}"] = w2_fit.order
                    metrics[f"transport_order_deep_{sde_name}"] = fit_order(
                        ladder[-2:], w2s[-2:]).order
                    rules.append(Rule(f"transport_order_deep_{sde_name}",
                                      TRANSPORT_DEEP_RANGE))
                    metrics[f"transport_w2_{sde_name}"] = transport[2]
                    metrics[f"transport_mean_error_{sde_name}"] = transport[0]
                    metrics[f"transport_cov_error_{sde_name}"] = transport[1]
            metrics.update(law_reference_metrics(laws, sde, g))
            mixture_dev = laws["mixture"].to(**config.placement)

            def run_stack(x_T, sde=sde, law=mixture_dev):
                stack = denoising_stack(sde, law, depth, config, probability_flow=True,
                                        score_scale=score_scale)
                return stack(x_T.to(config.dtype)).to(torch.float64)

            metrics.update(output_law_metrics(run_stack, laws["mixture"], sde, g, n_out, config))

    orders = [metrics[f"order_{k}"] for k in keys]
    metrics["order_min"], metrics["order_max"] = extremes(orders)
    transport_orders = [metrics[f"transport_order_{s}"] for s in sdes]
    metrics["transport_order_min"], metrics["transport_order_max"] = extremes(transport_orders)
    output_rules, critical = output_law_rules(sdes, len(laws["mixture"].weights), n_out)
    metrics.update(critical)
    verdict = judge(metrics, rules + law_reference_rules(sdes) + output_rules)

    gating = get_gating(config.gating).name
    errors_at_depth = [metrics[f"error_{k}"] for k in keys]
    summary = (f"With {gating} gates the PF-ODE stack's pathwise error against the exact flow "
               f"(eps = {EPS:g}) {trend(orders)}: orders {metrics['order_min']:.3f}.."
               f"{metrics['order_max']:.3f} over L = {ladder[0]}..{depth} "
               f"({', '.join(NAMES[s] for s in sdes)}; Gaussian and mixture data), error "
               f"{min(errors_at_depth):.2e}..{max(errors_at_depth):.2e} at L = {depth}; the W2 "
               f"distance of its output law to p_eps (Gaussian data) {trend(transport_orders)}: "
               f"orders {metrics['transport_order_min']:.3f}..{metrics['transport_order_max']:.3f}"
               + (f"; out of range: {', '.join(verdict.failed)}." if verdict.failed else "."))
    figure = order_figure(f"C2 pf-ode ({gating} gates, eps = {EPS:g})", series,
                          reference_order=1.0, ylabel="max_i |z_i - x(t_i)|")
    return CheckResult(
        id=ID, claim=CLAIM, metrics=metrics, verdict=verdict, summary=summary, figure=figure,
        measured_text=f"orders {metrics['order_min']:.3f}..{metrics['order_max']:.3f} "
                      f"({len(sdes)} SDEs x 2 laws); W2(p_eps) orders "
                      f"{metrics['transport_order_min']:.2f}..{metrics['transport_order_max']:.2f}",
        theory_text=f"order 1 +/- {ORDER_RANGE[1] - 1:.2f} each")


def run(config: CheckConfig) -> CheckResult:
    return measure(config)
