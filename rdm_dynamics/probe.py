"""Run the trained-model checks on any torch model in memory (DESIGN.md section 3d).

    from rdm_dynamics.probe import check_model
    report = check_model(net, units, sample_shape=(1, 8, 8), num_classes=10)
    report["passed"], report["checks"][0]["metrics"]

``net`` is one of

* a torch module called as the toolkit's models are, ``net(x, t, y)`` -> a tensor of x's shape
  (t the diffusion time in [0, 1] of ``sde``, y labels or None), with ``units``, the list of its
  residual units (modules whose output is their input plus a branch, each run once per forward
  pass; any call signature whose first argument, or keyword ``hidden_states``, is the state);
* one of this toolkit's backbones (``units`` found by ``residual_units()``);
* a diffusers ``DiTTransformer2DModel``, ``Transformer2DModel`` or ``UNet2DModel`` (``units``
  found by ``models.diffusers_adapters.find_units``, the time mapped by ``DDPMTime`` of the DDPM
  scheduler given as ``scheduler_config``, diffusers' defaults if None).

The checks are those of ``verify --ckpt`` (C8 ``trained-propagation``, C9 ``trained-sensitivity``;
C10 ``denoising-risk`` when ``law``, a ``training.known_law.KnownLaw``, is the model's data law)
and the report is the same JSON (DESIGN.md section 4), written to ``out`` when given.  Without a
law the inputs are the stated stand-in of ``checks.model_folder``: x0 ~ N(0, I), uniform labels.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import torch
from torch import nn

__all__ = ["check_model", "ModelWithUnits", "as_backbone"]

#: The checks run by default (C10 joins them when a law is given).
DEFAULT_CHECKS = ("trained-propagation", "trained-sensitivity")
_KEYS = itertools.count()


class ModelWithUnits(nn.Module):
    """A model called as ``net(x, t, y)`` with the residual units a user listed, seen as the
    probes see units (``models.unit_adapters``); its state dict is the model's."""

    def __init__(self, net: nn.Module, units: list[nn.Module], sample_shape, num_classes):
        from .models.unit_adapters import adapt_units, trace_order

        super().__init__()
        self.net = net
        self.in_channels, self.input_size = int(sample_shape[0]), int(sample_shape[-1])
        self.num_classes = num_classes
        dtype = next(net.parameters()).dtype
        x = torch.zeros(1, *sample_shape, dtype=dtype)
        y = None if not num_classes else torch.zeros(1, dtype=torch.long)
        ordered, _ = trace_order(net, list(units), x, torch.full((1,), 0.5, dtype=dtype), y)
        if len(ordered) != len(units):
            raise ValueError(f"{len(units) - len(ordered)} of the {len(units)} units given do "
                             "not run in a forward pass")
        self._units = ordered
        adapt_units(ordered, self)
        self.config = {"gate": "user", "input_size": self.input_size,
                       "in_channels": self.in_channels, "num_classes": num_classes,
                       "frames": None}

    def forward(self, x, t, y=None):
        return self.net(x, t, y)

    def residual_units(self):
        from .models.unit_adapters import unit_views

        return unit_views(self._units)


def as_backbone(net: nn.Module, units=None, *, sample_shape=None, num_classes=None,
                scheduler_config: dict | None = None):
    """(backbone, DDPMTime or None): ``net`` as the checks take it (module docstring)."""
    from .models.diffusers_adapters import SUPPORTED_CLASSES, DDPMTime, DiffusersBackbone

    if type(net).__name__ in SUPPORTED_CLASSES and units is None:
        time_map = DDPMTime.from_scheduler_config(scheduler_config or {})
        return DiffusersBackbone(net, num_classes=num_classes, time=time_map), time_map
    if units is None:
        if not hasattr(net, "residual_units"):
            raise ValueError("give the model's residual units (units=[...]): it has no "
                             "residual_units() and is not a supported diffusers class")
        return net, None
    if sample_shape is None:
        raise ValueError("sample_shape (C, H, W) is needed to trace the units' order")
    return ModelWithUnits(net, units, sample_shape, num_classes), None


def check_model(net: nn.Module, units=None, *, sample_shape=None, num_classes=None,
                sde: str = "vp", sde_options: dict | None = None, prediction: str = "eps",
                t_min: float = 1e-3, law=None, scheduler_config: dict | None = None,
                only=None, seed: int = 0, quick: bool = True, device: str = "cpu",
                out: str | Path | None = None) -> dict:
    """The verify report of the checks on ``net`` (module docstring)."""
    from .checks import registry, run_checks
    from .checks.model_folder import clean_draws
    from .checks.report import build_report, render_figures, write_report
    from .checks.trained_subject import (
        CheckpointConfig,
        Subject,
        in_memory_subject,
    )
    from .sde import make_sde
    from .training.settings import TrainConfig

    start = time.perf_counter()
    backbone, time_map = as_backbone(net, units, sample_shape=sample_shape,
                                     num_classes=num_classes, scheduler_config=scheduler_config)
    if time_map is not None:
        sde, sde_options, prediction = "vp", time_map.sde_options, time_map.prediction
        t_min = 1.0 / time_map.N
    cfg = TrainConfig(sde=sde, sde_options=dict(sde_options or {}), prediction=prediction,
                      t_min=t_min, data="digits-gmm" if law is not None else "none (in memory)")
    backbone = backbone.float().eval().requires_grad_(False).to(device)
    classes = getattr(backbone, "num_classes", None) or num_classes
    subject = Subject(backbone, cfg, make_sde(sde, **cfg.sde_options), law, 0,
                      Path(f"memory:{type(net).__name__}"), bool(classes),
                      None if law is not None else clean_draws(backbone))
    checks = registry("checkpoint")
    wanted = only or (DEFAULT_CHECKS if law is None else tuple(checks))
    selected = {cid: checks[cid] for cid in checks if cid in wanted}
    key = f"memory:{next(_KEYS)}:{type(net).__name__}"
    config = CheckpointConfig(ckpt=key, seed=seed, device=device, quick=quick,
                              depth=len(backbone.residual_units()),
                              gate=backbone.config.get("gate", ""))
    with in_memory_subject(key, subject, device):
        results = run_checks(config, selected, progress=False, jobs=1, figures=out is not None)
    report = build_report(config, results, time.perf_counter() - start)
    if out is not None:
        write_report(Path(out), report, render_figures(results))
    return report
