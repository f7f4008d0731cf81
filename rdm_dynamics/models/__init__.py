"""Trainable Neural-RDM backbones: gated residual transformers and residual MLPs (flow-shaped)
and U-Nets (U-shaped), for images (B, C, H, W) and videos (B, T, C, H, W).

    model = build_model("RDM-DiT-T/2", gate="rdm", input_size=8, in_channels=1, num_classes=10)
    out = model(x, t, y)          # same shape as x; t (B,) in [0, 1]; y (B,) or None (null label)
    model.residual_units()        # the gated residual units, in forward order
    model.gate_values()           # {"<unit>.alpha": tensor, ...}
    build_model(**model.config)   # the same architecture again
    load_model(ckpt, "ema")       # rebuilt from a checkpoint, with its weights

Gates (``GATE_KINDS``): plain, post-ln, rezero, adaln-zero, rdm (see :mod:`.gates`).
Initialisations (``INITS``): the backbone's own i.i.d. one, or
``initialize(model, "smooth", seed)``, which makes unit i's weights one smooth function of
tau_i = i / L at every depth (:mod:`.depth_init`).

Models from checkpoints.  A checkpoint stores the model's ``config`` (the keyword arguments that
rebuild it) and its weights under prefixes (``model``, ``ema``).  The builder is
:func:`build_model` or a ``package.module:function`` with the same signature
(:func:`model_builder`).  A checkpoint never chooses which code to import: a model trained with a
custom factory (recorded in the stored training configuration) is rebuilt only if the caller names
that same factory.  :func:`load_model` reads a checkpoint duck-typed, through ``ckpt.meta`` (a
mapping) and ``ckpt.state_dict(prefix)``, so this package needs nothing from the training code; a
mismatch is a :class:`ModelLoadError` (a ValueError).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math

from torch import nn

from .backbone import GatedBackbone
from .depth_init import INITS, initialize, smooth_in_depth_
from .diffusers_adapters import DIFFUSERS_BACKBONES, DIFFUSERS_CONFIGS
from .dit import DIT_CONFIGS, RDMDiT
from .gates import GATE_KINDS, ResidualUnit
from .mlp import MLP_CONFIGS, RDMMLP
from .unet import UNET_CONFIGS, RDMUNet

__all__ = ["build_model", "model_builder", "load_model", "ModelLoadError", "MODEL_CONFIGS",
           "GATE_KINDS", "BACKBONES", "INITS", "initialize", "smooth_in_depth_", "depth_option",
           "DEPTH_OPTIONS", "GatedBackbone", "ResidualUnit", "RDMDiT", "RDMUNet", "RDMMLP"]

BACKBONES: dict[str, type[GatedBackbone]] = {"dit": RDMDiT, "unet": RDMUNet, "mlp": RDMMLP}
BACKBONES.update(DIFFUSERS_BACKBONES)  # diffusers' classes, random weights (diffusers_adapters)

MODEL_CONFIGS: dict[str, dict] = {**DIT_CONFIGS, **UNET_CONFIGS, **MLP_CONFIGS}
MODEL_CONFIGS.update(DIFFUSERS_CONFIGS)

#: The architecture option that sets each backbone's depth: the transformer's blocks, the
#: U-Net's blocks per level (the number of residual units grows in proportion to it), the
#: residual MLP's units.
DEPTH_OPTIONS = {"dit": "depth", "unet": "blocks_per_level", "mlp": "depth",
                 "diffusers-dit": "depth", "diffusers-unet": "layers_per_block"}


def depth_option(name: str) -> str:
    """The option of named configuration ``name`` that sets its depth (``DEPTH_OPTIONS``)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(MODEL_CONFIGS)})")
    return DEPTH_OPTIONS[MODEL_CONFIGS[name]["backbone"]]


def _plain(value):
    """Tuples to lists, so a config equals its JSON round trip."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def build_model(name: str, *, gate: str = "rdm", input_size: int = 8, in_channels: int = 1,
                num_classes: int = 10, frames: int | None = None,
                class_dropout_prob: float = 0.1, **overrides) -> GatedBackbone:
    """Build a named configuration (``MODEL_CONFIGS``) with any gate of ``GATE_KINDS``.

    ``overrides`` replace the configuration's architecture options (depth, width, heads, ...;
    the keyword arguments of the backbone class).  The returned model's ``config`` holds every
    option, resolved, as plain JSON values; ``build_model(**model.config)`` rebuilds it.
    Raises ValueError for an unknown name, gate or option.
    """
    if name not in MODEL_CONFIGS:
        close = difflib.get_close_matches(name, MODEL_CONFIGS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (known: {', '.join(MODEL_CONFIGS)})")
    arch = dict(MODEL_CONFIGS[name])
    backbone = BACKBONES[arch.pop("backbone")]
    options = {k: p.default for k, p in inspect.signature(backbone).parameters.items()}
    common = {"gate": gate, "input_size": input_size, "in_channels": in_channels,
              "num_classes": num_classes, "frames": frames,
              "class_dropout_prob": class_dropout_prob}
    unknown = sorted(set(overrides) - set(options) | set(overrides) & set(common))
    if unknown:
        allowed = sorted(set(options) - set(common))
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for {name}; "
                         f"allowed: {', '.join(allowed)}")
    options.update(arch, **overrides, **common)
    model = backbone(**options)
    model.config = {"name": name, **{k: _plain(v) for k, v in options.items()}}
    return model


# ------------------------------------------------------------------------------------------------
# Models from checkpoints
# ------------------------------------------------------------------------------------------------

WEIGHTS = ("ema", "model")


class ModelLoadError(ValueError):
    """A model that cannot be rebuilt from a checkpoint: wrong factory, weights or shapes."""


def model_builder(factory: str | None = None):
    """``rdm_dynamics.models.build_model``, or a ``module:function`` with the same signature.

    Raises ModelLoadError if ``factory`` is malformed or cannot be imported.
    """
    if not factory:
        return build_model
    module, _, name = factory.partition(":")
    if not module or not name:
        raise ModelLoadError(f"model factory must look like 'package.module:function', got "
                             f"{factory!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"cannot import model factory {factory!r}: {exc}") from None


def _check_sizes_fit(config, stored: dict) -> None:
    """Refuse a stored ``model_config`` whose numbers the stored weights cannot hold, before the
    model is built (a hand-edited depth or width would otherwise build a huge model first).

    Every size of an architecture (depth, width, input size, classes, ratios) is at most
    max(number of weight tensors, largest tensor's numel): a model of depth D has at least D
    tensors, and a width, an input size or a class count is the length of some weight's axis."""
    if not isinstance(config, dict):
        raise ModelLoadError("the checkpoint's model_config is not a mapping")
    bound = max([len(stored), *(t.numel() for t in stored.values())])
    for key, value in config.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value) or abs(value) > bound:
            raise ModelLoadError(f"model_config {key} = {str(value)[:30]} does not fit the stored "
                                 f"weights ({len(stored)} tensors, the largest {bound} values)")


def load_model(ckpt, weights: str = "ema", factory: str | None = None) -> nn.Module:
    """Rebuild the checkpoint's model (``build(**ckpt.meta["model_config"])``), load its
    ``weights`` (``ema`` or ``model``) strictly and return it in eval mode."""
    stored = ckpt.meta.get("train_config")
    saved = stored.get("model_factory") if isinstance(stored, dict) else None
    if saved and factory != saved:
        raise ModelLoadError(f"this checkpoint's model was built by {saved!r}; name that "
                             f"factory to rebuild it (--model-factory {saved})")
    if weights not in WEIGHTS:
        raise ModelLoadError(f"weights must be 'ema' or 'model', got {weights!r}")
    if "model_config" not in ckpt.meta:
        raise ModelLoadError("the checkpoint holds no model_config")
    stored = ckpt.state_dict(weights)
    if not stored:
        raise ModelLoadError(f"the {weights} weights do not fit the model: the checkpoint holds "
                             f"no {weights}.* tensors")
    _check_sizes_fit(ckpt.meta["model_config"], stored)
    net = model_builder(factory)(**ckpt.meta["model_config"])
    try:
        net.load_state_dict(stored, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelLoadError(f"the {weights} weights do not fit the model: {first}") from None
    return net.eval()
