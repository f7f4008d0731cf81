"""Models rebuilt from checkpoints: the builder a model was made by, and its saved weights.

A checkpoint stores the model's ``config`` (the keyword arguments that rebuild it,
``build(**config)``) and its weights under prefixes (``model``, ``ema``).  The builder is
:func:`~rdm_dynamics.models.build_model` or a ``package.module:function`` with the same signature.
A checkpoint never chooses which code to import: a model trained with a custom factory (recorded
in the stored training configuration) is rebuilt only if the caller names that same factory.

This module reads a checkpoint duck-typed, through ``ckpt.meta`` (a mapping) and
``ckpt.state_dict(prefix)``, so it needs nothing from the training code.  A mismatch is a
:class:`ModelLoadError` (a ValueError).
"""

from __future__ import annotations

import importlib

from torch import nn

__all__ = ["ModelLoadError", "model_builder", "load_model"]

WEIGHTS = ("ema", "model")


class ModelLoadError(ValueError):
    """A model that cannot be rebuilt from a checkpoint: wrong factory, weights or shapes."""


def model_builder(factory: str | None = None):
    """``rdm_dynamics.models.build_model``, or a ``module:function`` with the same signature.

    Raises ModelLoadError if ``factory`` is malformed or cannot be imported.
    """
    if not factory:
        from . import build_model

        return build_model
    module, _, name = factory.partition(":")
    if not module or not name:
        raise ModelLoadError(f"model factory must look like 'package.module:function', got "
                             f"{factory!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"cannot import model factory {factory!r}: {exc}") from None


def load_model(ckpt, weights: str = "ema", factory: str | None = None) -> nn.Module:
    """Rebuild the checkpoint's model (``build(**ckpt.meta["model_config"])``), load its
    ``weights`` (``ema`` or ``model``) strictly and return it in eval mode."""
    saved = (ckpt.meta.get("train_config") or {}).get("model_factory")
    if saved and factory != saved:
        raise ModelLoadError(f"this checkpoint's model was built by {saved!r}; name that "
                             f"factory to rebuild it (--model-factory {saved})")
    if weights not in WEIGHTS:
        raise ModelLoadError(f"weights must be 'ema' or 'model', got {weights!r}")
    if "model_config" not in ckpt.meta:
        raise ModelLoadError("the checkpoint holds no model_config")
    net = model_builder(factory)(**ckpt.meta["model_config"])
    try:
        net.load_state_dict(ckpt.state_dict(weights), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelLoadError(f"the {weights} weights do not fit the model: {first}") from None
    return net.eval()
