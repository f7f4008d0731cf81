"""C5 `error-propagation`: perturbations obey the discrete Gronwall bound across depth.

Claim: two runs of a gated stack, one perturbed at the input (delta_0) and after every unit
(e_i), differ at layer L by at most

    |delta_L| <= prod_i (1 + g_i) |delta_0| + sum_i prod_{j>i} (1 + g_j) |e_i|,
    g_i = max_c |alpha_i,c| Lip F_i,

so with ODE-consistent gates (sum_i g_i bounded in L) the amplification stays bounded as L grows,
while with plain residuals (alpha_i = a(tau_i)) it grows geometrically; a low-precision forward
pass stays within the bound with e_i the a priori rounding error of each unit.

Setting: an expansive residual F(z, tau) = 0.5 z + tanh(W(tau) z + c(tau)) with weights smooth in
depth, stored per layer (fields.frozen_layers, so each layer can be cast to low precision), gate
coefficients a(tau) = 1 + 0.5 sin(2 pi tau + phase), b(tau) = 0.5 sin(2 pi tau + phase') per
channel, on depths 16, 32, ..., --depth.  Lipschitz constants are certified upper bounds
(|slope| + SVD spectral norm, lipschitz.py); every bound also covers the rounding of the computed
runs (rounding.py), so it holds for the numbers the computer produced.

Experiments, each a reference run from z0 against a perturbed run (propagation.propagation_run):
  amplification  |delta_0| = 1e-6 (1e-2 below float64), no per-layer error: |delta_L| / |delta_0|;
  injection      |delta_0| = 1e-2 and |e_i| = 1e-3 (random directions) after every unit;
  low precision  the whole forward in bfloat16 and in float16 against float64 (delta_0 = the
                 rounding of z0, e_i = rounding errors, bounded a priori by the rounding model).

Metrics (gated by :data:`RULES`): ``bound_violations`` (samples whose measured |delta_i| exceeds
the bound at some layer, over every experiment, depth and schedule); ``rounding_model_violations``
(bfloat16 and float16 inputs where tanh breaks the assumed accuracy, exhaustive, plus local
rounding errors above their a priori bound); ``amplification_ratio_gated`` (mean over samples of
the amplification at --depth over that at depth 16); ``growth_rate_plain`` (per-layer slope of
log amplification against depth with alpha_i = a(tau_i)); ``lowp_bound_ratio`` (largest
measured / bound of the low-precision runs at --depth).  inv-sqrt gates are reported for
comparison.

Where the bound is nearly attained (``tight_experiment``: units whose Jacobian at a fixed point
is symmetric, perturbed along the direction of largest growth, at --depth; one diagonal with
per-channel gains, one rotated): ``tight_bound_ratio`` (largest measured / bound over layers: no
violation) and ``tight_bound_ratio_final`` (at layer L: the bound is not vacuous).  And every
certified Lipschitz constant of the deepest stack against an independent lower estimate
(finite-difference Jacobians, ``lipschitz_lower_estimates``):
``lipschitz_certified_over_estimate``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..analysis.fields import TanhLayer, frozen_layers
from ..analysis.lipschitz import certified_lipschitz
from ..analysis.propagation import propagation_run
from ..analysis.rounding import RoundingModel, elementary_violations, local_errors
from ..laws import random_rotation
from ..stack import GatedResidualStack, get_schedule
from ..stats import depth_trend_metrics, mean_se
from . import CheckConfig
from .claim import Measurement
from .problems import EXPANSIVE_SLOPE, propagation_depths, smooth_problem
from .report import depth_axes, depth_trend_words
from .rules import BOUNDED_RATIO, Rule

CLAIM = "C5"
ID = "error-propagation"
MIN_DEPTH = 32  # its experiments compare depths 16, 32, ..., --depth (propagation_depths)
TITLE = "Error propagation: the discrete Gronwall bound holds; gated amplification stays bounded"
THEORY = "0 violations, ratio in [1/2, 2], plain rate > 0"
#: A scheduling hint: serial seconds at --depth 256 (``workers.cost`` says how it is measured).
COST = 2.1

#: Standard errors by which the ratio and the growth rate must clear their bands.
SE_BAND = 3.0
FINITE_DELTA, INJECTED = 1e-2, 1e-3
LOW_PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: "Not vacuous": where the bound is attainable, measured / bound must be at least this.
TIGHT_RATIO_FLOOR = 0.9
#: Finite-difference step of the Lipschitz lower estimate, and the relative slack it needs
#: (its error is O(step^2) times the third derivative of F, far below this).
FD_STEP, FD_SLACK = 1e-5, 1e-6

RULES = [Rule("bound_violations", (0, 0)),
         Rule("rounding_model_violations", (0, 0)),
         Rule("amplification_ratio_gated", BOUNDED_RATIO, margin=SE_BAND),
         Rule("growth_rate_plain", (0.0, None), margin=SE_BAND),
         Rule("lowp_bound_ratio", (0.0, 1.0)),
         Rule("tight_bound_ratio", (None, 1.0)),
         Rule("tight_bound_ratio_final", (TIGHT_RATIO_FLOOR, 1.0)),
         Rule("lipschitz_certified_over_estimate", (1.0 - FD_SLACK, None))]


class Problem:
    """The residual function, gates and initial points of the check, and stacks built on them."""

    def __init__(self, config: CheckConfig):
        p = smooth_problem(config, stream=5, scale=1.0, slope=EXPANSIVE_SLOPE)
        self.field, self.gain, self.bias, self.generator = p.field, p.gain, p.bias, p.generator
        self.dim, self.batch = p.dim, p.z0.shape[0]
        self.device, self.dtype = config.device, config.dtype
        self.direction = self.unit_vectors(self.batch)
        self.z0 = p.z0.to(self.device)

    def unit_vectors(self, *shape) -> torch.Tensor:
        v = torch.randn(*shape, self.dim, generator=self.generator, dtype=torch.float64)
        return (v / v.norm(dim=-1, keepdim=True)).to(self.device)

    def stack(self, depth: int, schedule: str, dtype: torch.dtype = torch.float64):
        """The exact (float64) depth-L stack, or its cast to ``dtype``."""
        times = torch.arange(depth, dtype=torch.float64) / depth
        stack = GatedResidualStack(frozen_layers(self.field, times), depth, schedule=schedule,
                                   gain=self.gain, bias=self.bias,
                                   dtype=torch.float64)
        return stack.to(device=self.device, dtype=dtype)


def tight_experiment(problem: Problem, depth: int) -> dict:
    """Where the Gronwall bound is attained, twice.  F(z) = 0.5 z + tanh(S z) with S symmetric
    positive semi-definite, z_0 = 0 (a fixed point, beta = 0), Euler gates alpha_i = h a and
    delta_0 = 1e-6 v, so that to first order delta_{i+1} = (I + h diag(a) (0.5 I + S)) delta_i:

    * ``channels``: S = diag(lambda), lambda_c in [0, 2] ascending, per-channel gains
      a_c = 1 + 0.5 c / (d - 1) (largest in the channel of the largest lambda), v = e_d: the
      growth factor 1 + h a_d (0.5 + lambda_d) is the bound's 1 + h max|a| (0.5 + ||S||_2);
    * ``rotated``: S = Q diag(lambda) Q^T (Q Haar-random), a = 1, v = Q e_d (the top
      eigenvector): the growth factor 1 + h (0.5 + lambda_d) is again the bound's.

    So measured / bound = 1 - O(delta_0^2) in both: an underestimated Lipschitz constant or gain
    violates it; a loose one (a norm that is not the spectral norm, a gain too large) falls below
    ``TIGHT_RATIO_FLOOR``."""
    g, d = problem.generator, problem.dim
    lam = 2.0 * torch.rand(d, generator=g, dtype=torch.float64).sort().values
    gain = 1.0 + 0.5 * torch.arange(d, dtype=torch.float64) / (d - 1)
    Q = random_rotation(d, generator=g)
    cases = {"channels": (torch.diag(lam), gain, torch.eye(d, dtype=torch.float64)[-1]),
             "rotated": ((Q * lam) @ Q.T, torch.ones(d, dtype=torch.float64), Q[:, -1])}
    ratio_max, ratio_final, violations = 0.0, math.inf, 0
    for S, a, v in cases.values():
        layer = TanhLayer(S, torch.zeros(d, dtype=torch.float64), EXPANSIVE_SLOPE)
        stack = GatedResidualStack(layer, depth, schedule="euler", gain=lambda t, a=a: a.to(t),
                                   dtype=torch.float64).to(device=problem.device)
        z0 = torch.zeros(1, d, dtype=torch.float64, device=problem.device)
        run = propagation_run(stack, z0, delta0=1e-6 * v.to(z0)[None])
        ratio = run.measured[1:] / run.bound[1:]
        ratio_max = max(ratio_max, float(ratio.max()))
        ratio_final = min(ratio_final, float(ratio[-1].min()))
        violations += run.violations
    return {"ratio_max": ratio_max, "ratio_final": ratio_final, "violations": violations}


def lipschitz_lower_estimates(problem: Problem, depth: int) -> float:
    """min over the layers of the stack at ``depth`` of certified Lip F_i / estimate, the
    estimate (a lower bound on Lip F_i, independent of lipschitz.py) being the spectral norm of
    F_i's Jacobian by central finite differences at the point where the tanh is steepest
    (W_i x = -c_i, so tanh' = 1 there) and at four initial points."""
    layers = frozen_layers(problem.field, torch.arange(depth, dtype=torch.float64) / depth)
    certified = torch.tensor([b.value for layer in layers
                              for b in certified_lipschitz(layer, [0.0])], dtype=torch.float64)
    W = torch.stack([layer.W.detach() for layer in layers])
    c = torch.stack([layer.c.detach() for layer in layers])
    steepest = torch.linalg.solve(W, -c.unsqueeze(-1)).squeeze(-1)  # (L, d)
    points = torch.cat([steepest.unsqueeze(1),
                        problem.z0.cpu()[None, :4].expand(depth, -1, -1)], dim=1)  # (L, P, d)
    step = FD_STEP * torch.eye(problem.dim, dtype=torch.float64)
    estimates = torch.zeros(depth, dtype=torch.float64)
    with torch.no_grad():
        for i, layer in enumerate(layers):
            x = points[i].unsqueeze(1)  # (P, 1, d)
            jac_t = (layer(x + step) - layer(x - step)) / (2 * FD_STEP)  # (P, d, d): J^T
            estimates[i] = torch.linalg.matrix_norm(jac_t, ord=2).max()
    return float((certified / estimates).min())


def amplification_experiment(problem: Problem, schedule: str, depths: list[int]) -> dict:
    """Amplification |delta_L| / |delta_0| per depth and sample, and Gronwall-bound violations."""
    delta = 1e-6 if problem.dtype == torch.float64 else 1e-2
    amps, bounds, violations = [], [], 0
    for L in depths:
        stack = problem.stack(L, schedule)
        work = problem.stack(L, schedule, problem.dtype) if problem.dtype != torch.float64 else None
        small = propagation_run(stack, problem.z0, delta0=delta * problem.direction,
                                perturbed_stack=work, reference_stack=work)
        errors = INJECTED * problem.unit_vectors(L, problem.batch)
        injected = propagation_run(stack, problem.z0, delta0=FINITE_DELTA * problem.direction,
                                   errors=errors, perturbed_stack=work, reference_stack=work)
        amp = small.amplification
        amps.append(torch.where(small.finite, amp, torch.inf).cpu().numpy())
        bounds.append(float((small.bound[-1] / small.delta0).amax()))
        violations += small.violations + injected.violations
    return {"amp": np.array(amps), "bound": np.array(bounds), "violations": violations}


def lowp_experiment(problem: Problem, schedule: str, depths: list[int], dtype) -> dict:
    """Final error of a forward pass in ``dtype`` against the float64 run, with its bound."""
    errors, bounds, violations, local_violations, overflow = [], [], 0, 0, None
    for L in depths:
        stack = problem.stack(L, schedule)
        run = propagation_run(stack, problem.z0, perturbed_stack=problem.stack(L, schedule, dtype),
                              reference_stack=stack)
        violations += run.violations
        if not bool(run.finite.all()) and overflow is None:
            overflow = L
        errors.append(torch.where(run.finite, run.measured[-1], torch.nan).cpu().numpy())
        bounds.append(torch.where(run.finite, run.bound[-1], torch.nan).cpu().numpy())
        if L == depths[-1]:  # the rounding model itself, unit by unit, on the deepest run
            measured = local_errors(stack, run.perturbed_states)
            local_violations += int(((measured > run.local_bounds).any(dim=0)
                                     & run.finite).sum())
    return {"error": np.array(errors), "bound": np.array(bounds), "violations": violations,
            "local_violations": local_violations, "overflow": overflow}


def rounding_model_violations(device) -> int:
    """bfloat16 and float16 inputs where tanh breaks the accuracy the rounding model assumes
    (exhaustive over each type's finite values)."""
    return sum(elementary_violations(torch.tanh, RoundingModel.of(dtype), device)
               for dtype in LOW_PRECISIONS.values())


def amplification_metrics(amp: dict, schedule: str, depths) -> dict[str, float]:
    """Per gate schedule (the configured one as ``gated``, ``inv_sqrt``, ``plain``): the mean
    amplification at --depth, its ratio to depth 16 and its growth rate per layer (each with its
    standard error), and the certified bound at --depth."""
    metrics = {}
    for g, key in ((schedule, "gated"), ("inv-sqrt", "inv_sqrt"), ("plain", "plain")):
        metrics.update(depth_trend_metrics(depths, amp[g]["amp"], value=f"amplification_{key}",
                                           ratio=f"amplification_ratio_{key}",
                                           rate=f"growth_rate_{key}"))
        metrics[f"amplification_bound_{key}"] = amp[g]["bound"][-1]
    return metrics


def lowp_metrics(lowp: dict, schedule: str) -> dict[str, float]:
    """Per low-precision type and gate schedule (``bf16``, ``fp16``; ``_plain`` for plain
    residuals): the mean error at --depth with its standard error, the mean bound, the depth of
    the first overflow (NaN: none); and ``lowp_bound_ratio``, the largest measured / bound of the
    configured gates at --depth (NaN, a FAIL, where a run overflowed)."""
    metrics, ratios = {}, []
    for (g, name), v in lowp.items():
        key = f"{name}" if g == schedule else f"{name}_plain"
        err, se = mean_se(v["error"][-1])
        metrics[f"lowp_error_{key}"], metrics[f"lowp_error_{key}_se"] = err, se
        metrics[f"lowp_bound_{key}"] = float(_nanmean(v["bound"][-1]))
        metrics[f"lowp_overflow_depth_{key}"] = v["overflow"] or math.nan
        if g == schedule:
            ratios.append(float(np.max(v["error"][-1] / v["bound"][-1])))
    metrics["lowp_bound_ratio"] = float(np.max(ratios))
    return metrics


def measure(config: CheckConfig) -> Measurement:
    problem = Problem(config)
    depths = propagation_depths(config.ladder[-1])
    schedule = get_schedule(config.schedule).name
    with torch.no_grad():
        tanh_violations = rounding_model_violations(config.device)
        amp = {g: amplification_experiment(problem, g, depths)
               for g in dict.fromkeys([schedule, "inv-sqrt", "plain"])}
        lowp = {(g, name): lowp_experiment(problem, g, depths, dt)
                for g in dict.fromkeys([schedule, "plain"]) for name, dt in LOW_PRECISIONS.items()}
        tight = tight_experiment(problem, depths[-1])
        lip_ratio = lipschitz_lower_estimates(problem, depths[-1])

    violations = sum(a["violations"] for a in amp.values()) + sum(
        v["violations"] for v in lowp.values()) + tight["violations"]
    rounding_violations = tanh_violations + sum(v["local_violations"] for v in lowp.values())
    metrics = {"bound_violations": violations, "rounding_model_violations": rounding_violations,
               **amplification_metrics(amp, schedule, depths), **lowp_metrics(lowp, schedule),
               "tight_bound_ratio": tight["ratio_max"],
               "tight_bound_ratio_final": tight["ratio_final"],
               "lipschitz_certified_over_estimate": lip_ratio}
    return Measurement(metrics, config, curves={"schedule": schedule, "depths": depths, "amp": amp,
                                                 "lowp": lowp})


def summary(measured: Measurement, verdict) -> str:
    m, depths, schedule = measured.metrics, measured.curves["depths"], measured.curves["schedule"]
    violations = m["bound_violations"]
    amplification = depth_trend_words(m["amplification_gated"], m["amplification_ratio_gated"],
                                      depths)
    return (
        f"Over depths {depths[0]}..{depths[-1]} the measured deviations "
        f"{'never exceed' if violations == 0 else f'exceed {violations} times'} the certified "
        f"Gronwall bound; with {schedule} gates the amplification {amplification}; plain "
        f"residuals grow at {m['growth_rate_plain']:.3f} per layer (inv-sqrt: ratio "
        f"{m['amplification_ratio_inv_sqrt']:.3g}); {lowp_sentence(m, '')}")


def headline(measured: Measurement) -> str:
    m = measured.metrics
    return (f"violations {m['bound_violations']}, ratio {m['amplification_ratio_gated']:.3g}, "
            f"plain rate {m['growth_rate_plain']:.2f}/layer, low-precision "
            f"err/bound <= {m['lowp_bound_ratio']:.1e}")


def figure(measured: Measurement):
    c = measured.curves
    return propagation_figure(c["schedule"], c["depths"], c["amp"], c["lowp"])


def lowp_sentence(m: dict, suffix: str) -> str:
    """What the bfloat16 and float16 forward passes did at --depth, in words."""
    parts = []
    for name, label in (("bf16", "bfloat16"), ("fp16", "float16")):
        key = name + suffix
        if math.isnan(m[f"lowp_overflow_depth_{key}"]):
            parts.append(f"{label} error {m[f'lowp_error_{key}']:.2g} (bound "
                         f"{m[f'lowp_bound_{key}']:.2g})")
        else:
            parts.append(f"{label} overflowed from L = {m[f'lowp_overflow_depth_{key}']:.0f}")
    return "forward in " + ", ".join(parts) + "."


def propagation_figure(schedule: str, depths, amp: dict, lowp: dict):
    """Left: mean amplification against depth with its certified bound; right: mean
    low-precision forward error against depth with its bound (plain runs stop at overflow)."""

    def draw(fig):
        fig.set_size_inches(7.5, 7.5)
        left, right = fig.subplots(2, 1)
        curves = {g: [float(np.mean(row)) for row in a["amp"]] for g, a in amp.items()}
        bounds = {g: a["bound"] for g, a in amp.items()}
        top = _top(list(bounds[schedule]) + curves.get("inv-sqrt", []))
        depth_axes(left, "amplification |delta_L| / |delta_0|", depths, curves,
                   ylabel="amplification (mean over samples)", bounds=bounds, ylim_top=top)
        curves = {f"{name} {g}": _nanmean(v["error"], axis=1) for (g, name), v in lowp.items()}
        bounds = {f"{name} {g}": _nanmean(v["bound"], axis=1) for (g, name), v in lowp.items()}
        top = _top([v for (g, name) in lowp if g == schedule for v in bounds[f"{name} {g}"]])
        depth_axes(right, "low precision vs float64", depths, curves,
                   ylabel="|z_L - z_L(float64)| (mean)", bounds=bounds, ylim_top=top)
        fig.suptitle(f"C5 error-propagation ({schedule} gates)")

    return draw


def _top(values) -> float | None:
    """Upper y limit: 10 x the largest finite value, at most 1e30 (None if there is none)."""
    finite = [float(v) for v in values if np.isfinite(v) and v > 0]
    return min(10 * max(finite), 1e30) if finite else None


def _nanmean(values, axis=None):
    """Mean over the finite entries; NaN, without a warning, where there are none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)
