"""C8 `trained-propagation`: low-precision error in a trained backbone is rounding carried forward.

Setting: a checkpoint's model (EMA weights) on noisy inputs of its own data (fresh draws,
diffusion times uniform on [t_min, T]); the reference is the same weights in float64.

Claim: run with its units in low precision, unit i returns z~_i = U_i(a~_i) + r_i, and to first
order the output error is the sum of the local rounding errors r_i carried to the output by the
linearised stack, delta_out = sum_i J_{i->out} r_i (the discrete variation-of-constants formula
behind C5; proof in proofs/C8_trained-propagation.md).

Measured (analysis.backbone_probes), per unit and sample:

* precision profiles: the relative error |z~_i - z_i| / |z_i| of every unit's output, and of the
  network's output, for the whole network cast to bfloat16 and to float16, and for float32
  weights under bfloat16 autocast (the residual stream in float32, matrix products in bfloat16:
  what mixed-precision training runs), so one sees whether the stream's precision or the
  branches' dominates;
* linear response: the float64 network with its units in bfloat16 (float16) and the rest in
  float64, so every rounding error r_i enters at a unit; its output error delta against the
  prediction sum_i J_{i->out} r_i (one forward-mode pass), as the relative residual
  |delta - sum_i J r_i| / |delta| (and the same at every unit's output, eq. (3) of the proof:
  ``linear_response_residual_units_max``, the largest per-unit mean);
* amplification: |J_{i->out} v| / |v| for a standard normal direction v at each unit's output.

Gated: the linear-response residuals in bfloat16 and float16 at the output and at every unit (the
per-unit error profile of the units-only pass against its per-unit prediction: the largest
per-unit mean, with its standard error); for the whole network cast, that its errors are
rounding errors: bfloat16 over float16 is the ratio of their unit roundoffs, 8, within a factor 2
(``PRECISION_RATIO``), at the output and at every unit, and the float32 stream of autocast leaves
at most the whole bfloat16 error (``AUTOCAST_RATIO``).  Derived (``DERIVED``): the error profiles
and output errors of every precision, through those ratios or the residuals, and the
amplification (the depth study reads ``output_error_bf16``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..analysis.backbone_probes import (
    Trace,
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
from .claim import Measurement
from .rules import Rule
from .trained_subject import CheckpointConfig, draw_inputs, load_subject

CLAIM = "C8"
ID = "trained-propagation"
TITLE = "rounding in a trained backbone is carried forward by its linearisation"

#: The linearised stack explains the output error: the largest relative residual it leaves, and
#: the margin in standard errors it must hold by (one-sided: a residual near 0 is the statement
#: holding best, so there is no lower bound for the margin to push above 0).
RESIDUAL_MAX = 0.1
SE_BAND = 3.0
THEORY = f"linear response residual <= {RESIDUAL_MAX:g}"
#: Rounding errors scale with the format's unit roundoff: bfloat16 (2^-8) over float16 (2^-11)
#: is 8, held within a factor 2 for the whole network cast, at the output and at every unit.
PRECISION_RATIO = (4.0, 16.0)
#: The float32 stream under bfloat16 autocast removes the stream's share of the rounding: its
#: error is at most the whole bfloat16 network's, at the output and at every unit.
AUTOCAST_RATIO = (0.0, 1.0)
RULES = [Rule("linear_response_residual", (None, RESIDUAL_MAX), SE_BAND),
         Rule("linear_response_residual_fp16", (None, RESIDUAL_MAX), SE_BAND),
         Rule("linear_response_residual_units_max", (None, RESIDUAL_MAX), SE_BAND),
         Rule("linear_response_residual_units_max_fp16", (None, RESIDUAL_MAX), SE_BAND),
         Rule("precision_ratio_output", PRECISION_RATIO),
         Rule("precision_ratio_units_min", PRECISION_RATIO),
         Rule("precision_ratio_units_max", PRECISION_RATIO),
         Rule("autocast_ratio_output", AUTOCAST_RATIO),
         Rule("autocast_ratio_units_max", AUTOCAST_RATIO)]

#: The figures derived in one line from gated ones (fnmatch patterns -> how).
DERIVED = {
    "unit_error_units_only_*": "the units-only pass's per-unit profile (first, last, max), each "
                               "unit gated against its linear-response prediction "
                               "(linear_response_residual_units_max*)",
    "output_error_units_only_*": "|delta| / |out|, delta gated by linear_response_residual*",
    "output_error_bf16, output_error_fp16, output_error_autocast":
        "the whole network's output errors, gated through precision_ratio_output and "
        "autocast_ratio_output",
    "unit_error_bf16_*, unit_error_fp16_*, unit_error_autocast_*":
        "the whole network's unit profiles (first, last, max), every unit gated through "
        "precision_ratio_units_* and autocast_ratio_units_max",
    "amplification_max, amplification_first": "|J v| / |v| by the forward-mode pass whose sum "
                                              "is gated by linear_response_residual",
}
#: The metrics that say how C8 measured (counts, positions).
SETTINGS = ("units", "*_unit")

STREAM = 8
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


def sizes(quick: bool) -> dict:
    return dict(batch=8) if quick else dict(batch=32)


def _autocast(device: str):
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


@dataclass
class Probe:
    """The inputs on the device, the float64 network and its traced pass (the reference)."""

    x: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor | None
    net64: torch.nn.Module
    ref: Trace

    def errors(self, trace: Trace) -> tuple[torch.Tensor, torch.Tensor]:
        """Relative errors of ``trace`` against the reference: per unit (L, B), output (B,)."""
        B = self.x.shape[0]
        return (relative_errors(trace.outputs, self.ref.outputs, B),
                relative_errors([trace.output], [self.ref.output], B)[0])


def reference(subject, config: CheckpointConfig, generator: torch.Generator) -> Probe:
    """Noisy inputs of the run's data drawn from ``generator`` and the float64 pass on them."""
    dev = config.device
    inp = draw_inputs(subject, sizes(config.quick)["batch"], generator)
    x, t = inp.x_t.to(dev), inp.t.to(dev)
    y = None if inp.y is None else inp.y.to(dev)
    net64 = subject.float64().to(dev)
    with reference_kernels():
        ref = run_traced(net64, x, t, y)
    return Probe(x, t, y, net64, ref)


def precision_profiles(subject, probe: Probe, tag: str, skip_units=()) -> dict:
    """For low precision ``tag``: the whole network's unit and output errors, and the units-only
    pass's output error, linear-response residual at the output and at every unit (leaving out
    the rounding errors of ``skip_units``)."""
    dtype, B = PRECISIONS[tag], probe.x.shape[0]
    x, t, y, net64, ref = probe.x, probe.t, probe.y, probe.net64, probe.ref
    out = {}
    full = run_traced(cast_model(subject.net, dtype), x.to(dtype), t.float(), y)
    out[f"units_{tag}"], out[f"output_{tag}"] = probe.errors(full)
    lowp = lowp_units_pass(net64, x, t, y, dtype)
    delta = lowp.trace.output - ref.output
    perturb = {i: r for i, r in enumerate(lowp.local_errors) if i not in skip_units}
    response = linear_response(net64, x, t, y, perturb)
    out[f"units_only_{tag}"] = per_sample_norm(delta, B) / per_sample_norm(ref.output, B)
    out[f"unit_profile_units_only_{tag}"] = relative_errors(lowp.trace.outputs, ref.outputs, B)
    out[f"residual_{tag}"] = per_sample_norm(delta - response.output, B) / per_sample_norm(delta, B)
    out[f"residual_units_{tag}"] = torch.stack([
        per_sample_norm(lo - r - c, B) / per_sample_norm(lo - r, B) for lo, r, c in
        zip(lowp.trace.outputs, ref.outputs, response.outputs, strict=True)])
    return out


def autocast_profiles(subject, probe: Probe, device: str) -> dict:
    """Unit and output errors of float32 weights under bfloat16 autocast."""
    net32 = cast_model(subject.net, torch.float32)
    auto = run_traced(net32, probe.x.float(), probe.t.float(), probe.y, autocast=_autocast(device))
    units, output = probe.errors(auto)
    return {"units_autocast": units, "output_autocast": output}


def measure(config: CheckpointConfig, *, skip_units: tuple[int, ...] = ()) -> Measurement:
    """Every profile of the module docstring, per unit and sample, and their metrics;
    ``skip_units``: units whose rounding error is left out of the linear-response prediction
    (the negative control)."""
    subject = load_subject(config)
    g = config.generator(STREAM)
    probe = reference(subject, config, g)
    raw = {}
    for tag in PRECISIONS:
        raw.update(precision_profiles(subject, probe, tag, skip_units))
    raw.update(autocast_profiles(subject, probe, config.device))
    raw["amplification"] = amplification(probe.net64, probe.x, probe.t, probe.y, g,
                                         probe.ref.outputs)
    raw = {k: v.cpu() for k, v in raw.items()}
    return Measurement(propagation_metrics(raw), config, curves=raw)


def propagation_metrics(raw: dict) -> dict:
    """The report's metrics of the per-unit, per-sample profiles (sample means with their
    standard errors)."""
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
    for tag, suffix in (("bf16", ""), ("fp16", "_fp16")):
        per_unit = [mean_se(row) for row in raw[f"residual_units_{tag}"]]
        worst = int(np.argmax([m for m, _ in per_unit]))
        name = f"linear_response_residual_units_max{suffix}"
        metrics[name], metrics[f"{name}_se"] = per_unit[worst]
        metrics[f"{name}_unit"] = worst
        profile = raw[f"unit_profile_units_only_{tag}"].mean(1)
        for which, value in (("first", profile[0]), ("last", profile[-1]),
                             ("max", profile.max())):
            metrics[f"unit_error_units_only_{tag}_{which}"] = float(value)
    metrics.update(ratio_metrics(raw))
    amp = raw["amplification"]
    per_unit = [mean_se(row) for row in amp]
    worst = int(np.argmax([m for m, _ in per_unit]))
    metrics["amplification_max"], metrics["amplification_max_se"] = per_unit[worst]
    metrics["amplification_max_unit"] = worst
    metrics["amplification_first"], metrics["amplification_first_se"] = per_unit[0]
    metrics["units"] = amp.shape[0]
    return metrics


def ratio_metrics(raw: dict) -> dict:
    """The whole network's errors in bfloat16 over float16 and under autocast over bfloat16,
    at the output (ratio of the means) and per unit (ratios of the per-unit means: the
    smallest and largest)."""
    def ratio(a, b):
        return a.mean(-1) / b.mean(-1)

    units = ratio(raw["units_bf16"], raw["units_fp16"])
    auto = ratio(raw["units_autocast"], raw["units_bf16"])
    return {"precision_ratio_output": float(ratio(raw["output_bf16"], raw["output_fp16"])),
            "precision_ratio_units_min": float(units.min()),
            "precision_ratio_units_max": float(units.max()),
            "autocast_ratio_output": float(ratio(raw["output_autocast"], raw["output_bf16"])),
            "autocast_ratio_units_max": float(auto.max())}


def summary(measured: Measurement, verdict) -> str:
    m = measured.metrics
    return (
        f"Across {m['units']} units the bfloat16 error of the output is "
        f"{m['output_error_bf16']:.2e} (float16 {m['output_error_fp16']:.2e}, bfloat16 autocast "
        f"with a float32 stream {m['output_error_autocast']:.2e}); with the units alone in low "
        f"precision the linearised stack predicts the output error up to a relative residual "
        f"of {m['linear_response_residual']:.3f} +/- {m['linear_response_residual_se']:.3f} "
        f"(bfloat16) and {m['linear_response_residual_fp16']:.3f} (float16); perturbations "
        f"at a unit reach the output amplified by at most {m['amplification_max']:.3g} "
        f"(unit {m['amplification_max_unit']}).")


def headline(measured: Measurement) -> str:
    m = measured.metrics
    return (f"bf16 output {m['output_error_bf16']:.1e}; residual "
            f"{m['linear_response_residual']:.3f}/{m['linear_response_residual_fp16']:.3f}")


def figure(measured: Measurement):
    """Left: per-unit relative error of each precision; right: amplification per unit."""
    raw = measured.curves

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
