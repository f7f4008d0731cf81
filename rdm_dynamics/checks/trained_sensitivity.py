"""C9 `trained-sensitivity`: backpropagation through a trained backbone is its discrete adjoint.

Setting: a checkpoint's model (EMA weights) in float64, on noisy inputs of its own data (fresh
draws, times uniform on [t_min, T]), with the denoising loss l = sum_b |net(x_t,b) - target_b|^2
/ 2 (target: the noise, or v for v-prediction runs), in batches.

Claim: autograd's adjoint p = dl/dz at every unit's input is the unit's own vector-Jacobian
product applied to autograd's adjoint at its output, p_in = p_out dU/dz (= p_out (I + alpha
dF/dz) + ... for the gated unit z + alpha F + beta; proof in proofs/C9_trained-sensitivity.md).
Where the backbone is a chain of units (each unit's input the previous unit's output: the
flow-shaped transformer, not the U-Net), these steps compose to p_0 = p_L prod_i dU_i/dz.

Measured (analysis.backbone_probes.unit_adjoints): the adjoint at every unit; its profile |p|
across units (input of the first unit, then every unit's output) over |p_L|; the sensitivity
ratio |p_0| / |p_L| (p_0 at the first unit's input, p_L at the last unit's output), its mean with
the standard error over the samples of all batches.

Gated: ``adjoint_agreement_error``, the largest relative error of a unit's VJP step over units
and samples (float64), and for a chain ``chain_adjoint_error``, the relative error of p_0
propagated from autograd's p_L by the units' own VJPs alone.  Reported: ``sensitivity_ratio``
with its standard error, the largest and smallest mean of |p_i| / |p_L|.
"""

from __future__ import annotations

import numpy as np
import torch

from ..analysis.backbone_probes import unit_adjoints
from ..stats import mean_se
from ..training.diffusion import DiffusionObjective
from .claim import Measurement
from .rules import Rule
from .trained_subject import CheckpointConfig, draw_inputs, load_subject

CLAIM = "C9"
ID = "trained-sensitivity"
TITLE = "backprop through a trained backbone is its discrete adjoint; sensitivity |p_0|/|p_L|"

#: Autograd and the units' own VJP steps agree to float64 rounding.
AGREEMENT_MAX = 1e-8
THEORY = f"autograd = unit VJPs (<= {AGREEMENT_MAX:g})"
STREAM = 9

#: The figures derived in one line from gated ones (fnmatch patterns -> how).
DERIVED = {
    "sensitivity_ratio": "mean of |p_0| / |p_L|, p_0 and p_L autograd's adjoints, whose unit "
                         "steps (adjoint_agreement_error) and chain (chain_adjoint_error) are "
                         "gated",
    "profile_max, profile_min": "extremes of the mean |p_i| / |p_L| over the same gated "
                                "adjoints",
}
#: The metrics that say how C9 measured.
SETTINGS = ("units", "samples")


def sizes(quick: bool) -> dict:
    return dict(batches=2, batch=8) if quick else dict(batches=4, batch=16)


def rules(measured: Measurement) -> list[Rule]:
    """The agreement of every unit's step; for a chain of units (the metric exists) also the
    chain's."""
    return [Rule(name, (0.0, AGREEMENT_MAX))
            for name in ("adjoint_agreement_error", "chain_adjoint_error")
            if name in measured.metrics]


def adjoints(config: CheckpointConfig, skip_vjp: tuple[int, ...] = ()) -> dict:
    """Per-sample adjoint norms and unit-step errors over all batches (module docstring):
    ``input_norms``, ``output_norms``, ``step_errors`` (L, samples) and ``chain_errors``
    (samples; None for a backbone that is not a chain)."""
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


def measure(config: CheckpointConfig, *, skip_vjp: tuple[int, ...] = ()) -> Measurement:
    """The adjoints' metrics and the profile |p_i| / |p_L| (L + 1, samples) for the figure;
    ``skip_vjp`` plants the negative control (units whose Jacobian is left out of their step)."""
    raw = adjoints(config, skip_vjp)
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
    if raw["chain_errors"] is not None:  # p_0 propagated from p_L by the unit steps alone
        metrics["chain_adjoint_error"] = float(raw["chain_errors"].max())
    return Measurement(metrics, config, curves={"profile": profile.numpy()})


def summary(measured: Measurement, verdict) -> str:
    m = measured.metrics
    return (
        f"Backpropagation through the {m['units']} units equals each unit's own VJP step to "
        f"{m['adjoint_agreement_error']:.1e} (relative, float64)"
        + (f", and p_0 propagated from p_L by those steps alone matches autograd to "
           f"{m['chain_adjoint_error']:.1e}" if "chain_adjoint_error" in m else "")
        + "; the sensitivity |p_0|/|p_L| "
        f"is {m['sensitivity_ratio']:.3g} +/- {m['sensitivity_ratio_se']:.2g} over "
        f"{m['samples']} samples, the mean profile |p_i|/|p_L| ranges over "
        f"[{m['profile_min']:.3g}, {m['profile_max']:.3g}].")


def headline(measured: Measurement) -> str:
    m = measured.metrics
    return f"agreement {m['adjoint_agreement_error']:.1e}; ratio {m['sensitivity_ratio']:.3g}"


def figure(measured: Measurement):
    """|p_i| / |p_L| across units: mean with 2-SE bars."""
    profile, ratio = measured.curves["profile"], measured.metrics["sensitivity_ratio"]

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
