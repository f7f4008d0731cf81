"""A run's signal propagation: at initialisation (step 0) and, after training, its bf16 error.

At step 0, on the run's first training batch (its data, times and noise, drawn as training
draws them), with z_0 the input of the first residual unit and z_L the output of the last:

    stream_growth   = mean over samples of |z_L - z_0| / |z_0|
    sensitivity     = mean over samples of |p_0| / |p_L|,   p_i = (d z_L / d z_i)^T p_L

with p_L a standard normal cotangent at the last unit's output, seeded by the run's seed (the
head is zero at initialisation, so the training loss sends no gradient into the stream yet).  A
cell that starts exploded shows it here (a growth of 1e10, or an infinite one), before any
learning rate has acted.  Both are means over the batch with their standard errors; a
non-finite value (the forward pass overflowed) is reported as infinite.

After training, ``bf16_output_error`` is C8's ``output_error_bf16`` (``checks.
trained_propagation``): the relative error of the model's output in bfloat16 against float64,
on C8's own draws, computed with C8's own functions, for studies that leave the whole of C8 out
of their checks (its linear-response and amplification profiles cost O(L^2) passes).
"""

from __future__ import annotations

import math

import torch

from ..stats import mean_se

__all__ = ["step0_figures", "bf16_output_error"]


def _ratio(num: torch.Tensor, den: torch.Tensor) -> tuple[float, float]:
    """Mean over samples of |num| / |den| (rows), with its standard error; inf if not finite."""
    r = num.flatten(1).double().norm(dim=1) / den.flatten(1).double().norm(dim=1)
    if not bool(torch.isfinite(r).all()):
        return math.inf, math.nan
    return mean_se(r.numpy())


def step0_figures(cfg) -> dict:
    """Signal propagation of a run's initial model (module docstring), from its configuration
    ``cfg`` (a TrainConfig), on the CPU; writes nothing."""
    from ..training.loop import setup

    with torch.random.fork_rng(devices=[]):  # the same figures in any process, at any time
        torch.manual_seed(cfg.seed)
        return _step0(setup(cfg), cfg)


def _step0(run, cfg) -> dict:
    try:
        units = run.model.residual_units()
        states: dict[str, torch.Tensor] = {}
        handles = [units[0].register_forward_hook(lambda m, a, o: states.setdefault("z0", a[0])),
                   units[-1].register_forward_hook(lambda m, a, o: states.setdefault("zL", o))]
        try:
            x, y = run.dataset.batch(run.schedule.indices(0))
            draws = run.objective.draw((cfg.batch_size, *run.dataset.sample_shape), run.noise)
            run.objective.loss(run.model, x, y, draws)
        finally:
            for h in handles:
                h.remove()
        z0, zL = states["z0"], states["zL"]
        growth, growth_se = _ratio(zL.detach() - z0.detach(), z0.detach())
        # p_L: a standard normal cotangent (the head is zero at init, so the loss sends none)
        pL = torch.randn(zL.shape, generator=torch.Generator().manual_seed(cfg.seed))
        (p0,) = torch.autograd.grad(zL, z0, grad_outputs=pL.to(zL.dtype))
        sens, sens_se = _ratio(p0, pL)
        return {"units": len(units), "stream_growth": growth, "stream_growth_se": growth_se,
                "sensitivity": sens, "sensitivity_se": sens_se}
    finally:
        run.dist.close()


def bf16_output_error(folder, *, seed: int, device: str, quick: bool) -> dict:
    """C8's ``output_error_bf16`` (mean over its samples, with its standard error) of the newest
    checkpoint in ``folder``."""
    from ..analysis.backbone_probes import cast_model, run_traced
    from ..checks import trained_propagation as c8
    from ..checks.trained_subject import checkpoint_config, load_subject

    config = checkpoint_config(str(folder), seed=seed, device=device, quick=quick)
    subject = load_subject(config)
    with torch.no_grad():
        probe = c8.reference(subject, config, config.generator(c8.STREAM))
        low = cast_model(subject.net, torch.bfloat16)
        trace = run_traced(low, probe.x.to(torch.bfloat16), probe.t.float(), probe.y)
        _, output = probe.errors(trace)
    value, se = mean_se(output.cpu().double().numpy())
    return {"output_error_bf16": value, "output_error_bf16_se": se}
