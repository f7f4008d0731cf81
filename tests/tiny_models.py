"""Tiny configurations of the real backbones (rdm_dynamics.models), for tests that train."""

from rdm_dynamics.models import build_model

#: Architecture overrides that make each named configuration train in milliseconds per step.
TINY = {"RDM-DiT-T/2": {"depth": 1, "width": 32, "heads": 2},
        "RDM-UNet-T": {"width": 16, "norm_groups": 4}}


def tiny_model(name: str = "RDM-DiT-T/2", **kwargs):
    """``build_model(name, **TINY[name], **kwargs)``; kwargs may override the tiny sizes."""
    return build_model(name, **{**TINY[name], **kwargs})
