"""C7 `iid-depth-limit`: with weights i.i.d. across depth and 1/sqrt(L) branches, the stack
converges in law to the SDE dz = sqrt(kappa(|z|)) dB, at weak order 1.

Setting (``analysis.iid_limit``): z in R^8, F_i(z) = tanh(W_i z + b_i), W_i ~ N(0, s_w^2 / d), b_i
~ N(0, s_b^2), s_w = 2, s_b = 0.003, drawn afresh at every layer and for every sample; 1200 inputs
z_0 ~ N(0, (0.03^2 / d) I) (800 with --quick). Three branch scalings, named by the gate schedules
that give them: ``inv-sqrt`` alpha = 1/sqrt(L) (the claim), ``euler`` alpha = 1/L and ``plain``
alpha = 1 (the controls). The check runs all three itself, so ``--gating`` does not change it.

Reference: the limit SDE solved by torchsde (Euler-Maruyama, diagonal noise sqrt(kappa(|z|)),
kappa by quadrature) with M = 4 x depth and M/2 steps on the same Brownian path, combined by
Richardson extrapolation 2 f(x_M) - f(x_{M/2}) (Talay-Tubaro: the O(1/M) terms cancel).  Every
rung of the depth ladder and the reference share the inputs and the Brownian paths: the weights of
layer i are drawn conditioned on their standardised pre-activation being that layer's Brownian
increment (an exact draw of i.i.d. weights; see ``analysis.iid_limit``), so each weak error is a
mean of paired differences with a small variance.

Test functions (smooth): f_sq = |z|^2 / d, f_bump = exp(-100 |z|^2 / d), f_cos = cos(10 <u, z>),
u = (1, ..., 1) / sqrt(d).  The weak distance at depth L is D(L) = sum_f |E f(z_L) - E f(z(1))|
/ sd_f(z(1)).  Standard errors: of each mean, std / sqrt(n) (``stats.mean_se``); of fitted orders
and ratios, the delete-a-batch jackknife over samples (Monte-Carlo error, beside the fit's
residual error).

Pass rules (each a statement of DESIGN.md C7):
* ``weak_order`` (fitted on the ladder) in 1 +/- 0.25 beyond one standard error;
* ``weak_order_ends`` (log(D(L_min) / D(L_max)) / log(L_max / L_min): the deepest error below
  the coarsest by the factor the order implies) in 1 +/- 0.25 beyond one standard error;
* ``weak_order_deep`` (between the two deepest rungs) and each ``weak_order_<f>`` in 1 +/- 0.25
  unless rejected at 2 standard errors;
* ``weak_error`` = D(L_max) resolved: at least 3 standard errors above 0 (above the MC floor);
* 1/L collapses to the identity: ``inv_depth_collapse_order`` (order of the RMS distance
  |z_L - z_0|) in 1/2 +/- 0.1 beyond one standard error, and ``inv_depth_weak_order`` <= 0.25
  beyond 2 standard errors (its distance to the SDE does not vanish);
* alpha = 1 diverges: ``plain_growth_order`` (exponent of E|z_L - z_0|^2 in L) >= 0.75 beyond 2
  standard errors, and ``plain_weak_order`` <= 0.25 beyond 2 standard errors.
"""

from __future__ import annotations

import math

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
from ..stats import fit_order, jackknife_se, mean_se, two_point_order
from . import CheckConfig
from .report import CheckResult, Series, order_axes
from .rules import Rule, judge

CLAIM = "C7"
ID = "iid-depth-limit"
TITLE = ("i.i.d. weights, 1/sqrt(L) branches: the stack converges in law to "
         "dz = sqrt(kappa(|z|)) dB at weak order 1")
#: C7 runs its three scalings itself; ``--gating`` does not enter it.
USES_GATING = False
#: Serial seconds at --depth 256 on one idle core (measured 2026-12-01): a scheduling hint.
COST = 2.0

#: d = 8 concentrates |z| (the log-volatility of |z|^2 is 2 s_w / sqrt(d)); s_w = 2 makes the
#: noise strongly state-dependent (kappa ~ s_w^2 |z|^2 / d near 0), hence a weak error well above
#: the Monte-Carlo floor; small inputs keep q = s_w^2 |z|^2 / d + s_b^2 mostly below 0.1, where
#: the per-layer law of tanh(u) is close to Gaussian and the coupled differences are small.
LAW = TanhWeightLaw(dim=8, weight_std=2.0, bias_std=0.003)
INPUT_SCALE = 0.03
COS_FREQUENCY = 10.0
BUMP_RATE = 100.0
SAMPLES, QUICK_SAMPLES = 1200, 800
#: The controls need fewer samples: their failures are many standard errors wide.
CONTROL_SHARE = 4
#: Fine reference steps per layer of the deepest stack (--quick: 2); after the Richardson
#: extrapolation the reference's weak error is O(1/M^2).
REFERENCE_RATIO, QUICK_REFERENCE_RATIO = 4, 2
SCALINGS = {"inv-sqrt": "1/sqrt(L)", "euler": "1/L", "plain": "1"}
FUNCTIONS = ("sq", "bump", "cos")

ORDER_RANGE = (0.75, 1.25)
COLLAPSE_RANGE = (0.4, 0.6)
NOT_CONVERGING = (None, 0.25)
GROWTH_RANGE = (0.75, None)


def test_functions(z: torch.Tensor) -> torch.Tensor:
    """(n, 3): f_sq, f_bump, f_cos at the rows of z."""
    d = z.shape[-1]
    sq = (z * z).sum(-1) / d
    u = torch.full((d,), 1.0 / math.sqrt(d), dtype=z.dtype, device=z.device)
    return torch.stack([sq, torch.exp(-BUMP_RATE * sq), torch.cos(COS_FREQUENCY * (z @ u))], -1)


def _orders(depths, errors) -> tuple[float, float, float]:
    """(fitted order, two-point order of the ends, two-point order of the two deepest rungs)."""
    return (fit_order(depths, errors).order, two_point_order(depths, errors),
            two_point_order(depths[-2:], errors[-2:]))


def measure(config: CheckConfig, *, reference_law: TanhWeightLaw | None = None,
            diffusion=None, weights: str = "iid") -> CheckResult:
    """The check, with hooks for its negative controls: the reference SDE's kappa from
    ``reference_law`` (default: the stack's), its diffusion coefficient ``diffusion`` (a function
    of |z|^2; default sqrt(kappa)), and ``weights="shared"`` (one draw reused at every layer)."""
    g = config.generator(stream=7)
    law, ladder = LAW, list(config.ladder)
    n = QUICK_SAMPLES if config.quick else SAMPLES
    n_control = n // CONTROL_SHARE
    depth = ladder[-1]
    place = config.reference_placement
    z0 = (INPUT_SCALE / math.sqrt(law.dim)) * torch.randn(n, law.dim, generator=g,
                                                          dtype=torch.float64)
    z0 = z0.to(**place)
    steps = (QUICK_REFERENCE_RATIO if config.quick else REFERENCE_RATIO) * depth
    increments = brownian_increments(n, law.dim, steps, g, **place)

    sde = IIDLimitSDE(reference_law or law, diffusion=diffusion)
    fine = test_functions(solve_limit_sde(sde, z0, increments, steps))
    half = test_functions(solve_limit_sde(sde, z0, increments, steps // 2))
    reference = (2 * fine - half).cpu().numpy()  # (n, 3), Richardson-extrapolated per path
    scale = reference.std(0, ddof=1)

    diffs, displacement = {}, {}
    for scaling in SCALINGS:
        rows = n if scaling == "inv-sqrt" else n_control
        per_rung, moved = [], []
        for L in ladder:
            xi = layer_noise(increments[:, :rows], L)
            zL = iid_stack_output(law, z0[:rows], L, scaling, xi=xi, generator=g,
                                  weights=weights)
            per_rung.append(test_functions(zL).cpu().numpy() - reference[:rows])
            moved.append(((zL - z0[:rows]) ** 2).sum(-1).cpu().numpy())
        diffs[scaling] = np.stack(per_rung, 1)  # (rows, rungs, 3)
        displacement[scaling] = np.stack(moved, 1)  # (rows, rungs)

    def distance(means: np.ndarray) -> np.ndarray:  # (rungs, 3) -> (rungs,)
        return (np.abs(means) / scale).sum(-1)

    metrics: dict[str, float] = {}
    curves = {}
    for scaling, key in (("inv-sqrt", ""), ("euler", "inv_depth_"), ("plain", "plain_")):
        D = diffs[scaling]
        flat = D.reshape(D.shape[0], -1)

        def dist(m, D=D):
            return distance(m.reshape(D.shape[1:]))

        curve = dist(flat.mean(0))
        curves[scaling] = curve
        orders = _orders(ladder, curve)
        metrics[f"{key}weak_error"] = float(curve[-1])
        metrics[f"{key}weak_error_se"] = jackknife_se(flat, lambda m: dist(m)[-1])
        metrics[f"{key}weak_order"] = orders[0]
        metrics[f"{key}weak_order_se"] = jackknife_se(flat, lambda m: _orders(ladder, dist(m))[0])
        if scaling == "inv-sqrt":
            metrics["weak_order_fit_se"] = fit_order(ladder, curve).stderr
            metrics["weak_error_coarse"] = float(curve[0])
            for i, name in ((1, "weak_order_ends"), (2, "weak_order_deep")):
                metrics[name] = orders[i]
                metrics[f"{name}_se"] = jackknife_se(
                    flat, lambda m, i=i: _orders(ladder, dist(m))[i])
            for j, f in enumerate(FUNCTIONS):
                metrics[f"weak_error_{f}"], metrics[f"weak_error_{f}_se"] = mean_se(D[:, -1, j])
                def order_f(m, j=j, shape=D.shape[1:]):
                    return fit_order(ladder, np.abs(m.reshape(shape)[:, j])).order

                metrics[f"weak_order_{f}"] = order_f(flat.mean(0))
                metrics[f"weak_order_{f}_se"] = jackknife_se(flat, order_f)
            correction = (fine - half).cpu().numpy().mean(0)
            metrics["reference_correction"] = float((np.abs(correction) / scale).sum())

    moved = displacement["euler"]
    half_order = lambda m: 0.5 * fit_order(ladder, m).order  # noqa: E731
    metrics["inv_depth_collapse_order"] = half_order(moved.mean(0))
    metrics["inv_depth_collapse_order_se"] = jackknife_se(moved, half_order)
    grown = displacement["plain"]
    growth = lambda m: -fit_order(ladder, m).order  # noqa: E731
    metrics["plain_growth_order"] = growth(grown.mean(0))
    metrics["plain_growth_order_se"] = jackknife_se(grown, growth)
    metrics["samples"], metrics["reference_steps"] = n, steps

    verdict = judge(metrics, [
        Rule("weak_order", ORDER_RANGE, margin=1),
        Rule("weak_order_ends", ORDER_RANGE, margin=1),
        Rule("weak_order_deep", ORDER_RANGE, margin=-2),
        *[Rule(f"weak_order_{f}", ORDER_RANGE, margin=-2) for f in FUNCTIONS],
        Rule("weak_error", (0.0, None), margin=3),
        Rule("inv_depth_collapse_order", COLLAPSE_RANGE, margin=1),
        Rule("inv_depth_weak_order", NOT_CONVERGING, margin=2),
        Rule("plain_growth_order", GROWTH_RANGE, margin=2),
        Rule("plain_weak_order", NOT_CONVERGING, margin=2),
    ])
    m = metrics
    summary = (
        f"With weights i.i.d. across depth and 1/sqrt(L) branches the weak distance of z_L to the "
        f"torchsde solution of dz = sqrt(kappa(|z|)) dB falls at order {m['weak_order']:.3f} "
        f"+/- {m['weak_order_se']:.3f} over L = {ladder[0]}..{depth} ({m['weak_error']:.2e} "
        f"+/- {m['weak_error_se']:.1e} at L = {depth}; end-to-end order "
        f"{m['weak_order_ends']:.3f}); with 1/L the stack collapses to the identity (|z_L - z_0| "
        f"falls at order {m['inv_depth_collapse_order']:.3f}, distance to the SDE order "
        f"{m['inv_depth_weak_order']:.3f}), with alpha = 1 it diverges (E|z_L - z_0|^2 grows as "
        f"L^{m['plain_growth_order']:.2f}). C7 runs all three scalings itself, so --gating does "
        f"not change it.")
    return CheckResult(
        id=ID, claim=CLAIM, metrics=metrics, verdict=verdict, summary=summary,
        figure=weak_error_figure(ladder, curves, diffs, scale),
        measured_text=(f"weak order {m['weak_order']:.3f} +/- {m['weak_order_se']:.3f}; 1/L "
                       f"collapse {m['inv_depth_collapse_order']:.2f}; plain growth "
                       f"{m['plain_growth_order']:.2f}"),
        theory_text="weak order 1 +/- 0.25; 1/L -> identity; alpha = 1 diverges")


def run(config: CheckConfig) -> CheckResult:
    return measure(config)


def weak_error_figure(ladder, curves, diffs, scale):
    """Left: the weak distance D(L) for the three scalings, with the slope -1 guide; right: each
    test function's |E f(z_L) - E f(z(1))| / sd_f for 1/sqrt(L), with 2-standard-error bars."""

    def draw(fig):
        left, right = fig.subplots(1, 2)
        order_axes(left, "weak distance to the limit SDE",
                   [Series(f"alpha = {label}", ladder, curves[s],
                           fit_order(ladder, curves[s]) if s == "inv-sqrt" else None)
                    for s, label in SCALINGS.items()],
                   reference_order=1.0, ylabel="sum_f |E f(z_L) - E f(z(1))| / sd_f")
        D = diffs["inv-sqrt"]
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
        fig.suptitle("C7 iid-depth-limit (all three scalings; --gating not used)")

    return draw
