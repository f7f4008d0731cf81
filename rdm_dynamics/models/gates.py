"""The five residual structures ("gates") every Neural-RDM backbone accepts by name.

A residual unit maps a state z and the conditioning of its sample to a state of the same shape.
The state is either tokens, channels last (..., D), or feature maps, channels first (B, C, H, W).
The conditioning is c (B, Dc), the sum of the time and class embeddings, and e (B, Dc), the time
embedding alone.  With F the unit's residual branch (attention, MLP or convolutions):

    plain       z' = z + F(m(N z))                      the pre-norm residual unit, gate 1
    post-ln     z' = N'(z + F(m(z)))                     the post-norm residual unit
    rezero      z' = z + a F(m(z))                       a: one scalar, a = 0 at init (ReZero)
    adaln-zero  z' = z + g(c) * F(m(N z))                g = W_g SiLU(c) + b_g, 0 at init (DiT)
    rdm         z' = z + alpha * F(m(N z)) + beta        alpha, beta: learnable, per channel

``*`` is per channel.  N is a normalisation without affine parameters (LayerNorm over the channels
of a token, GroupNorm for maps) and N' the same with them.  Every gate with a normalisation can
be built without it (``make_gate(..., norm=False)``: N = N' = identity); plain then is the
textbook residual unit z + F(m(z)) of C5's theory.  m is the adaptive modulation through
which the conditioning reaches every branch, the same for every gate:

    m(h) = h * (1 + s(c)) + u(c),     [u, s] = W_m SiLU(c) + b_m,   W_m = b_m = 0 at init,

so at initialisation no branch depends on the conditioning, and the bias b_m is the learnable
affine part of N.  Only ``adaln-zero`` also regresses its gate from c (DiT's adaLN-Zero).

The ``rdm`` gate (Neural-RDM, DESIGN.md claim 2), and the two choices it leaves open:

* Initialisation.  ``alpha_init`` is a gate schedule of :mod:`rdm_dynamics.stack` or a number.  The
  default ``"rdm"`` is the schedule's ODE-consistent step alpha_i = h = 1/L, L the number of
  residual units of the backbone: the backbone then starts as the explicit Euler scheme of the
  depth flow dz/dtau = F(z, tau) on [0, 1] (claim C1), so the growth of the residual stream and
  of its gradients is bounded by exp(sum_i alpha_i Lip F_i) = exp(mean_i Lip F_i), independent of
  the depth (C5, C6), while every branch receives gradient from the first step.  ``0.0`` gives
  identity-at-init (each unit is exactly the identity, as with rezero and adaln-zero, and only
  the gates get gradient at the first step); ``"plain"`` (1.0) starts as the plain residual
  network.  ``beta_init`` defaults to 0: beta_i is the unit's drift offset (in C4 it carries the
  change of the mean, mu_{i+1} - C_i mu_i), and at initialisation nothing is known about it.
  When F ends in a biased linear map (W h + b), alpha * (W h + b) + beta shows that beta adds no
  expressivity; it changes the parameterisation (and its optimisation), not the function class.
* Time conditioning.  By default alpha_i, beta_i are constants of the unit, the same at every
  diffusion time: they are the step sizes of the depth flow, as in the theory's stack.  With
  ``time_conditioned=True`` they become functions of the diffusion time,

      alpha_i(t) = alpha_i + A_i SiLU(e(t)),   beta_i(t) = beta_i + B_i SiLU(e(t)),

  with A_i = B_i = 0 at init, so a time-conditioned model starts as the constant-gate one.

Per-channel parameters are stored in the shape that broadcasts against the state: (D,) for
tokens, (C, 1, 1) for feature maps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..stack import get_schedule

__all__ = ["GATE_KINDS", "gate_class", "Gate", "PlainGate", "PostNormGate", "ReZeroGate",
           "AdaLNZeroGate", "RDMGate", "Modulation", "ResidualUnit", "make_gate", "make_norm",
           "per_sample", "resolve_alpha_init"]

GATE_KINDS = ("plain", "post-ln", "rezero", "adaln-zero", "rdm")


def per_sample(v: torch.Tensor, z: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Reshape a per-sample, per-channel tensor v (B, C) to broadcast against the state z."""
    ones = (1,) * (z.ndim - 2)
    return v.view(v.shape[0], *ones, v.shape[1]) if channels_last else v.view(*v.shape, *ones)


def make_norm(channels: int, channels_last: bool, affine: bool, groups: int = 32) -> nn.Module:
    """LayerNorm over the channels of a token, or GroupNorm with gcd(groups, C) groups for maps."""
    if channels_last:
        return nn.LayerNorm(channels, eps=1e-6, elementwise_affine=affine)
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6, affine=affine)


def resolve_alpha_init(spec: str | float, num_units: int) -> float:
    """The initial alpha of an rdm gate: a number, or a stack gate schedule's step scale s(L, 1/L).

    ``"rdm"``/``"euler"``: 1/L (the ODE-consistent step); ``"inv-sqrt"``: 1/sqrt(L); ``"plain"``: 1.
    """
    if isinstance(spec, str):
        return float(get_schedule(spec).step_scale(num_units, 1.0 / num_units))
    return float(spec)


class Modulation(nn.Module):
    """``chunks`` per-sample, per-channel vectors regressed from the conditioning: W SiLU(c) + b."""

    def __init__(self, cond_dim: int, channels: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(cond_dim, chunks * channels)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(F.silu(c)).chunk(self.chunks, dim=1)

    def zero_(self) -> None:
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)


class Gate(nn.Module):
    """The residual structure around a branch F; subclasses give ``forward`` and ``values``.

    Args:
        channels: the state's channel count (D for tokens, C for maps).
        cond_dim: the dimension Dc of the conditioning vectors c and e.
        channels_last: tokens (..., D) if True, feature maps (B, C, H, W) if False.
        norm_groups: GroupNorm groups for maps (gcd with C is used).
        norm: build the gate's normalisation N (or N'); False replaces it by the identity, so
            that plain becomes the textbook residual unit z + F(m(z)).  Gates without one
            (``has_norm`` False: rezero) ignore it; ``make_gate`` refuses to set it for them.
    """

    kind = ""
    modulation_chunks = 2  # shift u and scale s of m
    #: whether the gate has a normalisation that the ``norm`` option can remove
    has_norm = True

    def __init__(self, channels: int, cond_dim: int, *, channels_last: bool = True,
                 norm_groups: int = 32, norm: bool = True):
        super().__init__()
        self.channels, self.channels_last = channels, channels_last
        self.channel_shape = (channels,) if channels_last else (channels, 1, 1)
        self.modulation = Modulation(cond_dim, channels, self.modulation_chunks)
        self.norm_groups = norm_groups
        self.normalised = bool(norm) and self.has_norm

    def own_norm(self, affine: bool) -> nn.Module:
        """The gate's normalisation (``make_norm``), or the identity when built without it."""
        if not self.normalised:
            return nn.Identity()
        return make_norm(self.channels, self.channels_last, affine=affine, groups=self.norm_groups)

    def modulate(self, h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """m(h) = h * (1 + s) + u, with s, u per sample and channel."""
        return torch.addcmul(per_sample(shift, h, self.channels_last), h,
                             1 + per_sample(scale, h, self.channels_last))

    def forward(self, z: torch.Tensor, branch: nn.Module, c: torch.Tensor,
                e: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def values(self, c: torch.Tensor, e: torch.Tensor) -> dict[str, torch.Tensor]:
        """The gate values alpha (and beta) at the conditioning (c, e) of one sample (batch 1)."""
        return {"alpha": torch.ones((), device=c.device)}

    def initialize(self, num_units: int) -> None:
        """Set the gate's initial values; ``num_units`` is the backbone's number of units L."""
        self.modulation.zero_()


class PlainGate(Gate):
    """z' = z + F(m(N z)): the pre-norm residual unit; the gate is 1 (a negative control)."""

    kind = "plain"

    def __init__(self, channels, cond_dim, **kwargs):
        super().__init__(channels, cond_dim, **kwargs)
        self.norm = self.own_norm(affine=False)

    def forward(self, z, branch, c, e):
        return z + branch(self.modulate(self.norm(z), *self.modulation(c)))


class PostNormGate(Gate):
    """z' = N'(z + F(m(z))): the post-norm residual unit of the original Transformer."""

    kind = "post-ln"

    def __init__(self, channels, cond_dim, **kwargs):
        super().__init__(channels, cond_dim, **kwargs)
        self.norm = self.own_norm(affine=True)

    def forward(self, z, branch, c, e):
        return self.norm(z + branch(self.modulate(z, *self.modulation(c))))


class ReZeroGate(Gate):
    """z' = z + a F(m(z)), one scalar a per unit, a = 0 at init: each unit starts as the identity
    (Bachlechner et al. 2021; no normalisation, as in ReZero)."""

    kind = "rezero"
    has_norm = False

    def __init__(self, channels, cond_dim, **kwargs):
        super().__init__(channels, cond_dim, **kwargs)
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, z, branch, c, e):
        return z + self.alpha * branch(self.modulate(z, *self.modulation(c)))

    def values(self, c, e):
        return {"alpha": self.alpha.detach()}

    def initialize(self, num_units):
        super().initialize(num_units)
        nn.init.zeros_(self.alpha)


class AdaLNZeroGate(Gate):
    """z' = z + g(c) * F(m(N z)) with [u, s, g] = W SiLU(c) + b, all zero at init (DiT's
    adaLN-Zero): each unit starts as the identity and its gate depends on the time and class."""

    kind = "adaln-zero"
    modulation_chunks = 3

    def __init__(self, channels, cond_dim, **kwargs):
        super().__init__(channels, cond_dim, **kwargs)
        self.norm = self.own_norm(affine=False)

    def forward(self, z, branch, c, e):
        shift, scale, gate = self.modulation(c)
        update = branch(self.modulate(self.norm(z), shift, scale))
        return torch.addcmul(z, per_sample(gate, z, self.channels_last), update)

    def values(self, c, e):
        return {"alpha": self.modulation(c)[2].detach()[0]}


class RDMGate(Gate):
    """z' = z + alpha * F(m(N z)) + beta, alpha and beta learnable per channel (Neural-RDM).

    Args (besides those of :class:`Gate`):
        alpha_init: a stack gate schedule name or a number (module docstring); default 1/L.
        beta_init: the initial beta (default 0).
        time_conditioned: alpha, beta are functions of the diffusion time (module docstring).
    """

    kind = "rdm"

    def __init__(self, channels, cond_dim, *, alpha_init: str | float = "rdm",
                 beta_init: float = 0.0, time_conditioned: bool = False, **kwargs):
        super().__init__(channels, cond_dim, **kwargs)
        resolve_alpha_init(alpha_init, 1)  # fail at build time on an unknown schedule
        self.alpha_init, self.beta_init = alpha_init, float(beta_init)
        self.time_conditioned = bool(time_conditioned)
        self.norm = self.own_norm(affine=False)
        self.alpha = nn.Parameter(torch.empty(self.channel_shape))
        self.beta = nn.Parameter(torch.empty(self.channel_shape))
        self.time_gates = Modulation(cond_dim, channels, 2) if self.time_conditioned else None

    def gates(self, z: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, beta), broadcastable against z: constants, or functions of the time e."""
        if self.time_gates is None:
            return self.alpha, self.beta
        d_alpha, d_beta = self.time_gates(e)
        return (self.alpha + per_sample(d_alpha, z, self.channels_last),
                self.beta + per_sample(d_beta, z, self.channels_last))

    def forward(self, z, branch, c, e):
        alpha, beta = self.gates(z, e)
        update = branch(self.modulate(self.norm(z), *self.modulation(c)))
        return torch.addcmul(z + beta, alpha, update)

    def values(self, c, e):
        probe = torch.zeros((1, self.channels) + (1,) * (len(self.channel_shape) - 1),
                            device=e.device)
        alpha, beta = self.gates(probe, e)
        return {"alpha": alpha.detach().reshape(-1, self.channels)[0],
                "beta": beta.detach().reshape(-1, self.channels)[0]}

    def initialize(self, num_units):
        super().initialize(num_units)
        nn.init.constant_(self.alpha, resolve_alpha_init(self.alpha_init, num_units))
        nn.init.constant_(self.beta, self.beta_init)
        if self.time_gates is not None:
            self.time_gates.zero_()


GATES: dict[str, type[Gate]] = {g.kind: g for g in
                                (PlainGate, PostNormGate, ReZeroGate, AdaLNZeroGate, RDMGate)}


def gate_class(kind: str) -> type[Gate]:
    """The gate class of that name (the one place gate names are validated): ValueError for a
    name not in ``GATE_KINDS``."""
    try:
        return GATES[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown gate {kind!r}; choose one of {', '.join(GATE_KINDS)}") from None


def make_gate(kind: str, channels: int, cond_dim: int, *, channels_last: bool = True,
              norm_groups: int = 32, rdm_alpha_init: str | float = "rdm",
              rdm_beta_init: float = 0.0, rdm_time_conditioned: bool = False,
              norm: bool | None = None) -> Gate:
    """Build a gate by name (one of ``GATE_KINDS``); the ``rdm_*`` options apply to ``rdm`` only.

    ``norm`` None builds the gate as it is defined; True or False with or without its
    normalisation (ValueError for a gate that has none, or a value that is not a bool).
    """
    gate = gate_class(kind)
    if norm is not None and (not isinstance(norm, bool) or not gate.has_norm):
        why = "has no normalisation" if isinstance(norm, bool) else "takes true or false"
        raise ValueError(f"gate {kind!r}: norm={norm!r} is not an option ({kind} {why})")
    common = {"channels_last": channels_last, "norm_groups": norm_groups,
              "norm": True if norm is None else norm}
    if kind == "rdm":
        return RDMGate(channels, cond_dim, alpha_init=rdm_alpha_init, beta_init=rdm_beta_init,
                       time_conditioned=rdm_time_conditioned, **common)
    return gate(channels, cond_dim, **common)


class ResidualUnit(nn.Module):
    """One gated residual unit, z -> gate(z, F; c, e): what the theory probes see of a backbone.

    ``name`` is the unit's module path in its backbone (set by the backbone, e.g. ``blocks.3.mlp``).
    """

    def __init__(self, gate: Gate, branch: nn.Module):
        super().__init__()
        self.gate, self.branch = gate, branch
        self.name = ""

    def forward(self, z: torch.Tensor, c: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.gate(z, self.branch, c, e)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, gate={self.gate.kind!r}"
