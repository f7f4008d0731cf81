"""Samples from a trained network: the network read as a score, one sampler run in batches.

``generate(net, n, sde=..., prediction=..., t_min=...)`` draws ``n`` samples of the data shape in
``net.config`` (``input_size``, ``in_channels``, ``frames``).  The network is wrapped as the score
of p_t, grad log p_t(x | y) = -eps_hat(x, t, y) / s(t) (``diffusion.ScoreModel``, with
classifier-free guidance w when labels are given), and ``diffusion.sample`` integrates from the
prior at T down to ``t_min``, the first time of training (the score is singular at 0), then takes
Tweedie's E[x_0 | x_{t_min}].  ``sde``, ``prediction`` and ``t_min`` must be those the network was
trained with (a checkpoint's ``TrainConfig``); nothing is assumed about them here.

All batches draw from one generator seeded with ``seed``, in order, so a given (seed, n,
batch_size) gives the same samples on a given device.
"""

from __future__ import annotations

import torch
from torch import nn

from ..sde import SDE
from .diffusion import ODE_ATOL, ODE_METHOD, ODE_RTOL, SAMPLER, STEPS, ScoreModel, sample

__all__ = ["generate", "cycle_labels", "NonFiniteSamples"]


def cycle_labels(n: int, num_classes: int | None, label: int | None = None,
                 device=None) -> torch.Tensor | None:
    """Labels 0, 1, ..., K-1, 0, 1, ... (or all ``label``); None for an unconditional model."""
    if num_classes is None:
        return None
    if label is not None:
        return torch.full((n,), int(label), dtype=torch.long, device=device)
    return torch.arange(n, device=device) % num_classes


def generate(net: nn.Module, n: int, *, sde: SDE, prediction: str, t_min: float,
             labels: torch.Tensor | None = None, guidance: float = 1.0, sampler: str = SAMPLER,
             steps: int = STEPS, method: str = ODE_METHOD, rtol: float = ODE_RTOL,
             atol: float = ODE_ATOL,
             seed: int = 0, device: str | torch.device = "cpu", batch_size: int = 256,
             autocast: bool = True, disable: bool | None = None) -> torch.Tensor:
    """``n`` samples (on the CPU) of the data shape of ``net.config``, in batches of
    ``batch_size``, from the network trained on ``sde`` with ``prediction`` and ``t_min``.

    ``labels`` (n,) condition the samples (None: the null label, unconditional); ``guidance`` is
    the classifier-free guidance scale.  ``autocast``: the network runs under bfloat16 autocast
    when ``device`` is CUDA (ignored on the CPU).  The sampler arguments are those of
    ``diffusion.sample``.
    """
    device = torch.device(device)
    cfg = net.config
    frames = cfg.get("frames")
    shape = ((frames,) if frames else ()) + (cfg["in_channels"], cfg["input_size"],
                                             cfg["input_size"])
    bf16 = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) \
        if device.type == "cuda" and autocast else None
    g = torch.Generator(device).manual_seed(seed)
    net = net.to(device).eval()
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        y = None if labels is None else labels[start:start + b].to(device)
        score = ScoreModel(net, sde, prediction, y=y,
                           guidance=guidance if y is not None else 1.0,
                           num_classes=cfg.get("num_classes"), autocast=bf16)
        try:  # an adaptive solver meeting NaN stops with FloatingPointError
            x = sample(score, (b, *shape), sde=sde, sampler=sampler, steps=steps, t_end=t_min,
                       method=method, rtol=rtol, atol=atol, generator=g, device=device,
                       disable=disable).cpu()
        except (FloatingPointError, AssertionError) as exc:
            if isinstance(exc, AssertionError) and "underflow in dt" not in str(exc):
                raise  # torchdiffeq's step-size assertion is the one met on NaN
            raise NonFiniteSamples(f"{str(exc)[:120]} (sampler {sampler}): the model is "
                                   "unusable with it") from None
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteSamples(f"the {sampler} sampler ({steps} steps) produced NaN or "
                                   "infinite samples: the model is unusable with it")
        out.append(x)
    return torch.cat(out)


class NonFiniteSamples(ValueError):
    """The sampler produced (or met) NaN or infinite values: a property of the model."""
