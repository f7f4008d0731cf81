"""Residual units of any torch model, as the trained-model checks (C8, C9) and the gates see them.

A *residual unit* maps a state z to a state of the same shape, U(z) = z + branch(z) (DESIGN.md
section 3d).  This toolkit's backbones call their units as ``unit(z, c, e)`` (the conditioning c
and the time embedding e); the probes of :mod:`rdm_dynamics.analysis.backbone_probes` rely on that
call.  Other models call their units in their own way (diffusers: ``block(hidden_states,
timestep=..., class_labels=...)``, ``resnet(hidden_states, temb)``, ``attn(hidden_states)``).
:func:`adapt_units` gives such a model the toolkit's view without changing its weights or its
state dict:

* every unit's instance ``forward`` is routed through a :class:`UnitView` (not registered as a
  submodule, so the state dict is unchanged), called as ``view(z, c, e)``, where z is the state
  (the first positional argument, or the keyword ``hidden_states``), c a :class:`CallArgs` holding
  every other argument of the call, and e an empty :class:`CallArgs`;
* ``CallArgs`` behaves as the probes need a conditioning tensor to: ``.to(dtype)`` casts its
  floating feature tensors (two or more dimensions, such as a time embedding (B, D)), while
  per-sample scalars (1-d: diffusion timesteps, labels) stay as they are, as they do when a
  whole model is cast (diffusers embeds the timestep in float32); ``.detach()`` detaches them.

The probes hook the views; the model's own code still calls its units as it always did.

Neural-RDM gates for an existing model (:func:`add_rdm_gates`): each unit U becomes

    z' = z + alpha * (U(z) - z) + beta,       alpha, beta per channel (learnable),

alpha initialised at the ODE-consistent step 1/L (``gates.resolve_alpha_init``; L the number of
units) or any schedule or number, beta at 0.  The branch U(z) - z is the unit's whole
contribution, whatever it is made of: a unit with its own gate keeps it (DiT's adaLN-Zero
g(c) * F stays inside, and alpha multiplies it: z + alpha g(c) F(z) + beta), so the rdm gate is a
change *around* the unit, the paper's "simple change to the common architecture".  With alpha = 1
and beta = 0 the gated unit computes U(z) - z + z, the unconverted unit up to rounding.  The
channel axis is the last for tokens (B, N, D) and the second for maps (B, C, H, W).
"""

from __future__ import annotations

import torch
from torch import nn

from .gates import resolve_alpha_init

__all__ = ["CallArgs", "UnitView", "adapt_units", "unit_views", "add_rdm_gates", "RDMUnitGate",
           "STATE_KEYWORDS", "contiguous_tangents",
           "trace_order"]

#: Keyword names under which a unit may receive its state when no positional argument is given.
STATE_KEYWORDS = ("hidden_states", "input_tensor", "x", "sample")


def _cast(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(_cast(v, fn) for v in value)
    if isinstance(value, list):
        return [_cast(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _cast(v, fn) for k, v in value.items()}
    return value


class CallArgs:
    """The arguments of a unit's call other than its state (module docstring)."""

    def __init__(self, args: tuple = (), kwargs: dict | None = None):
        self.args, self.kwargs = tuple(args), dict(kwargs or {})

    def to(self, dtype: torch.dtype) -> CallArgs:
        """Floating tensors of two or more dimensions cast to ``dtype``; the rest as it is."""
        def fn(t):
            return t.to(dtype) if t.is_floating_point() and t.ndim >= 2 else t
        return CallArgs(_cast(self.args, fn), _cast(self.kwargs, fn))

    def detach(self) -> CallArgs:
        return CallArgs(_cast(self.args, torch.Tensor.detach),
                        _cast(self.kwargs, torch.Tensor.detach))


class RDMUnitGate(nn.Module):
    """alpha, beta per channel around a unit's output: z + alpha (u - z) + beta (module
    docstring)."""

    def __init__(self, channels: int, channels_last: bool, alpha: float, beta: float = 0.0):
        super().__init__()
        shape = (channels,) if channels_last else (channels, 1, 1)
        self.alpha = nn.Parameter(torch.full(shape, float(alpha)))
        self.beta = nn.Parameter(torch.full(shape, float(beta)))

    def forward(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return z + self.alpha * (u - z) + self.beta


class UnitView(nn.Module):
    """A unit called as the probes call units, ``view(z, c, e)`` (module docstring).  It calls the
    unit's class ``forward`` directly (never the routed instance attribute), then the unit's rdm
    gate if it has one, so the gated unit is what the checks see."""

    def __init__(self, unit: nn.Module, name: str = ""):
        super().__init__()
        self.unit = unit
        self.name = name  # the unit's qualified name in its model (set by adapt_units)

    @property
    def branch(self) -> nn.Module:
        """The unit itself (what ``models.depth_init`` groups units by: its class)."""
        return self.unit

    def forward(self, z: torch.Tensor, c: CallArgs, e: CallArgs | None = None) -> torch.Tensor:
        z = _contiguous_dual(z)
        u = type(self.unit).forward(self.unit, z, *c.args, **c.kwargs)
        gate = getattr(self.unit, "rdm_gate", None)
        return u if gate is None else gate(z, u)


def _contiguous_dual(z: torch.Tensor) -> torch.Tensor:
    """A dual number z with contiguous primal and tangent (the same values): some kernels' forward
    derivatives (GroupNorm) view them and fail on strided ones (the probes' C8 pass)."""
    import torch.autograd.forward_ad as fwAD

    primal, tangent = fwAD.unpack_dual(z)
    if tangent is None or (tangent.is_contiguous() and primal.is_contiguous()):
        return z
    return fwAD.make_dual(primal.contiguous(), tangent.contiguous())


def contiguous_tangents(module: nn.Module, args: tuple) -> tuple:
    """A forward pre-hook: every argument with a contiguous forward-mode tangent
    (:func:`_contiguous_dual`); register it on the GroupNorms of a model whose maps may leave a
    strided state (diffusers' attention returns channels-last strides)."""
    return tuple(_contiguous_dual(a) if isinstance(a, torch.Tensor) else a for a in args)


class _Route:
    """The unit's instance ``forward``: its call handed to its view."""

    def __init__(self, view: UnitView):
        self.view = view

    def __call__(self, *args, **kwargs):
        if args:
            z, rest = args[0], args[1:]
        else:
            key = next((k for k in STATE_KEYWORDS if k in kwargs), None)
            if key is None:
                raise TypeError("a residual unit was called without its state (no positional "
                                f"argument and none of {', '.join(STATE_KEYWORDS)})")
            z, rest = kwargs.pop(key), ()
        return self.view(z, CallArgs(rest, kwargs), CallArgs())


def adapt_units(units: list[nn.Module], model: nn.Module | None = None) -> list[UnitView]:
    """Route each unit's calls through a :class:`UnitView` (module docstring) and return the
    views, in the order given, named by their qualified names in ``model``; a unit adapted
    before keeps its view."""
    names = {id(m): n for n, m in model.named_modules()} if model is not None else {}
    views = []
    for i, unit in enumerate(units):
        route = unit.__dict__.get("forward")
        if not isinstance(route, _Route):
            route = _Route(UnitView(unit, names.get(id(unit), f"unit{i}")))
            unit.forward = route
        views.append(route.view)
    return views


def unit_views(units: list[nn.Module]) -> list[UnitView]:
    """The views of adapted units (their routes' views), in order."""
    return [unit.__dict__["forward"].view for unit in units]


def add_rdm_gates(units: list[nn.Module], shapes: list[tuple[int, ...]],
                  alpha_init: str | float = "rdm", beta_init: float = 0.0) -> None:
    """Give each unit an rdm gate (module docstring) for states of shape ``shapes[i]`` (one
    sample's, or a batch's: 3-d tokens are channels last, 4-d maps channels first); alpha starts
    at ``resolve_alpha_init(alpha_init, len(units))``.  The units must have been adapted
    (:func:`adapt_units`), whose views apply the gate.  The gate is registered as the unit's
    submodule ``rdm_gate`` (its parameters are in the model's state dict and optimiser)."""
    alpha = resolve_alpha_init(alpha_init, len(units))
    for unit, shape in zip(units, shapes, strict=True):
        if not isinstance(unit.__dict__.get("forward"), _Route):
            raise ValueError("add_rdm_gates: adapt the units first (adapt_units)")
        channels_last = len(shape) == 3
        channels = shape[-1] if channels_last else shape[1]
        unit.rdm_gate = RDMUnitGate(channels, channels_last, alpha, beta_init)


def trace_order(net: nn.Module, candidates: list[nn.Module], x, t, y):
    """The candidates that run in ``net(x, t, y)``, in the order they run, with their input
    shapes.  ValueError if one runs more than once (the probes' hooks see each unit once) or
    returns a state of another shape than its input (not a residual unit)."""
    calls = []

    def record(module, args, kwargs, out):
        z = args[0] if args else next(iter(kwargs.values()))
        calls.append((module, tuple(z.shape), tuple(getattr(out, "shape", ()))))

    hooks = [m.register_forward_hook(record, with_kwargs=True) for m in candidates]
    try:
        with torch.no_grad():
            net(x, t, y)
    finally:
        for h in hooks:
            h.remove()
    seen = [id(m) for m, _, _ in calls]
    if len(seen) != len(set(seen)):
        raise ValueError("a residual unit runs more than once in one forward pass")
    for m, shape_in, shape_out in calls:
        if shape_in != shape_out:
            raise ValueError(f"{type(m).__name__} maps a state of shape {shape_in} to "
                             f"{shape_out}: not a residual unit (state -> state)")
    return [m for m, _, _ in calls], [s for _, s, _ in calls]
