"""C8 `trained-propagation`: low-precision error in a trained backbone is rounding carried forward.

Setting: a checkpoint's model (EMA weights) on ``BATCH`` noisy inputs of its own data (fresh
draws, diffusion times uniform on [t_min, T]); the reference is the same weights in float64.

Measured (analysis.backbone_probes):

* precision profiles: the relative error |z~_i - z_i| / |z_i| of every unit's output, and of the
  network's output, per sample, for the whole network cast to bfloat16 and to float16, and for
  float32 weights under bfloat16 autocast (the residual stream in float32, matrix products in
  bfloat16: what mixed-precision training runs), so one sees whether the stream's precision or
  the branches' dominates;
* linear response: the float64 network with its units in bfloat16 (float16) and the rest in
  float64, so every rounding error r_i enters at a unit; its output error against the
  first-order prediction sum_i J_{i->out} r_i (one forward-mode pass, the discrete
  variation-of-constants formula; proof in proofs/C8_trained-propagation.md), as the relative
  residual |delta - sum_i J r_i| / |delta| per sample (and the same at every unit's output,
  eq. (3) of the proof: ``linear_response_residual_units_max``, the largest per-unit mean);
* amplification: |J_{i->out} v| / |v| for a standard normal direction v at each unit's output,
  per sample.

Pass rules (gated): ``linear_response_residual`` (bfloat16) and ``linear_response_residual_fp16``
each <= 0.1 beyond 3 standard errors: the linearised stack explains at least 90% of the error.
Reported: ``output_error_bf16`` (relative L2 error of the output, whole network in bfloat16),
``output_error_fp16``, ``output_error_autocast``, the unit profiles (first, last, largest), the
units-only output errors, ``amplification_max`` (the largest per-unit mean, with its standard
error) and ``amplification_first``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..analysis.backbone_probes import (
    amplification,
    cast_model,
    linear_response,
    lowp_units_pass,
    per_sample_norm,
    reference_kernels,
    relative_errors,
    run_traced,
)
from ..stats import mean_se
from .trained_subject import CheckpointConfig, draw_inputs, load_subject
from .report import CheckResult
from .rules import Rule, judge

KIND = "checkpoint"
CLAIM = "C8"
ID = "trained-propagation"
TITLE = "rounding in a trained backbone is carried forward by its linearisation"

RESIDUAL_MAX = 0.1
SE_BAND = 3.0
STREAM = 8
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


def sizes(quick: bool) -> dict:
    return dict(batch=8) if quick else dict(batch=32)


def _autocast(device: str):
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def measure(config: CheckpointConfig, skip_units: tuple[int, ...] = ()) -> dict:
    """Every profile of the module docstring, per unit and sample; ``skip_units``: units whose
    rounding error is left out of the linear-response prediction (the negative control)."""
    subject = load_subject(config)
    dev = config.device
    g = config.generator(STREAM)
    inp = draw_inputs(subject, sizes(config.quick)["batch"], g)
    x, t = inp.x_t.to(dev), inp.t.to(dev)
    y = None if inp.y is None else inp.y.to(dev)
    B = x.shape[0]
    net64 = subject.float64().to(dev)
    with reference_kernels():
        ref = run_traced(net64, x, t, y)

    def errors(trace):
        return (relative_errors(trace.outputs, ref.outputs, B),
                relative_errors([trace.output], [ref.output], B)[0])

    out = {}
    for tag, dtype in PRECISIONS.items():
        full = run_traced(cast_model(subject.net, dtype), x.to(dtype), t.float(), y)
        out[f"units_{tag}"], out[f"output_{tag}"] = errors(full)
        lowp = lowp_units_pass(net64, x, t, y, dtype)
        delta = lowp.trace.output - ref.output
        perturb = {i: r for i, r in enumerate(lowp.local_errors) if i not in skip_units}
        response = linear_response(net64, x, t, y, perturb)
        predicted = response.output
        out[f"units_only_{tag}"] = per_sample_norm(delta, B) / per_sample_norm(ref.output, B)
        out[f"residual_{tag}"] = per_sample_norm(delta - predicted, B) / per_sample_norm(delta, B)
        out[f"residual_units_{tag}"] = torch.stack([
            per_sample_norm(lo - r - c, B) / per_sample_norm(lo - r, B) for lo, r, c in
            zip(lowp.trace.outputs, ref.outputs, response.outputs, strict=True)])
    net32 = cast_model(subject.net, torch.float32)
    auto = run_traced(net32, x.float(), t.float(), y, autocast=_autocast(dev))
    out["units_autocast"], out["output_autocast"] = errors(auto)
    out["amplification"] = amplification(net64, x, t, y, g, ref.outputs)
    return {k: v.cpu() for k, v in out.items()}


def run(config: CheckpointConfig, skip_units: tuple[int, ...] = ()) -> CheckResult:
    raw = measure(config, skip_units)
    metrics = {}
    for tag in (*PRECISIONS, "autocast"):
        metrics[f"output_error_{tag}"], metrics[f"output_error_{tag}_se"] = \
            mean_se(raw[f"output_{tag}"])
        profile = raw[f"units_{tag}"].mean(1)
        metrics[f"unit_error_{tag}_first"] = float(profile[0])
        metrics[f"unit_error_{tag}_last"] = float(profile[-1])
        metrics[f"unit_error_{tag}_max"] = float(profile.max())
    for tag in PRECISIONS:
        metrics[f"output_error_units_only_{tag}"], metrics[f"output_error_units_only_{tag}_se"] \
            = mean_se(raw[f"units_only_{tag}"])
    metrics["linear_response_residual"], metrics["linear_response_residual_se"] = \
        mean_se(raw["residual_bf16"])
    metrics["linear_response_residual_fp16"], metrics["linear_response_residual_fp16_se"] = \
        mean_se(raw["residual_fp16"])
    metrics["linear_response_residual_units_max"] = \
        float(raw["residual_units_bf16"].mean(1).max())
    amp = raw["amplification"]
    per_unit = [mean_se(row) for row in amp]
    worst = int(np.argmax([m for m, _ in per_unit]))
    metrics["amplification_max"], metrics["amplification_max_se"] = per_unit[worst]
    metrics["amplification_max_unit"] = worst
    metrics["amplification_first"], metrics["amplification_first_se"] = per_unit[0]
    metrics["units"] = amp.shape[0]
    verdict = judge(metrics, [Rule("linear_response_residual", (0.0, RESIDUAL_MAX), SE_BAND),
                              Rule("linear_response_residual_fp16", (0.0, RESIDUAL_MAX),
                                   SE_BAND)])
    m = metrics
    summary = (
        f"Across {m['units']} units the bfloat16 error of the output is "
        f"{m['output_error_bf16']:.2e} (float16 {m['output_error_fp16']:.2e}, bfloat16 autocast "
        f"with a float32 stream {m['output_error_autocast']:.2e}); with the units alone in low "
        f"precision the linearised stack predicts the output error up to a relative residual "
        f"of {m['linear_response_residual']:.3f} +/- {m['linear_response_residual_se']:.3f} "
        f"(bfloat16) and {m['linear_response_residual_fp16']:.3f} (float16); perturbations "
        f"at a unit reach the output amplified by at most {m['amplification_max']:.3g} "
        f"(unit {worst}).")
    return CheckResult(
        id=ID, claim=CLAIM, metrics=metrics, verdict=verdict, summary=summary,
        figure=propagation_figure(raw),
        measured_text=(f"bf16 output {m['output_error_bf16']:.1e}; residual "
                       f"{m['linear_response_residual']:.3f}/"
                       f"{m['linear_response_residual_fp16']:.3f}"),
        theory_text=f"linear response residual <= {RESIDUAL_MAX:g}")


def propagation_figure(raw: dict):
    """Left: per-unit relative error of each precision; right: amplification per unit."""

    def draw(fig):
        left, right = fig.subplots(1, 2)
        for key, label in (("units_bf16", "bfloat16"), ("units_fp16", "float16"),
                           ("units_autocast", "bf16 autocast (fp32 stream)")):
            prof = raw[key].numpy()
            left.plot(np.arange(prof.shape[0]), prof.mean(1), "o-", label=label)
        left.set_yscale("log")
        left.set_xlabel("unit")
        left.set_ylabel("relative error of the unit's output")
        left.set_title("error profile vs float64")
        left.grid(True, which="both", alpha=0.3)
        left.legend(fontsize=7)
        amp = raw["amplification"].numpy()
        se = amp.std(1, ddof=1) / np.sqrt(amp.shape[1]) if amp.shape[1] > 1 else 0 * amp[:, 0]
        right.errorbar(np.arange(amp.shape[0]), amp.mean(1), yerr=2 * se, marker="o", capsize=2)
        right.set_yscale("log")
        right.set_xlabel("unit")
        right.set_ylabel("|J v| / |v|")
        right.set_title("unit-to-output amplification")
        right.grid(True, which="both", alpha=0.3)
        fig.suptitle("C8 trained-propagation")

    return draw
