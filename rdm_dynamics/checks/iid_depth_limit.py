"""C7 `iid-depth-limit`: with weights i.i.d. across depth and 1/sqrt(L) branches, the stack
converges in law to the SDE dz = sqrt(kappa(|z|)) dB, at weak order 1.

Setting (``analysis.iid_limit``): z in R^d, F_i(z) = tanh(W_i z + b_i), W_i ~ N(0, s_w^2 / d),
b_i ~ N(0, s_b^2) (:data:`LAW`), drawn afresh at every layer and for every sample, on small
Gaussian inputs z_0.  Three branch scalings, named by the gate schedules that give them:
``inv-sqrt`` alpha = 1/sqrt(L) (the claim), ``euler`` alpha = 1/L and ``plain`` alpha = 1 (the
controls).  The check runs all three itself, so ``--schedule`` does not change it.

Reference: the limit SDE solved by torchsde (Euler-Maruyama, diagonal noise sqrt(kappa(|z|)),
kappa by quadrature) with M and M/2 steps on the same Brownian path, M a multiple of --depth,
combined by Richardson extrapolation 2 f(x_M) - f(x_{M/2}) (Talay-Tubaro: the O(1/M) terms
cancel).  Every rung of the depth ladder and the reference share the inputs and the Brownian
paths: the weights of layer i are drawn conditioned on their standardised pre-activation being
that layer's Brownian increment (an exact draw of i.i.d. weights; see ``analysis.iid_limit``), so
each weak error is a mean of paired differences with a small variance.

Test functions (smooth): f_sq = |z|^2 / d, f_bump = exp(-c_b |z|^2 / d), f_cos = cos(c_f <u, z>),
u = (1, ..., 1) / sqrt(d).  The weak distance at depth L is D(L) = sum_f |E f(z_L) - E f(z(1))|
/ sd_f(z(1)).  Standard errors: of each mean, std / sqrt(n) (``stats.mean_se``); of fitted orders
and ratios, the delete-a-batch jackknife over samples (``stats.jackknife_se``: Monte-Carlo error,
beside the fit's residual error).

The statements gated (:data:`RULES`, each a statement of DESIGN.md C7): D falls at weak order 1
(fitted on the ladder, ``weak_order``; end to end, ``weak_order_span``; between the two deepest
rungs, ``weak_order_deep``; per test function, ``weak_order_<f>``) and D at --depth is resolved
above the Monte-Carlo floor (``weak_error``); with 1/L the stack collapses to the identity (the
RMS distance |z_L - z_0| falls at order 1/2, ``inv_depth_collapse_order``) and its distance to
the SDE does not vanish (``inv_depth_weak_order``); with alpha = 1 it diverges (E|z_L - z_0|^2
grows as a power of L, ``plain_growth_order``) and does not converge to the SDE
(``plain_weak_order``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from ..analysis.iid_limit import (
    IIDLimitSDE,
    TanhWeightLaw,
    brownian_increments,
    iid_stack_output,
    layer_noise,
    solve_limit_sde,
)
from ..stats import fit_order, jackknife_se, ladder_orders, mean_se
from . import CheckConfig
from .claim import Measurement
from .report import Series, order_axes
from .rules import Rule

CLAIM = "C7"
ID = "iid-depth-limit"
TITLE = ("i.i.d. weights, 1/sqrt(L) branches: the stack converges in law to "
         "dz = sqrt(kappa(|z|)) dB at weak order 1")
THEORY = "weak order 1 +/- 0.25; 1/L -> identity; alpha = 1 diverges"
#: C7 runs its three scalings itself; ``--schedule`` does not enter it.
USES_SCHEDULE = False
#: A scheduling hint: serial seconds at --depth 256 (``workers.cost`` says how it is measured).
COST = 2.0

#: d = 8 concentrates |z| (the log-volatility of |z|^2 is 2 s_w / sqrt(d)); s_w = 2 makes the
#: noise strongly state-dependent (kappa ~ s_w^2 |z|^2 / d near 0), hence a weak error well above
#: the Monte-Carlo floor; small inputs keep q = s_w^2 |z|^2 / d + s_b^2 mostly below 0.1, where
#: the per-layer law of tanh(u) is close to Gaussian and the coupled differences are small.
LAW = TanhWeightLaw(dim=8, weight_std=2.0, bias_std=0.003)
INPUT_SCALE = 0.03
COS_FREQUENCY = 10.0
BUMP_RATE = 100.0
#: --quick keeps the full sample count: with 800 samples the weak error at L = 256 was resolved
#: by fewer than 3 SE (and the end-to-end order's 1-SE band missed) for 2 of seeds 0..9, a false
#: failure; with 1200, seeds 0..19 all pass (their weak error 3.6 to 8.9 SE above 0).
SAMPLES, QUICK_SAMPLES = 1200, 1200
#: The controls need fewer samples: their failures are many standard errors wide.
CONTROL_SHARE = 4
#: Fine reference steps per layer of the deepest stack (--quick: 2); after the Richardson
#: extrapolation the reference's weak error is O(1/M^2).
REFERENCE_RATIO, QUICK_REFERENCE_RATIO = 4, 2
SCALINGS = {"inv-sqrt": "1/sqrt(L)", "euler": "1/L", "plain": "1"}
#: Each scaling's prefix in the metrics' names.
SCALING_KEYS = {"inv-sqrt": "", "euler": "inv_depth_", "plain": "plain_"}
FUNCTIONS = ("sq", "bump", "cos")

#: Weak order 1: a band wider than the strong orders' ``rules.FIRST_ORDER``, since the stack is
#: slightly pre-asymptotic on the coarse rungs (proofs/C7_iid-depth-limit.md).
WEAK_ORDER = (0.75, 1.25)
#: |z_L - z_0| of the 1/L stack falls at order 1/2.
COLLAPSE_ORDER = (0.4, 0.6)
#: "Does not converge to the SDE": a weak order at most this.
NOT_CONVERGING = (None, 0.25)
#: "Diverges": E|z_L - z_0|^2 grows at least as L^0.75.
GROWTH_ORDER = (0.75, None)

RULES = [
    Rule("weak_order", WEAK_ORDER, margin=1),
    Rule("weak_order_span", WEAK_ORDER, margin=1),
    Rule("weak_order_deep", WEAK_ORDER, margin=-2),
    *[Rule(f"weak_order_{f}", WEAK_ORDER, margin=-2) for f in FUNCTIONS],
    Rule("weak_error", (0.0, None), margin=3),
    Rule("inv_depth_collapse_order", COLLAPSE_ORDER, margin=1),
    Rule("inv_depth_weak_order", NOT_CONVERGING, margin=2),
    Rule("plain_growth_order", GROWTH_ORDER, margin=2),
    Rule("plain_weak_order", NOT_CONVERGING, margin=2),
]


def test_functions(z: torch.Tensor) -> torch.Tensor:
    """(n, 3): f_sq, f_bump, f_cos at the rows of z."""
    d = z.shape[-1]
    sq = (z * z).sum(-1) / d
    u = torch.full((d,), 1.0 / math.sqrt(d), dtype=z.dtype, device=z.device)
    return torch.stack([sq, torch.exp(-BUMP_RATE * sq), torch.cos(COS_FREQUENCY * (z @ u))], -1)


# ------------------------------------------------------------------------------------------------
# The statistics of the paired differences (the jackknife re-evaluates them on batch means)
# ------------------------------------------------------------------------------------------------

def weak_distances(means: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """D(L) per rung from the mean paired differences E f(z_L) - E f(z(1)), flattened
    (rungs x test functions): sum_f |mean| / sd_f."""
    return (np.abs(means.reshape(-1, len(FUNCTIONS))) / scale).sum(-1)


def deepest_weak_distance(means: np.ndarray, scale: np.ndarray) -> float:
    """D at the deepest rung."""
    return weak_distances(means, scale)[-1]


def weak_order(means: np.ndarray, ladder, scale: np.ndarray, which: int = 0) -> float:
    """An order of D on the ladder: ``stats.ladder_orders``' fitted (``which`` 0), end-to-end (1)
    or deepest local (2) order."""
    return ladder_orders(ladder, weak_distances(means, scale))[which]


def function_order(means: np.ndarray, ladder, j: int) -> float:
    """The fitted order of |E f_j(z_L) - E f_j(z(1))| on the ladder."""
    return fit_order(ladder, np.abs(means.reshape(-1, len(FUNCTIONS))[:, j])).order


def collapse_order(mean_sq_moves: np.ndarray, ladder) -> float:
    """The order at which the RMS displacement |z_L - z_0| falls, from E|z_L - z_0|^2 per rung."""
    return 0.5 * fit_order(ladder, mean_sq_moves).order


def growth_order(mean_sq_moves: np.ndarray, ladder) -> float:
    """The exponent of E|z_L - z_0|^2 in L."""
    return -fit_order(ladder, mean_sq_moves).order


# ------------------------------------------------------------------------------------------------
# The measurement
# ------------------------------------------------------------------------------------------------

@dataclass
class Reference:
    """The inputs, the Brownian paths and the limit SDE's test-function values they share."""

    z0: torch.Tensor  # (n, d)
    increments: torch.Tensor  # (steps, n, d): the fine Brownian increments
    steps: int
    values: np.ndarray  # (n, 3): Richardson-extrapolated test functions of z(1), per path
    correction: np.ndarray  # (n, 3): f(x_M) - f(x_{M/2}), the extrapolation's correction
    scale: np.ndarray  # (3,): sd_f of the reference values


def reference(config: CheckConfig, generator: torch.Generator, *, law: TanhWeightLaw,
              diffusion=None) -> Reference:
    """Inputs, Brownian paths, and the limit SDE of ``law`` (diffusion ``diffusion``, default
    sqrt(kappa)) solved on them with M and M/2 steps, Richardson-extrapolated."""
    n = QUICK_SAMPLES if config.quick else SAMPLES
    place = config.reference_placement
    z0 = (INPUT_SCALE / math.sqrt(LAW.dim)) * torch.randn(n, LAW.dim, generator=generator,
                                                          dtype=torch.float64)
    z0 = z0.to(**place)
    steps = (QUICK_REFERENCE_RATIO if config.quick else REFERENCE_RATIO) * config.ladder[-1]
    increments = brownian_increments(n, LAW.dim, steps, generator, **place)
    sde = IIDLimitSDE(law, diffusion=diffusion)
    fine = test_functions(solve_limit_sde(sde, z0, increments, steps))
    half = test_functions(solve_limit_sde(sde, z0, increments, steps // 2))
    values = (2 * fine - half).cpu().numpy()
    return Reference(z0, increments, steps, values, (fine - half).cpu().numpy(),
                     values.std(0, ddof=1))


def stack_runs(config: CheckConfig, ref: Reference, scaling: str, rows: int,
               generator: torch.Generator, weights: str) -> tuple[np.ndarray, np.ndarray]:
    """The stack with branch scaling ``scaling`` on the first ``rows`` inputs and paths, at every
    rung: the paired differences f(z_L) - f(z(1)) (rows, rungs, 3) and |z_L - z_0|^2
    (rows, rungs)."""
    per_rung, moved = [], []
    z0 = ref.z0[:rows]
    for L in config.ladder:
        xi = layer_noise(ref.increments[:, :rows], L)
        zL = iid_stack_output(LAW, z0, L, scaling, xi=xi, generator=generator, weights=weights)
        per_rung.append(test_functions(zL).cpu().numpy() - ref.values[:rows])
        moved.append(((zL - z0) ** 2).sum(-1).cpu().numpy())
    return np.stack(per_rung, 1), np.stack(moved, 1)


def weak_metrics(ladder, diffs: np.ndarray, scale: np.ndarray, key: str) -> dict[str, float]:
    """D at --depth and its fitted order, each with its jackknife standard error, for one
    scaling (metric prefix ``key``)."""
    flat = diffs.reshape(diffs.shape[0], -1)
    curve = weak_distances(flat.mean(0), scale)
    return {f"{key}weak_error": float(curve[-1]),
            f"{key}weak_error_se": jackknife_se(flat, partial(deepest_weak_distance,
                                                              scale=scale)),
            f"{key}weak_order": ladder_orders(ladder, curve)[0],
            f"{key}weak_order_se": jackknife_se(flat, partial(weak_order, ladder=ladder,
                                                              scale=scale))}


def claim_metrics(ladder, diffs: np.ndarray, ref: Reference) -> dict[str, float]:
    """Beyond :func:`weak_metrics`, for the 1/sqrt(L) stack: the fit's own standard error, D on
    the coarsest rung, the end-to-end and deepest orders, each test function's error and order,
    and the size of the reference's Richardson correction."""
    flat = diffs.reshape(diffs.shape[0], -1)
    curve = weak_distances(flat.mean(0), ref.scale)
    orders = ladder_orders(ladder, curve)
    metrics = {"weak_order_fit_se": fit_order(ladder, curve).stderr,
               "weak_error_coarse": float(curve[0])}
    for which, name in ((1, "weak_order_span"), (2, "weak_order_deep")):
        metrics[name] = orders[which]
        metrics[f"{name}_se"] = jackknife_se(flat, partial(weak_order, ladder=ladder,
                                                           scale=ref.scale, which=which))
    for j, f in enumerate(FUNCTIONS):
        metrics[f"weak_error_{f}"], metrics[f"weak_error_{f}_se"] = mean_se(diffs[:, -1, j])
        order_f = partial(function_order, ladder=ladder, j=j)
        metrics[f"weak_order_{f}"] = order_f(flat.mean(0))
        metrics[f"weak_order_{f}_se"] = jackknife_se(flat, order_f)
    metrics["reference_correction"] = float((np.abs(ref.correction.mean(0)) / ref.scale).sum())
    return metrics


def control_metrics(ladder, displacement: dict[str, np.ndarray]) -> dict[str, float]:
    """The collapse of the 1/L stack and the growth of the alpha = 1 stack, with jackknife
    standard errors."""
    metrics = {}
    for name, scaling, statistic in (("inv_depth_collapse_order", "euler", collapse_order),
                                     ("plain_growth_order", "plain", growth_order)):
        moved, order = displacement[scaling], partial(statistic, ladder=ladder)
        metrics[name], metrics[f"{name}_se"] = order(moved.mean(0)), jackknife_se(moved, order)
    return metrics


def measure(config: CheckConfig, *, reference_law: TanhWeightLaw | None = None,
            diffusion=None, weights: str = "iid") -> Measurement:
    """The weak distances of the three scalings to the limit SDE, with hooks for the negative
    controls: the reference SDE's kappa from ``reference_law`` (default: the stack's), its
    diffusion coefficient ``diffusion`` (a function of |z|^2; default sqrt(kappa)), and
    ``weights="shared"`` (one draw reused at every layer)."""
    g = config.generator(stream=7)
    ladder = list(config.ladder)
    ref = reference(config, g, law=reference_law or LAW, diffusion=diffusion)
    n = ref.z0.shape[0]
    diffs, displacement = {}, {}
    for scaling in SCALINGS:
        rows = n if scaling == "inv-sqrt" else n // CONTROL_SHARE
        diffs[scaling], displacement[scaling] = stack_runs(config, ref, scaling, rows, g,
                                                           weights)
    metrics = {**weak_metrics(ladder, diffs["inv-sqrt"], ref.scale, ""),
               **claim_metrics(ladder, diffs["inv-sqrt"], ref)}
    for scaling in ("euler", "plain"):
        metrics.update(weak_metrics(ladder, diffs[scaling], ref.scale, SCALING_KEYS[scaling]))
    metrics.update(control_metrics(ladder, displacement))
    metrics["samples"], metrics["reference_steps"] = n, ref.steps
    curves = {s: weak_distances(d.reshape(d.shape[0], -1).mean(0), ref.scale)
              for s, d in diffs.items()}
    return Measurement(metrics, config, curves={"distances": curves, "diffs": diffs,
                                                "scale": ref.scale})


def summary(measured: Measurement, verdict) -> str:
    m, ladder = measured.metrics, measured.config.ladder
    return (
        f"With weights i.i.d. across depth and 1/sqrt(L) branches the weak distance of z_L to the "
        f"torchsde solution of dz = sqrt(kappa(|z|)) dB falls at order {m['weak_order']:.3f} "
        f"+/- {m['weak_order_se']:.3f} over L = {ladder[0]}..{ladder[-1]} "
        f"({m['weak_error']:.2e} +/- {m['weak_error_se']:.1e} at L = {ladder[-1]}; end-to-end "
        f"order {m['weak_order_span']:.3f}); with 1/L the stack collapses to the identity "
        f"(|z_L - z_0| falls at order {m['inv_depth_collapse_order']:.3f}, distance to the SDE "
        f"order {m['inv_depth_weak_order']:.3f}), with alpha = 1 it diverges (E|z_L - z_0|^2 "
        f"grows as L^{m['plain_growth_order']:.2f}). C7 runs all three scalings itself, so "
        f"--schedule does not change it.")


def headline(measured: Measurement) -> str:
    m = measured.metrics
    return (f"weak order {m['weak_order']:.3f} +/- {m['weak_order_se']:.3f}; 1/L collapse "
            f"{m['inv_depth_collapse_order']:.2f}; plain growth {m['plain_growth_order']:.2f}")


def figure(measured: Measurement):
    """Left: the weak distance D(L) for the three scalings, with the slope -1 guide; right: each
    test function's |E f(z_L) - E f(z(1))| / sd_f for 1/sqrt(L), with 2-standard-error bars."""
    ladder, curves = list(measured.config.ladder), measured.curves["distances"]
    D, scale = measured.curves["diffs"]["inv-sqrt"], measured.curves["scale"]

    def draw(fig):
        left, right = fig.subplots(1, 2)
        order_axes(left, "weak distance to the limit SDE",
                   [Series(f"alpha = {label}", ladder, curves[s],
                           fit_order(ladder, curves[s]) if s == "inv-sqrt" else None)
                    for s, label in SCALINGS.items()],
                   reference_order=1.0, ylabel="sum_f |E f(z_L) - E f(z(1))| / sd_f")
        for j, f in enumerate(FUNCTIONS):
            means = np.abs(D[:, :, j].mean(0)) / scale[j]
            ses = D[:, :, j].std(0, ddof=1) / math.sqrt(D.shape[0]) / scale[j]
            right.errorbar(ladder, means, yerr=2 * ses, fmt="o-", capsize=3, label=f"f_{f}")
        right.set_xscale("log", base=2)
        right.set_yscale("log")
        right.set_xlabel("depth L")
        right.set_title("1/sqrt(L): each test function")
        right.grid(True, which="both", alpha=0.3)
        right.legend(fontsize=7)
        fig.suptitle("C7 iid-depth-limit (all three scalings; --schedule not used)")

    return draw
