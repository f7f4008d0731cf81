"""Probes of a backbone's residual stream: what every unit receives and returns, in several
precisions, with injected perturbations carried forward by JVPs, and with its adjoint.

A backbone (``rdm_dynamics.models``) lists its gated residual units in forward order
(``residual_units()``); unit i maps its input a_i to its output z_i = U_i(a_i; c, e).  Between
units run the backbone's other maps (patch embedding, transitions, long skips, the head), which
carry z_i on to later units and to the output.  Everything here works through forward hooks on
the units, so it applies to any backbone whose units are :class:`~rdm_dynamics.models.ResidualUnit`
(flow-shaped transformers, U-Nets, images and videos) without knowing its topology.

* :func:`run_traced`: the output and every unit's input and output (per-sample rows: a unit's
  state has B or B T rows, sample-major, so ``state.reshape(B, -1)`` is one row per sample).
* :func:`lowp_units_pass` (C8): the network in float64 with every unit computed in a low
  precision (its input cast down, its weights a low-precision copy, its output cast back up), so
  that every rounding error enters the stream at a unit: z~_i = U_i(a~_i) + r_i, with the local
  rounding error r_i = U_i^lowp(a~_i) - U_i(a~_i) measured in float64 at the pass's own inputs.
* :func:`linear_response` (C8): the first-order prediction of the output error from the local
  errors, sum_i J_{i->out} r_i, where J_{i->out} is the Jacobian of the output with respect to
  z_i with all later maps held at the float64 pass (the discrete variation-of-constants formula;
  proof in proofs/C8_trained-propagation.md).  One forward-mode pass computes the sum: a tangent
  r_i is added at each unit's output, and forward-mode AD carries it through every later map.
* :func:`amplification` (C8): |J_{i->out} v| / |v| for random directions v at each unit output.
* :func:`unit_adjoints` (C9): autograd's dloss/da_i (the part that flows through unit i) and
  dloss/dz_i at every unit, and the adjoint step of each unit computed by its own
  vector-Jacobian product, dloss/da_i = dloss/dz_i dU_i/da_i (= p (I + alpha dF/dz) for a gated
  unit z + alpha F(z)); for a chain of units (each unit's input the previous unit's output) also
  the adjoint propagated from the last unit to the first by those steps alone.

Attention runs on PyTorch's math kernel here (``torch.nn.attention.sdpa_kernel``): the fused CPU
kernels have no forward-mode derivative, and the math kernel is the reference computation anyway.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

__all__ = ["Trace", "run_traced", "per_sample_norm", "relative_errors", "lowp_units_pass",
           "LowpPass", "linear_response", "amplification", "unit_adjoints", "UnitAdjoints",
           "reference_kernels", "cast_model", "unit_vjp", "chain_adjoint"]


def reference_kernels():
    """Attention on the math kernel (forward-mode AD and float64 both work there)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def per_sample_norm(state: torch.Tensor, batch: int) -> torch.Tensor:
    """The L2 norm of each sample's rows of a state (B or B T rows, sample-major): (B,)."""
    return state.reshape(batch, -1).double().norm(dim=1)


def relative_errors(states: list[torch.Tensor], reference: list[torch.Tensor],
                    batch: int) -> torch.Tensor:
    """|s_i - r_i| / |r_i| per unit and sample, in float64: (L, B)."""
    return torch.stack([per_sample_norm(s.double() - r.double(), batch)
                        / per_sample_norm(r, batch) for s, r in zip(states, reference,
                                                                    strict=True)])


def cast_model(net: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``net`` with every parameter and buffer in ``dtype``, in eval mode."""
    return copy.deepcopy(net).to(dtype).eval()


@dataclass
class Trace:
    """One forward pass: the output and each unit's inputs and outputs, in forward order."""

    output: torch.Tensor
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]


@contextlib.contextmanager
def _hooks(units, hook):
    handles = [u.register_forward_hook(lambda m, a, o, i=i: hook(i, m, a, o))
               for i, u in enumerate(units)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _units(net: nn.Module) -> list[nn.Module]:
    units = net.residual_units()
    if not units:
        raise ValueError("the backbone has no residual units")
    return units


def run_traced(net: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
               autocast=None) -> Trace:
    """``net(x, t, y)`` (no gradients) with every unit's input and output recorded."""
    inputs, outputs = [], []

    def hook(i, module, args, out):
        inputs.append(args[0])
        outputs.append(out)

    with torch.no_grad(), _hooks(_units(net), hook), autocast or contextlib.nullcontext():
        out = net(x, t, y)
    return Trace(out, inputs, outputs)


@dataclass
class LowpPass:
    """The float64 network with its units in low precision (module docstring)."""

    trace: Trace  # the pass itself (float64 states)
    local_errors: list[torch.Tensor]  # r_i, float64, each unit output's shape


def lowp_units_pass(net64: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                    dtype: torch.dtype) -> LowpPass:
    """Run float64 ``net64`` with every unit replaced by its ``dtype`` copy; record the local
    rounding errors r_i = U_i^lowp(a~_i) - U_i(a~_i) (both at the pass's own input a~_i)."""
    units = _units(net64)
    lowp = [cast_model(u, dtype) for u in units]
    inputs, outputs, errors = [], [], []

    def hook(i, module, args, exact):
        z, c, e = args
        rounded = lowp[i](z.to(dtype), c.to(dtype), e.to(dtype)).to(torch.float64)
        inputs.append(z)
        outputs.append(rounded)
        errors.append(rounded - exact)
        return rounded

    with torch.no_grad(), reference_kernels(), _hooks(units, hook):
        out = net64(x, t, y)
    return LowpPass(Trace(out, inputs, outputs), errors)


def linear_response(net64: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                    perturbations: dict[int, torch.Tensor]) -> Trace:
    """First-order response of the float64 network to ``perturbations`` {unit i: r_i} added to
    unit outputs: ``output`` is sum_i J_{i->out} r_i, ``outputs[j]`` the carried error at unit j
    (its own r_j included).  Units without a perturbation add none (their Jacobians still
    carry the others)."""
    units = _units(net64)
    carried = []

    def hook(i, module, args, out):
        if i in perturbations:
            out = out + fwAD.make_dual(torch.zeros_like(out), perturbations[i].to(out))
        tangent = fwAD.unpack_dual(out).tangent
        carried.append(torch.zeros_like(out) if tangent is None else tangent.clone())
        return out

    with torch.no_grad(), reference_kernels(), fwAD.dual_level(), _hooks(units, hook):
        out = net64(x, t, y)
        tangent = fwAD.unpack_dual(out).tangent
        response = torch.zeros_like(fwAD.unpack_dual(out).primal) if tangent is None \
            else tangent.clone()
    return Trace(response, [], carried)


def amplification(net64: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                  generator: torch.Generator, states: list[torch.Tensor]) -> torch.Tensor:
    """|J_{i->out} v_i| / |v_i| per unit i and sample, for v_i a standard normal direction in the
    shape of unit i's output (``states[i]``), one forward-mode pass per unit: (L, B)."""
    B = x.shape[0]
    rows = []
    for i, z in enumerate(states):
        v = torch.randn(z.shape, generator=generator, dtype=torch.float64).to(z.device)
        response = linear_response(net64, x, t, y, {i: v}).output
        rows.append(per_sample_norm(response, B) / per_sample_norm(v, B))
    return torch.stack(rows)


def unit_vjp(unit: nn.Module, z: torch.Tensor, c: torch.Tensor, e: torch.Tensor,
             cotangent: torch.Tensor) -> torch.Tensor:
    """The adjoint step of one unit: p_in = p_out dU/da at the unit's input ``z`` (its whole
    Jacobian, the identity path included: U(a) = a + branch)."""
    with reference_kernels():
        a = z.detach().requires_grad_(True)
        return torch.autograd.grad(unit(a, c, e), a, cotangent)[0]


def chain_adjoint(p_last: torch.Tensor, step, units: int) -> torch.Tensor:
    """p_0 from p_L by the units' own steps alone, last unit first: p = step(i, p) for
    i = L-1, ..., 0 (``step(i, p)`` is unit i's VJP)."""
    p = p_last
    for i in reversed(range(units)):
        p = step(i, p)
    return p


@dataclass
class UnitAdjoints:
    """Adjoints at every unit (one row per sample): autograd's |dloss/da_i|, |dloss/dz_i|, and
    the relative error of each unit's own VJP step against autograd's dloss/da_i."""

    input_norms: torch.Tensor  # (L, B) |dloss/da_i|
    output_norms: torch.Tensor  # (L, B) |dloss/dz_i|
    step_errors: torch.Tensor  # (L, B) |vjp_i(dloss/dz_i) - dloss/da_i| / |dloss/da_i|
    #: where every unit's input is the previous unit's output (a chain, e.g. the transformer):
    #: |p_0 - autograd's dloss/da_1| / |dloss/da_1| per sample, p_0 propagated from autograd's
    #: p_L by the units' own VJPs alone; None for other topologies (a U-Net)
    chain_errors: torch.Tensor | None = None


def unit_adjoints(net64: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                  target: torch.Tensor, skip_vjp: tuple[int, ...] = ()) -> UnitAdjoints:
    """Backpropagate loss = sum_b |net(x_b) - target_b|^2 / 2 through the float64 network and
    compare autograd's adjoint at each unit's input with the unit's own VJP of autograd's adjoint
    at its output.  ``skip_vjp``: units whose VJP is replaced by the identity (a negative
    control: the step p_i = p_{i+1} without the unit's Jacobian)."""
    units = _units(net64)
    B = x.shape[0]
    records = []

    def hook(i, module, args, out):
        z, c, e = args
        if z.requires_grad:
            z.retain_grad()
        out.retain_grad()
        records.append((module, z, c.detach(), e.detach(), out))

    raw_inputs = []

    def own_input(module, args):  # an alias of a_i that only unit i consumes (see below)
        raw_inputs.append(args[0])
        return (args[0].view_as(args[0]), *args[1:])

    # A state may feed several maps (in a U-Net the last encoder unit's output is both the
    # middle's input and a long skip); the alias makes dloss/da_i the adjoint that flows through
    # unit i alone, which is what the unit's own step p_out dU_i/da_i must reproduce.
    pre = [u.register_forward_pre_hook(own_input) for u in units]
    x = x.detach().requires_grad_(True)  # so every state carries a gradient
    try:
        with reference_kernels(), _hooks(units, hook):
            out = net64(x, t, y)
            loss = 0.5 * (out - target).pow(2).sum()
            loss.backward()
    finally:
        for h in pre:
            h.remove()
    def step(i, cotangent):  # p_in = p_out dU_i/da (the identity for a skipped unit)
        if i in skip_vjp:
            return cotangent
        module, z, c, e, _ = records[i]
        return unit_vjp(module, z, c, e, cotangent)

    in_norms, out_norms, errors = [], [], []
    for i, (_, z, _, _, out_i) in enumerate(records):
        g_in, g_out = z.grad, out_i.grad
        in_norms.append(per_sample_norm(g_in, B))
        out_norms.append(per_sample_norm(g_out, B))
        errors.append(per_sample_norm(step(i, g_out) - g_in, B) / per_sample_norm(g_in, B))
    chain = None
    if all(raw_inputs[i + 1] is records[i][4] for i in range(len(records) - 1)):
        p = chain_adjoint(records[-1][4].grad, step, len(records))
        g0 = records[0][1].grad
        chain = per_sample_norm(p - g0, B) / per_sample_norm(g0, B)
    net64.zero_grad(set_to_none=True)
    return UnitAdjoints(torch.stack(in_norms), torch.stack(out_norms), torch.stack(errors),
                        chain)
