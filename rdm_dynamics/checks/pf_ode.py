"""C2 `pf-ode`: the Euler-gated stack is the Euler scheme of the probability-flow ODE.

Setting: for each SDE (VP, sub-VP, VE) and each data law (a Gaussian in R^4 and a 4-component
Gaussian mixture in R^2), a depth-L stack on t_i = T - i h, h = (T - eps) / L, eps = 1e-3, with
residual F = PF-ODE denoising field with the exact score, F(z, t) = -(f(t) z - g(t)^2 s(z, t) / 2),
and the config's gates (alpha_i = h for euler/rdm).  Its inputs are exact samples of p_T.

Claim: the stack follows the exact PF-ODE flow with error O(h), and carries p_T to p_eps.

* Pathwise: max_{i, samples} |z_i - x(t_i)| at every rung of the depth ladder, from the same
  samples, against the closed-form Gaussian flow map (``Gaussian.pf_ode_map``) or, for the
  mixture, torchdiffeq dopri5 at rtol 1e-10, atol 1e-12 in float64 on the finest grid.  Its
  order is gated fitted, end to end (``_span``) and between the two deepest rungs (``_deep``;
  ``rules.order_rules``).
* Output law, Gaussian data: every unit is affine, so the stack's output law is propagated
  exactly (``gaussian_gates.layer_laws``, no sampling); its W2 distance to p_eps is gated by its
  local order between the two deepest rungs (``transport_order_deep_<sde>``).  The fitted order
  is reported only: the coarse rungs are pre-asymptotic for it.
* Output law, mixture data, against references that share no code with the stack
  (``problems.output_law_metrics``): outputs from x_T pushed through the SDE's exact transition
  against as many exact samples of p_eps made the same way, by the energy distance (0 in law)
  and the components' posterior shares against the mixture weights.
* The law code itself (``problems.law_reference_metrics``): log-densities and scores of both laws
  against torch.distributions with marginal coefficients by quadrature of f and g, and the
  Fokker-Planck equation of the diffused density, by autograd.

Negative controls (``measure``'s keyword arguments): a score of the wrong sign; the PF-ODE drift
without its 1/2 (``pf_weight=1``).  The references always use the true PF-ODE.
"""

from __future__ import annotations

import torch

from ..analysis.gaussian_gates import layer_laws
from ..laws import Gaussian
from ..sde import EPS, SDE, make_sde
from ..solvers import solve_ode
from ..stack import get_schedule
from ..stats import fit_order, two_point_order
from . import CheckConfig
from .claim import Measurement
from .problems import (
    LAW_NAMES,
    NAMES,
    OUTPUT_SAMPLES,
    SDE_NAMES,
    data_laws,
    denoising_stack,
    law_reference_metrics,
    law_reference_rules,
    measured_sdes,
    output_law_bounds,
    output_law_metrics,
    output_law_rules,
    pathwise_error,
    reference_config,
    sample_prior,
)
from .report import Series, extremes, order_figure, out_of_range, trend
from .rules import AT_LEAST_FIRST_ORDER, FIRST_ORDER, Rule, order_metrics, order_rules

CLAIM = "C2"
ID = "pf-ode"
TITLE = "Denoising-Dynamics ODE: the Euler-gated stack follows the PF-ODE flow at order 1"
THEORY = f"order 1 +/- {FIRST_ORDER[1] - 1:.2f} each"
#: A scheduling hint: serial seconds at --depth 256 (``workers.cost`` says how it is measured).
COST = 2.3


def exact_trajectory(sde, law, x_T: torch.Tensor, times: torch.Tensor,
                     config: CheckConfig) -> torch.Tensor:
    """The PF-ODE solution from x_T at every time of ``times`` (T down to eps): (n, B, d).

    Closed form for Gaussian data; dopri5 (rtol 1e-10, atol 1e-12) of the same denoising field
    for a mixture, never stepping below eps.
    """
    if isinstance(law, Gaussian):
        return torch.stack([law.pf_ode_map(sde, sde.T, t)(x_T) for t in times])
    field = denoising_stack(sde, law, len(times) - 1, config, schedule="euler",
                            probability_flow=True).continuous_limit()
    return solve_ode(field, x_T, times)


def pathwise_errors(sde: SDE, law, x_T: torch.Tensor, config: CheckConfig, *,
                    score_scale: float) -> list[float]:
    """Per rung of the ladder, max_{i, samples} |z_i - x(t_i)| of the stack started from x_T
    (float64, cast to config.dtype) against the exact PF-ODE flow from the same x_T."""
    ladder, depth = config.ladder, config.ladder[-1]
    law64, law_dev = law.to(**config.reference_placement), law.to(**config.placement)
    times = denoising_stack(sde, law64, depth, reference_config(config),
                            probability_flow=True).times
    reference = exact_trajectory(sde, law64, x_T, times, reference_config(config))
    errors = []
    for L in ladder:
        stack = denoising_stack(sde, law_dev, L, config, probability_flow=True,
                                score_scale=score_scale)
        states = stack(x_T.to(config.dtype), return_all=True)
        errors.append(pathwise_error(states.to(reference), reference[::depth // L]))
    return errors


def transport_metrics(sde: SDE, law: Gaussian, config: CheckConfig, *,
                      score_scale: float) -> dict[str, float]:
    """The stack's exact output law (z_0 ~ p_T, Gaussian data) against p_eps: its W2 distance at
    --depth with its fitted and deepest local order on the ladder, and the mean and covariance
    (Frobenius) errors at --depth.  Propagated in the stack's dtype, compared in float64."""
    ladder, name = config.ladder, sde.name
    law64, law_dev = law.to(**config.reference_placement), law.to(**config.placement)
    p_T, p_eps = law64.marginal(sde, sde.T), law64.marginal(sde, EPS)
    outputs = [layer_laws(denoising_stack(sde, law_dev, L, config, probability_flow=True,
                                          score_scale=score_scale),
                          p_T, p_eps.mean, p_eps.cov, layers=-1) for L in ladder]
    w2s = [float(out.w2) for out in outputs]
    return {f"transport_order_{name}": fit_order(ladder, w2s).order,
            f"transport_order_deep_{name}": two_point_order(ladder[-2:], w2s[-2:]),
            f"transport_w2_{name}": w2s[-1],
            f"transport_mean_error_{name}": float(outputs[-1].mean_error),
            f"transport_cov_error_{name}": float(outputs[-1].cov_error)}


def mixture_output_metrics(sde: SDE, mixture, generator, config: CheckConfig, *,
                           score_scale: float) -> dict[str, float]:
    """The law of the --depth stack's outputs for mixture data against p_eps
    (``problems.output_law_metrics``)."""
    mixture_dev = mixture.to(**config.placement)

    def run_stack(x_T):
        stack = denoising_stack(sde, mixture_dev, config.ladder[-1], config,
                                probability_flow=True, score_scale=score_scale)
        return stack(x_T.to(config.dtype)).to(torch.float64)

    return output_law_metrics(run_stack, mixture, sde, generator, OUTPUT_SAMPLES[config.quick],
                              config)


def measure(config: CheckConfig, *, score_sign: float = 1.0, pf_weight: float = 0.5,
            sdes: tuple[str, ...] = SDE_NAMES) -> Measurement:
    """C2 with the stack's residual F = -(f z - pf_weight g^2 (score_sign s)): the true PF-ODE is
    score_sign = 1, pf_weight = 1/2, anything else a negative control.  ``sdes`` restricts the
    SDEs (for fast tests and controls)."""
    g = config.generator(stream=2)
    laws = data_laws(config, g)
    batch = 16 if config.quick else 64
    controls = {"score_scale": score_sign * 2.0 * pf_weight}
    metrics: dict[str, float] = {"eps": EPS}
    errors: dict[tuple[str, str], list[float]] = {}
    with torch.no_grad():
        for sde_name in sdes:
            sde = make_sde(sde_name)
            for law_name, law in laws.items():
                x_T = sample_prior(law, sde, batch, g, config)  # float64
                key = f"{sde_name}_{law_name}"
                rungs = pathwise_errors(sde, law, x_T, config, **controls)
                metrics.update(order_metrics(f"order_{key}", config.ladder, rungs))
                metrics[f"error_{key}"] = rungs[-1]
                errors[sde_name, law_name] = rungs
                if isinstance(law, Gaussian):
                    metrics.update(transport_metrics(sde, law, config, **controls))
            metrics.update(law_reference_metrics(laws, sde, g))
            metrics.update(mixture_output_metrics(sde, laws["mixture"], g, config, **controls))
    metrics["order_min"], metrics["order_max"] = extremes(
        metrics[f"order_{s}_{law}"] for s in sdes for law in laws)
    metrics["transport_order_min"], metrics["transport_order_max"] = extremes(
        metrics[f"transport_order_{s}"] for s in sdes)
    metrics.update(output_law_bounds(sdes, len(laws["mixture"].weights)))
    return Measurement(metrics, config, curves={"errors": errors})


def rules(measured: Measurement) -> list[Rule]:
    """Per SDE measured: the pathwise order of each law in the first-order band, the Gaussian
    output law's deepest local W2 order at least first order; the law references; the mixture's
    output law."""
    sdes, out = measured_sdes(measured.metrics), []
    for s in sdes:
        out += order_rules(f"order_{s}_gaussian", FIRST_ORDER)
        out.append(Rule(f"transport_order_deep_{s}", AT_LEAST_FIRST_ORDER))
        out += order_rules(f"order_{s}_mixture", FIRST_ORDER)
    return out + law_reference_rules(sdes) + output_law_rules(measured.metrics, sdes)


def summary(measured: Measurement, verdict) -> str:
    m, sdes = measured.metrics, measured_sdes(measured.metrics)
    ladder, depth = measured.config.ladder, measured.config.ladder[-1]
    keys = [f"{s}_{law}" for s in sdes for law in LAW_NAMES]
    errors_at_depth = [m[f"error_{k}"] for k in keys]
    return (f"With {get_schedule(measured.config.schedule).name} gates the PF-ODE stack's pathwise "
            f"error against the exact flow (eps = {EPS:g}) "
            f"{trend(m[f'order_{k}'] for k in keys)}: orders {m['order_min']:.3f}.."
            f"{m['order_max']:.3f} over L = {ladder[0]}..{depth} "
            f"({', '.join(NAMES[s] for s in sdes)}; Gaussian and mixture data), error "
            f"{min(errors_at_depth):.2e}..{max(errors_at_depth):.2e} at L = {depth}; the W2 "
            f"distance of its output law to p_eps (Gaussian data) "
            f"{trend(m[f'transport_order_{s}'] for s in sdes)}: orders "
            f"{m['transport_order_min']:.3f}..{m['transport_order_max']:.3f}"
            + out_of_range(verdict))


def headline(measured: Measurement) -> str:
    m = measured.metrics
    return (f"orders {m['order_min']:.3f}..{m['order_max']:.3f} "
            f"({len(measured_sdes(m))} SDEs x 2 laws); W2(p_eps) orders "
            f"{m['transport_order_min']:.2f}..{m['transport_order_max']:.2f}")


def figure(measured: Measurement):
    ladder = measured.config.ladder
    series = [Series(f"{s}, {law}", ladder, errors, fit_order(ladder, errors))
              for (s, law), errors in measured.curves["errors"].items()]
    return order_figure(f"C2 pf-ode ({get_schedule(measured.config.schedule).name} gates, "
                        f"eps = {EPS:g})", series, reference_order=1.0,
                        ylabel="max_i |z_i - x(t_i)|")
