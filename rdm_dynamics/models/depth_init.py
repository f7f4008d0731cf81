"""Depth-smooth initialisation: unit i's initial weights are one smooth function of tau_i = i / L.

With the default (i.i.d.) initialisation the weights of the L residual units are independent
draws, so a backbone of depth N and one of depth 2N are unrelated random networks.  The
depth-smooth initialisation makes both discretisations of one continuous-depth model, the setting
of claim C1 and of the depth-consistency experiment C11 (train N and 2N, compare the weights).

Units are grouped by role: two units are in one group when their names differ only in the last
integer index (``blocks.3.attn`` and ``blocks.7.attn``; ``encoder.1.units.0`` and
``encoder.1.units.2``) and their branches are of one class (video DiTs alternate spatial and
temporal attention: two groups).  Within a group of n units, the j-th in forward order sits at
tau_j = j / n.  Every randomly initialised tensor theta of the unit becomes

    theta(tau) = sum_k phi_k(tau) A_k / sqrt(sum_k phi_k(tau)^2),   phi_k(tau) = cos(pi k tau),

k = 0..K-1, with modes A_k i.i.d. N(0, v I), v the variance of the tensor's default law
(:func:`default_variance`).  The normalisation keeps every entry's variance at v for every tau, so
each unit is distributed as under the default initialisation, only now smooth in depth; with
K = 1 every unit of a group starts with the same weights.  A_k is drawn from a generator seeded by
(seed, group, tensor name, k) alone, so it does not depend on the depth: the 2N model at
tau_(2j) = j / N has exactly the N model's weights at tau_j.  Tensors that the default
initialisation sets to a constant (norm scales 1, biases 0, zero-initialised gates, modulations and
heads) keep it; so do the gates' own initial values (rdm's alpha = 1/L is the step of the L-unit
discretisation).  Parameters outside the units (embeddings, conditioning, transitions) are redrawn
from the same kind of per-name generator, so that they too agree across depths.
"""

from __future__ import annotations

import hashlib
import math
import re

import torch
from torch import nn

from .gates import ResidualUnit

__all__ = ["INITS", "initialize", "smooth_in_depth_", "unit_groups", "default_variance"]

#: The initialisations a backbone can start from.
INITS = ("iid", "smooth")

_LAST_INDEX = re.compile(r"(.*)\.(\d+)((?:\.[^.]*)*)$")


def unit_groups(model: nn.Module) -> dict[str, list[ResidualUnit]]:
    """Residual units grouped by role, each group in forward order (module docstring)."""
    groups: dict[str, list[ResidualUnit]] = {}
    for unit in model.residual_units():
        match = _LAST_INDEX.match(unit.name)
        role = f"{match.group(1)}.*{match.group(3)}" if match else unit.name
        key = f"{role}[{_branch_kind(unit.branch)}]"
        groups.setdefault(key, []).append(unit)
    return groups


def _branch_kind(branch: nn.Module) -> str:
    """The branch's class, with the wrapped module's (``OnMaps(Attention)``) where it wraps one."""
    inner = getattr(branch, "inner", None)
    kind = type(branch).__name__
    return f"{kind}({type(inner).__name__})" if isinstance(inner, nn.Module) else kind


def default_variance(module: nn.Module, param: str, tensor: torch.Tensor,
                     qualified_name: str) -> float:
    """The variance of the default law of a randomly initialised tensor.

    * ``nn.Linear`` weights: Xavier uniform, 2 / (fan_in + fan_out); the conditioning's time MLP
      and label table (names under ``cond.``): N(0, 0.02^2).
    * ``nn.Conv2d``: PyTorch's default, uniform with bound 1/sqrt(fan_in) for weight and bias,
      variance 1 / (3 fan_in); the transformer's patch embedding is Xavier on the flattened patch.
    Raises ValueError for a tensor no rule covers, so a new layer cannot be initialised silently.
    """
    if qualified_name.startswith("cond.") and param == "weight":
        return 0.02 ** 2
    if isinstance(module, nn.Linear) and param == "weight":
        fan_out, fan_in = tensor.shape
        return 2.0 / (fan_in + fan_out)
    if isinstance(module, nn.Conv2d):
        fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
        if qualified_name.startswith("patch_embed") and param == "weight":
            return 2.0 / (fan_in + module.out_channels)
        if param in ("weight", "bias"):
            return 1.0 / (3.0 * fan_in)
    raise ValueError(f"--init smooth knows no default law for {qualified_name} "
                     f"({type(module).__name__} {param}) of this model: it covers the toolkit's "
                     "own backbones; train this one with --init iid (its own initialisation)")


def _generator(seed: int, *key) -> torch.Generator:
    """A generator seeded by (seed, key) alone: a 64-bit BLAKE2 digest of their text."""
    text = ":".join(map(str, (seed, *key))).encode()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(text, digest_size=8)
                                                        .digest(), "little"))


def _is_constant(tensor: torch.Tensor) -> bool:
    flat = tensor.detach().reshape(-1)
    return flat.numel() == 0 or bool((flat == flat[0]).all())


def _random_tensors(module: nn.Module, prefix: str = ""):
    """(owning module, local name, qualified name, parameter) for every non-constant parameter."""
    for mod_name, mod in module.named_modules():
        for name, p in mod.named_parameters(recurse=False):
            qualified = ".".join(n for n in (prefix, mod_name, name) if n)
            if not _is_constant(p):
                yield mod, name, qualified, p


@torch.no_grad()
def smooth_in_depth_(model: nn.Module, seed: int, modes: int = 3) -> nn.Module:
    """Reinitialise ``model`` (a GatedBackbone) depth-smoothly in place (module docstring)."""
    if int(modes) < 1:
        raise ValueError(f"modes must be a positive integer, got {modes!r}")
    in_units = set()
    for key, units in unit_groups(model).items():
        n = len(units)
        taus = torch.arange(n, dtype=torch.float64) / n
        basis = torch.stack([torch.cos(math.pi * k * taus) for k in range(modes)])  # (K, n)
        basis = basis / basis.square().sum(0).sqrt()
        per_unit = [list(_random_tensors(u)) for u in units]
        for u in units:
            in_units.update(id(p) for p in u.parameters())
        names = [[q for _, _, q, _ in tensors] for tensors in per_unit]
        if any(ns != names[0] for ns in names):
            raise ValueError(f"the units of group {key} do not share their random tensors")
        for slot, (mod, pname, qualified, p) in enumerate(per_unit[0]):
            v = default_variance(mod, pname, p, qualified)
            gens = [_generator(seed, key, qualified, k) for k in range(modes)]
            A = torch.stack([torch.randn(p.shape, generator=g, dtype=torch.float64) for g in gens])
            A = A * math.sqrt(v)
            for j, tensors in enumerate(per_unit):
                target = tensors[slot][3]
                value = torch.tensordot(basis[:, j], A, dims=1)
                target.copy_(value.to(dtype=target.dtype, device=target.device))
    for mod, pname, qualified, p in _random_tensors(model):
        if id(p) in in_units:
            continue
        v = default_variance(mod, pname, p, qualified)
        value = torch.randn(p.shape, generator=_generator(seed, qualified), dtype=torch.float64)
        p.copy_((value * math.sqrt(v)).to(dtype=p.dtype, device=p.device))
    return model


def initialize(model: nn.Module, init: str, seed: int, modes: int = 3) -> nn.Module:
    """Apply initialisation ``init`` (one of INITS) to a freshly built backbone.

    ``iid`` leaves the backbone's own initialisation untouched; ``smooth`` is
    :func:`smooth_in_depth_`.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    return smooth_in_depth_(model, seed, modes) if init == "smooth" else model
