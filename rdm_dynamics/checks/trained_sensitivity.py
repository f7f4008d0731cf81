"""C9 `trained-sensitivity`: backpropagation through a trained backbone is its discrete adjoint.

Setting: a checkpoint's model (EMA weights) in float64, on noisy inputs of its own data (fresh
draws, times uniform on [t_min, T]), with the denoising loss l = sum_b |net(x_t,b) - target_b|^2
/ 2 (target: the noise, or v for v-prediction runs), in ``BATCHES`` batches.

Measured (analysis.backbone_probes.unit_adjoints): the adjoint p at every unit, p = dl/dz, by
autograd; its profile |p| across units (input of the first unit, then every unit's output); the
sensitivity ratio |p_0| / |p_L| (p_0 at the first unit's input, p_L at the last unit's output)
per sample, its mean with the standard error over samples of all batches; and for every unit the
relative error between autograd's adjoint at its input and the unit's own vector-Jacobian
product applied to autograd's adjoint at its output, p_in = p_out dU/dz (= p_out (I + alpha
dF/dz) + ... for the gated unit z + alpha F + beta; proof in proofs/C9_trained-sensitivity.md).
Where the backbone is a chain (the flow-shaped transformer), these steps compose to
p_0 = p_L prod_i dU_i/dz.

Pass rules (gated): ``adjoint_agreement_error`` (the largest per-unit relative error over units
and samples) <= 1e-8 in float64; for a chain of units (each unit's input the previous unit's
output: the transformer, not the U-Net) also ``chain_adjoint_error``, the relative error of p_0
propagated from autograd's p_L by the units' own VJPs alone, <= 1e-8.  Reported: the profile,
``sensitivity_ratio`` with its standard error, the largest and smallest per-unit |p| over |p_L|.
"""

from __future__ import annotations

import numpy as np
import torch

from ..analysis.backbone_probes import unit_adjoints
from ..stats import mean_se
from ..training.diffusion import DiffusionObjective
from .trained_subject import CheckpointConfig, draw_inputs, load_subject
from .report import CheckResult
from .rules import Rule, judge

KIND = "checkpoint"
CLAIM = "C9"
ID = "trained-sensitivity"
TITLE = "backprop through a trained backbone is its discrete adjoint; sensitivity |p_0|/|p_L|"

AGREEMENT_MAX = 1e-8
STREAM = 9


def sizes(quick: bool) -> dict:
    return dict(batches=2, batch=8) if quick else dict(batches=4, batch=16)


def measure(config: CheckpointConfig, skip_vjp: tuple[int, ...] = ()) -> dict:
    """Per-sample adjoint norms and unit-step errors over all batches (module docstring);
    ``skip_vjp`` plants the negative control (units whose Jacobian is left out)."""
    subject = load_subject(config)
    net64 = subject.float64().requires_grad_(True).to(config.device)
    objective = DiffusionObjective(subject.sde, subject.prediction, subject.t_min, 0.0, None)
    g = config.generator(STREAM)
    n = sizes(config.quick)
    ins, outs, errs, chains = [], [], [], []
    for _ in range(n["batches"]):
        inp = draw_inputs(subject, n["batch"], g)
        target = objective.target(inp.x0, inp.t, inp.noise)
        dev = config.device
        a = unit_adjoints(net64, inp.x_t.to(dev), inp.t.to(dev),
                          None if inp.y is None else inp.y.to(dev), target.to(dev), skip_vjp)
        ins.append(a.input_norms.cpu())
        outs.append(a.output_norms.cpu())
        errs.append(a.step_errors.cpu())
        if a.chain_errors is not None:
            chains.append(a.chain_errors.cpu())
    return {"input_norms": torch.cat(ins, 1), "output_norms": torch.cat(outs, 1),
            "step_errors": torch.cat(errs, 1),
            "chain_errors": torch.cat(chains) if chains else None}


def run(config: CheckpointConfig, skip_vjp: tuple[int, ...] = ()) -> CheckResult:
    raw = measure(config, skip_vjp)
    p_first = raw["input_norms"][0]
    p_last = raw["output_norms"][-1]
    profile = torch.cat([p_first[None], raw["output_norms"]]) / p_last  # (L + 1, B)
    metrics = {}
    metrics["sensitivity_ratio"], metrics["sensitivity_ratio_se"] = mean_se(p_first / p_last)
    means = profile.mean(1)
    metrics["profile_max"] = float(means.max())
    metrics["profile_min"] = float(means.min())
    metrics["adjoint_agreement_error"] = float(raw["step_errors"].max())
    metrics["units"] = raw["step_errors"].shape[0]
    metrics["samples"] = raw["step_errors"].shape[1]
    rules = [Rule("adjoint_agreement_error", (0.0, AGREEMENT_MAX))]
    chain = raw["chain_errors"]
    if chain is not None:  # a chain of units: p_0 propagated from p_L by the unit steps alone
        metrics["chain_adjoint_error"] = float(chain.max())
        rules.append(Rule("chain_adjoint_error", (0.0, AGREEMENT_MAX)))
    verdict = judge(metrics, rules)
    m = metrics
    summary = (
        f"Backpropagation through the {m['units']} units equals each unit's own VJP step to "
        f"{m['adjoint_agreement_error']:.1e} (relative, float64)"
        + (f", and p_0 propagated from p_L by those steps alone matches autograd to "
           f"{m['chain_adjoint_error']:.1e}" if "chain_adjoint_error" in m else "")
        + "; the sensitivity |p_0|/|p_L| "
        f"is {m['sensitivity_ratio']:.3g} +/- {m['sensitivity_ratio_se']:.2g} over "
        f"{m['samples']} samples, the mean profile |p_i|/|p_L| ranges over "
        f"[{m['profile_min']:.3g}, {m['profile_max']:.3g}].")
    return CheckResult(
        id=ID, claim=CLAIM, metrics=metrics, verdict=verdict, summary=summary,
        figure=sensitivity_figure(profile.numpy(), m["sensitivity_ratio"]),
        measured_text=(f"agreement {m['adjoint_agreement_error']:.1e}; ratio "
                       f"{m['sensitivity_ratio']:.3g}"),
        theory_text=f"autograd = unit VJPs (<= {AGREEMENT_MAX:g})")


def sensitivity_figure(profile: np.ndarray, ratio: float):
    """|p_i| / |p_L| across units: mean with 2-SE bars."""

    def draw(fig):
        ax = fig.add_subplot()
        mean = profile.mean(1)
        se = profile.std(1, ddof=1) / np.sqrt(profile.shape[1]) if profile.shape[1] > 1 \
            else np.zeros_like(mean)
        ax.errorbar(np.arange(len(mean)), mean, yerr=2 * se, marker="o", capsize=2)
        ax.set_yscale("log")
        ax.set_xlabel("position in the stream (0: first unit's input, i: after unit i)")
        ax.set_ylabel("|dloss/dz_i| / |dloss/dz_L|")
        ax.set_title(f"C9 trained-sensitivity: |p_0|/|p_L| = {ratio:.3g}")
        ax.grid(True, which="both", alpha=0.3)

    return draw
