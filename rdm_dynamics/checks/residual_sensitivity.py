"""C6 `residual-sensitivity`: backpropagation through the stack is the Euler adjoint ODE.

Claim: backpropagation through z_{i+1} = z_i + alpha_i F_i(z_i) + beta_i gives the adjoints
p_i = dl/dz_i by p_i = p_{i+1} (I + alpha_i dF_i/dz), one Euler step (backwards in depth) of the
adjoint ODE dp/dtau = -p d(a F + b)/dz; so gradients with respect to z_0 and theta converge to the
continuous adjoint gradients at O(1/L), the sensitivity |p_0| / |p_L| stays bounded in L with
ODE-consistent gates (and grows geometrically with plain residuals), and backpropagation keeps
O(L) memory where the adjoint method keeps O(1).

Setting: the residual F(z, tau) = 0.5 z + tanh(W(tau) z + c(tau)) with weights smooth in depth
(the Fourier coefficients W_k, c_k are the parameters theta), per-channel gate coefficients
a(tau) = 1 + 0.5 sin(2 pi tau + phase), b(tau) = 0.5 sin(2 pi tau + phase'), and the linear loss
l = sum_s <w_s, z_L,s> with unit vectors w_s (so p_L = w at every depth).

Reference: dl/dz0 and dl/dtheta of the ODE dz/dtau = a F + b by the continuous adjoint method,
torchdiffeq.odeint_adjoint with dopri5 at the reference tolerances (``solvers.REFERENCE_RTOL``,
``REFERENCE_ATOL``; :data:`QUICK_TOLERANCES` for --quick smoke runs), float64, forward and
adjoint.  Measured: the same gradients by backpropagation through the depth-L stack on the depth
ladder.

Metrics (gated by :data:`RULES`): ``grad_error`` (max of the relative errors of dl/dz0 and
dl/dtheta) at --depth and its order (fitted, end to end and between the two deepest rungs:
``rules.order_rules``); ``sensitivity_ratio_gated`` (mean over samples of |p_0| / |p_L| at
--depth over its value at depth 16); ``sensitivity_adjoint_gap``, the relative gap between that
mean sensitivity at --depth and the adjoint ODE's (odeint_adjoint); plain residuals' growth rate
of log |p_0| / |p_L| per layer (``sensitivity_rate_plain``: geometric growth for this expansive
F); inv-sqrt sensitivities and growth rates reported; memory: peak bytes saved for backward
(CUDA: peak allocation) by backpropagation through the stack and by odeint_adjoint with L Euler
steps, at the first depth of the ladder and at --depth, with their growth exponents
(``memory_exponent_backprop``: O(L), ``memory_exponent_adjoint``: O(1)).
"""

from __future__ import annotations

import copy
import math
from functools import partial

import numpy as np
import torch

from ..analysis.adjoint import adjoint_gradients, backprop_adjoints, linear_loss
from ..analysis.memory import peak_memory
from ..solvers import REFERENCE_ATOL, REFERENCE_RTOL
from ..stack import GatedResidualStack, get_schedule
from ..stats import depth_trend_metrics, fit_order, mean_se
from . import CheckConfig
from .claim import Measurement
from .problems import EXPANSIVE_SLOPE, propagation_depths, smooth_problem
from .report import Series, depth_axes, depth_trend_words, error_trend, order_axes
from .rules import BOUNDED_RATIO, FIRST_ORDER, Rule, order_metrics, order_rules

CLAIM = "C6"
ID = "residual-sensitivity"
MIN_DEPTH = 32  # its experiments compare depths 16, 32, ..., --depth (propagation_depths)
TITLE = "Residual-Sensitivity ODE: backprop through the stack converges to the adjoint at order 1"
THEORY = "order 1 +/- 0.15, ratio in [1/2, 2], memory O(L) vs O(1)"
#: A scheduling hint: serial seconds at --depth 256 (``workers.cost`` says how it is measured).
COST = 2.1

#: Memory growth exponents: O(L) for backpropagation, O(1) for the adjoint method.
MEMORY_BACKPROP_EXPONENT = (0.9, 1.1)
MEMORY_ADJOINT_EXPONENT = (-0.1, 0.1)
#: Standard errors by which the sensitivity ratio and the plain growth rate must clear their bands.
SE_BAND = 3.0
#: Relative gap allowed between the stack's mean sensitivity at --depth and the adjoint ODE's:
#: room for an O(1/L) Euler error.
SENSITIVITY_GAP_MAX = 0.05
#: odeint_adjoint tolerances of --quick runs: reference errors near 1e-8, far below the Euler
#: errors (> 1e-3) of the depths a quick run uses.
QUICK_TOLERANCES = (1e-8, 1e-10)

RULES = [*order_rules("order", FIRST_ORDER),
         Rule("sensitivity_ratio_gated", BOUNDED_RATIO, margin=SE_BAND),
         Rule("sensitivity_adjoint_gap", (0.0, SENSITIVITY_GAP_MAX)),
         Rule("sensitivity_rate_plain", (0.0, None), margin=SE_BAND),
         Rule("memory_exponent_backprop", MEMORY_BACKPROP_EXPONENT),
         Rule("memory_exponent_adjoint", MEMORY_ADJOINT_EXPONENT)]


class Problem:
    """The residual function, gates, initial points and loss of the check.

    The reference is always float64; the stacks run in ``config.dtype`` on ``config.device``."""

    def __init__(self, config: CheckConfig):
        p = smooth_problem(config, stream=6, scale=1.0, slope=EXPANSIVE_SLOPE)
        field, gain, bias, z0 = p.field, p.gain, p.bias, p.z0
        w = torch.randn(z0.shape, generator=p.generator, dtype=torch.float64)
        w = w / w.norm(dim=-1, keepdim=True)  # p_L = w, a unit vector per sample
        self.config = config
        self.exact = self._parts(field, gain, bias, z0, w, torch.float64)
        self.work = self._parts(field, gain, bias, z0, w, config.dtype)

    def _parts(self, field, gain, bias, z0, w, dtype) -> dict:
        to = {"dtype": dtype, "device": self.config.device}
        field = copy.deepcopy(field).to(**to)
        return {"field": field, "gain": copy.deepcopy(gain).to(**to),
                "bias": copy.deepcopy(bias).to(**to), "z0": z0.to(**to), "weights": w.to(**to),
                "loss": linear_loss(w.to(**to)), "params": [field.W, field.c]}

    def stack(self, depth: int, schedule: str, exact: bool = False) -> GatedResidualStack:
        p = self.exact if exact else self.work
        return GatedResidualStack(p["field"], depth, schedule=schedule, gain=p["gain"],
                                  bias=p["bias"], dtype=p["z0"].dtype, device=self.config.device)

    def backprop(self, depth: int, schedule: str, params: bool = True):
        p = self.work
        return backprop_adjoints(self.stack(depth, schedule), p["z0"], p["loss"],
                                 p["params"] if params else ())

    def reference(self):
        """(dl/dz0, [dl/dtheta]) of the limit ODE by odeint_adjoint (dopri5, float64, at the
        reference tolerances; ``--quick`` smoke runs at :data:`QUICK_TOLERANCES`)."""
        p = self.exact
        rtol, atol = QUICK_TOLERANCES if self.config.quick else (REFERENCE_RTOL, REFERENCE_ATOL)
        return adjoint_gradients(self.stack(1, "euler", exact=True).continuous_limit(), p["z0"],
                                 (0.0, 1.0), p["loss"], p["params"], rtol=rtol, atol=atol)

    def euler_adjoint(self, depth: int):
        """odeint_adjoint with ``depth`` Euler steps (in the working dtype): the O(1)-memory way
        to the gradients."""
        p = self.work
        return adjoint_gradients(self.stack(1, "euler").continuous_limit(), p["z0"], (0.0, 1.0),
                                 p["loss"], p["params"], method="euler",
                                 options={"step_size": 1.0 / depth})


def relative_error(grads, reference) -> float:
    """|g - g_ref| / |g_ref| over all entries of a list of tensors."""
    g = torch.cat([x.detach().flatten().to(torch.float64) for x in grads])
    r = torch.cat([x.detach().flatten().to(g.device, torch.float64) for x in reference])
    return float((g - r).norm() / r.norm())


def sensitivities(problem: Problem, schedule: str, depths) -> np.ndarray:
    """|p_0| / |p_L| per depth (rows) and sample (columns); inf where the stack overflowed."""
    rows = []
    for L in depths:
        s = problem.backprop(L, schedule, params=False).sensitivity
        rows.append(torch.where(torch.isfinite(s), s, torch.inf).detach().cpu().numpy())
    return np.array(rows)


def memory_exponent(depths, values) -> float:
    """Exponent k of memory ~ L^k between two depths (NaN if a value is not positive)."""
    (L0, L1), (m0, m1) = depths, values
    return math.log(m1 / m0) / math.log(L1 / L0) if m0 > 0 and m1 > 0 else math.nan


def gradient_errors(problem: Problem, schedule: str, ladder, ref_z0, ref_theta):
    """Per rung: the relative errors of dl/dz0 and of dl/dtheta by backpropagation through the
    stack against the odeint_adjoint reference, and the larger of the two."""
    z0_errors, theta_errors, errors = [], [], []
    for L in ladder:
        bp = problem.backprop(L, schedule)
        z0_errors.append(relative_error([bp.adjoints[0]], [ref_z0]))
        theta_errors.append(relative_error(bp.param_grads, ref_theta))
        errors.append(max(z0_errors[-1], theta_errors[-1]))
    return z0_errors, theta_errors, errors


def memory_use(problem: Problem, schedule: str, depths) -> tuple[dict[str, list[int]], str]:
    """Peak bytes saved for backward by backpropagation through the stack and by the Euler
    adjoint, at each of ``depths``, and how they were counted."""
    memory = {"backprop": [], "adjoint": []}
    method = ""
    for L in depths:
        bytes_bp, method = peak_memory(partial(problem.backprop, L, schedule),
                                       problem.config.device)
        bytes_adj, _ = peak_memory(partial(problem.euler_adjoint, L), problem.config.device)
        memory["backprop"].append(bytes_bp)
        memory["adjoint"].append(bytes_adj)
    return memory, method


def sensitivity_metrics(sens: dict, schedule: str, depths, continuous: float) -> dict[str, float]:
    """Per gate schedule (the configured one as ``gated``, ``inv_sqrt``, ``plain``): the mean
    sensitivity at --depth, its ratio to depth 16 and the growth rate of its log per layer (each
    with its standard error); and ``sensitivity_adjoint_gap``, the relative gap between the
    configured gates' mean sensitivity and the adjoint ODE's."""
    metrics = {}
    for g, key in ((schedule, "gated"), ("inv-sqrt", "inv_sqrt"), ("plain", "plain")):
        metrics.update(depth_trend_metrics(depths, sens[g], value=f"sensitivity_{key}",
                                           ratio=f"sensitivity_ratio_{key}",
                                           rate=f"sensitivity_rate_{key}"))
    gap = abs(metrics["sensitivity_gated"] - continuous) / continuous
    metrics["sensitivity_adjoint_gap"] = gap if math.isfinite(gap) else math.inf
    return metrics


def memory_metrics(memory: dict[str, list[int]], depths) -> dict[str, float]:
    """Bytes at the first depth and at --depth, and the growth exponent, per method."""
    metrics = {}
    for kind, values in memory.items():
        metrics[f"memory_{kind}_bytes_L{depths[0]}"] = values[0]
        metrics[f"memory_{kind}_bytes"] = values[1]
        metrics[f"memory_exponent_{kind}"] = memory_exponent(depths, values)
    return metrics


def measure(config: CheckConfig) -> Measurement:
    problem = Problem(config)
    schedule = get_schedule(config.schedule).name
    ladder, depth = config.ladder, config.ladder[-1]
    ref_z0, ref_theta = problem.reference()
    z0_errors, theta_errors, errors = gradient_errors(problem, schedule, ladder, ref_z0, ref_theta)
    depths = propagation_depths(depth)
    sens = {g: sensitivities(problem, g, depths)
            for g in dict.fromkeys([schedule, "inv-sqrt", "plain"])}
    continuous, continuous_se = mean_se(
        (ref_z0.norm(dim=-1) / problem.exact["weights"].norm(dim=-1)).detach().cpu().numpy())
    memory_depths = (ladder[0], depth)
    memory, method = memory_use(problem, schedule, memory_depths)
    euler_adjoint_error = relative_error(list(problem.euler_adjoint(depth)[1]), ref_theta)

    metrics = {**order_metrics("order", ladder, errors),
               "order_fit_se": fit_order(ladder, errors).stderr, "grad_error": errors[-1],
               "grad_error_z0": z0_errors[-1], "grad_error_theta": theta_errors[-1],
               "euler_adjoint_grad_error_theta": euler_adjoint_error,
               "sensitivity_continuous": continuous,
               "sensitivity_continuous_se": continuous_se,
               **sensitivity_metrics(sens, schedule, depths, continuous),
               **memory_metrics(memory, memory_depths)}
    return Measurement(metrics, config, curves={
        "schedule": schedule, "z0_errors": z0_errors, "theta_errors": theta_errors,
        "depths": depths, "sensitivities": sens, "memory_method": method})


def summary(measured: Measurement, verdict) -> str:
    m, ladder, c = measured.metrics, measured.config.ladder, measured.curves
    depth = ladder[-1]
    sensitivity = depth_trend_words(m["sensitivity_gated"], m["sensitivity_ratio_gated"],
                                    c["depths"])
    return (
        f"With {c['schedule']} gates the error of backpropagation through the stack against the "
        f"odeint_adjoint gradients {error_trend(m['order'])} (order {m['order']:.3f}) over L = "
        f"{ladder[0]}..{depth} (error {m['grad_error']:.2e} at L = {depth}); the sensitivity "
        f"|p_0|/|p_L| {sensitivity} (adjoint ODE {m['sensitivity_continuous']:.3g}), while "
        f"with plain residuals log |p_0|/|p_L| grows by "
        f"{m['sensitivity_rate_plain']:.3f} per layer; memory ({c['memory_method']}) "
        f"{m['memory_backprop_bytes'] / 2**20:.2f} MiB for backprop vs "
        f"{m['memory_adjoint_bytes'] / 2**20:.3f} MiB for the Euler adjoint at L = {depth} "
        f"(growth exponents {m['memory_exponent_backprop']:.2f} and "
        f"{m['memory_exponent_adjoint']:.2f}).")


def headline(measured: Measurement) -> str:
    m = measured.metrics
    return (f"order {m['order']:.3f}, error {m['grad_error']:.1e}; sensitivity ratio "
            f"{m['sensitivity_ratio_gated']:.3g}; memory exp "
            f"{m['memory_exponent_backprop']:.2f} vs {m['memory_exponent_adjoint']:.2f}")


def figure(measured: Measurement):
    c = measured.curves
    return sensitivity_figure(c["schedule"], measured.config.ladder, c["z0_errors"],
                              c["theta_errors"], c["depths"], c["sensitivities"],
                              measured.metrics["sensitivity_continuous"])


def sensitivity_figure(schedule, ladder, z0_errors, theta_errors, depths, sens, continuous):
    """Left: gradient error against depth (log-log, fitted order); right: sensitivity
    |p_0| / |p_L| against depth for each schedule, with the adjoint ODE's value."""

    def draw(fig):
        left, right = fig.subplots(1, 2)
        order_axes(left, "gradient error vs odeint_adjoint",
                   [Series("dl/dtheta", ladder, theta_errors, fit_order(ladder, theta_errors)),
                    Series("dl/dz0", ladder, z0_errors, fit_order(ladder, z0_errors))],
                   ylabel="relative error")
        curves = {g: [float(np.mean(row)) for row in s] for g, s in sens.items()}
        finite = [v for c in curves.values() for v in c if np.isfinite(v)]
        depth_axes(right, "sensitivity |p_0| / |p_L|", depths, curves,
                   ylabel="mean over samples",
                   ylim_top=min(max(finite) * 10, 1e12) if finite else None)
        if finite:
            right.set_ylim(bottom=0.5 * min(finite))
        right.axhline(continuous, color="k", ls=":", lw=1, label="adjoint ODE")
        right.legend(fontsize=7)
        fig.suptitle(f"C6 residual-sensitivity ({schedule} gates)")

    return draw
