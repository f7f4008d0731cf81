"""A diffusers ``save_pretrained`` folder as the subject of the checkpoint checks (DESIGN.md 3d).

``verify --ckpt DIR`` on a folder with a ``config.json`` (or a pipeline folder with
``model_index.json``) reads it with diffusers' own class (``models.diffusers_adapters.load_folder``:
only ``DiTTransformer2DModel``, ``Transformer2DModel``, ``UNet2DModel``; offline; safetensors
only) and maps its time onto the VP SDE (``DDPMTime``): the subject's SDE is the VP SDE with
beta_min = N beta_start, beta_max = N beta_end, its prediction the scheduler's (epsilon -> eps,
v_prediction -> v), t_min = t_0 = 1/N.

Such a folder holds no data and no law, so the inputs of C8 and C9 are drawn from a stated
stand-in: clean images x0 ~ N(0, I) in the model's sample shape (for a VP SDE, x_t is then
N(0, I) at every t) and labels uniform over the model's classes.  C10 needs a known law and is
not applicable.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..cli import UsageError
from ..sde import make_sde
from ..training.settings import TrainConfig

__all__ = ["folder_subject_fields", "clean_draws"]


def clean_draws(net):
    """The stand-in data of the module docstring: a function (n, generator) -> (x0, labels)."""
    shape = (net.in_channels, net.input_size, net.input_size)
    classes = net.num_classes

    def draw(n: int, generator: torch.Generator):
        x0 = torch.randn((n, *shape), generator=generator, dtype=torch.float64)
        y = None if not classes else torch.randint(classes, (n,), generator=generator)
        return x0, y

    return draw


def folder_subject_fields(ckpt: str, device: str) -> dict | None:
    """The fields of ``trained_subject.Subject`` for a diffusers folder, or None if ``ckpt`` is
    not one; UsageError (one line) if it is one that cannot be read."""
    from ..models.diffusers_adapters import load_folder, model_folder

    if model_folder(ckpt) is None:
        return None
    try:
        net, time, source = load_folder(ckpt)
    except ValueError as exc:
        raise UsageError(f"--ckpt {ckpt}: {exc}") from None
    cfg = TrainConfig(sde="vp", sde_options=time.sde_options, prediction=time.prediction,
                      t_min=1.0 / time.N, data="none (a diffusers folder holds no data)")
    net.config["time"] = source
    return dict(net=net.to(device).requires_grad_(False), train_config=cfg,
                sde=make_sde("vp", **time.sde_options), law=None, step=0, path=Path(ckpt),
                labelled=bool(net.num_classes), clean=clean_draws(net))
