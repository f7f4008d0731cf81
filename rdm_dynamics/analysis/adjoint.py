"""Adjoints across depth: backpropagation through a gated stack against the adjoint ODE.

For a loss l(z_L), backpropagation through z_{i+1} = z_i + alpha_i F(z_i, t_i) + beta_i gives the
adjoint (row vector) p_i = dl/dz_i by

    p_L = dl/dz_L,   p_i = p_{i+1} (I + diag(alpha_i) dF/dz(z_i, t_i)),
    dl/dtheta = sum_i p_{i+1} diag(alpha_i) dF/dtheta(z_i, t_i),

which, with alpha_i = h a(t_i), is the Euler discretisation of the adjoint (Residual-Sensitivity)
ODE of dz/dt = a(t) F(z, t) + b(t), solved backwards from p(T) = dl/dz(T):

    dp/dt = -p a(t) dF/dz(z(t), t),    dl/dtheta = int_0^T p a dF/dtheta dt

(proofs/C6_residual-sensitivity.md).  ``backprop_adjoints`` computes the discrete side by autograd;
``adjoint_gradients`` the continuous side with torchdiffeq.odeint_adjoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..solvers import solve_ode_adjoint

__all__ = ["Adjoints", "backprop_adjoints", "adjoint_gradients", "linear_loss"]

Loss = Callable[[torch.Tensor], torch.Tensor]


def linear_loss(weights: torch.Tensor) -> Loss:
    """l(z) = sum_s <w_s, z_s>: its adjoint p_L = w is the same at every depth."""
    return lambda z: (weights * z).sum()


@dataclass
class Adjoints:
    """Gradients of a loss through a stack: p_i = dl/dz_i (L + 1, B, d) and dl/dtheta."""

    loss: torch.Tensor
    states: torch.Tensor
    adjoints: torch.Tensor
    param_grads: list[torch.Tensor]

    @property
    def sensitivity(self) -> torch.Tensor:
        """|p_0| / |p_L| per sample: how much the loss gradient grows back through the stack."""
        return self.adjoints[0].norm(dim=-1) / self.adjoints[-1].norm(dim=-1)


def backprop_adjoints(stack, z0: torch.Tensor, loss: Loss,
                      params: Sequence[torch.Tensor] = ()) -> Adjoints:
    """Run the stack unit by unit and backpropagate ``loss(z_L)`` to every state and ``params``."""
    z = z0.detach().requires_grad_(True)
    states = [z]
    with torch.enable_grad():
        for i in range(stack.depth):
            z = stack.unit(i, z)
            states.append(z)
        value = loss(z)
        grads = torch.autograd.grad(value, states + list(params), allow_unused=True)
    n = len(states)
    adjoints = torch.stack(grads[:n])
    param_grads = [torch.zeros_like(p) if g is None else g
                   for p, g in zip(params, grads[n:], strict=True)]
    return Adjoints(loss=value.detach(), states=torch.stack([s.detach() for s in states]),
                    adjoints=adjoints, param_grads=param_grads)


def adjoint_gradients(field: torch.nn.Module, z0: torch.Tensor, span: tuple[float, float],
                      loss: Loss, params: Sequence[torch.Tensor], **solver) -> tuple:
    """dl/dz0 and dl/dtheta for z(T) = flow of ``field`` (an nn.Module (t, z) -> dz/dt) from z0,
    by the continuous adjoint method (torchdiffeq.odeint_adjoint); ``solver`` goes to
    solvers.solve_ode_adjoint (method, rtol, atol, options).  Returns (dl/dz0, [dl/dtheta])."""
    z = z0.detach().requires_grad_(True)
    times = torch.tensor(span, dtype=z0.dtype, device=z0.device)
    with torch.enable_grad():
        out = solve_ode_adjoint(field, z, times, params=params, **solver)
        grads = torch.autograd.grad(loss(out[-1]), [z] + list(params))
    return grads[0], list(grads[1:])
