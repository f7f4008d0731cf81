"""How perturbations propagate through a gated residual stack: the discrete Gronwall bound.

Two runs of the same stack, z_{i+1} = Phi_i(z_i) and z~_{i+1} = Phi_i(z~_i) + e_i with
Phi_i(z) = z + alpha_i F_i(z) + beta_i, differ by delta_i = z~_i - z_i with

    |delta_{i+1}| <= (1 + g_i) |delta_i| + |e_i|,    g_i = max_c |alpha_{i,c}| Lip F_i,

so, by induction (proofs/C5_error-propagation.md),

    |delta_L| <= B_L := prod_i (1 + g_i) |delta_0| + sum_i prod_{j > i} (1 + g_j) |e_i|
              <= exp(sum_i g_i) (|delta_0| + sum_i |e_i|)        (the form DESIGN.md states).

The Lipschitz constants are certified upper bounds (lipschitz.py); a run in floating point adds
its own local rounding errors, bounded a priori by the rounding model (rounding.py), so
:func:`propagation_run` compares the measured |delta_i| against a bound that holds for the
computed runs, not just for exact arithmetic.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .lipschitz import stack_gains
from .rounding import BOUND_MARGIN, RoundingModel, stack_error_bounds

__all__ = ["gronwall_bound", "gronwall_exp_bound", "PropagationRun", "propagation_run",
           "cast_stack"]


def gronwall_bound(gains: torch.Tensor, delta0: torch.Tensor,
                   errors: torch.Tensor | None = None) -> torch.Tensor:
    """B_0 = |delta_0|, B_{i+1} = (1 + g_i) B_i + |e_i|: the bound at every layer, (L + 1, B).

    Args:
        gains: g_i >= 0, shape (L,) (see lipschitz.stack_gains).
        delta0: |delta_0| per sample, shape (B,).
        errors: |e_i| per layer and sample, shape (L, B); zero when omitted.
    """
    gains = gains.to(dtype=torch.float64, device=delta0.device)
    if (gains < 0).any():
        raise ValueError("Gronwall gains must be >= 0")
    b = delta0.to(torch.float64)
    out = [b]
    for i in range(gains.shape[0]):
        b = (1 + gains[i]) * b
        if errors is not None:
            b = b + errors[i].to(torch.float64)
        out.append(b)
    return torch.stack(out) * (1 + BOUND_MARGIN)


def gronwall_exp_bound(gains: torch.Tensor, delta0: torch.Tensor,
                       errors: torch.Tensor | None = None) -> torch.Tensor:
    """exp(sum_i g_i) (|delta_0| + sum_i |e_i|) per sample, shape (B,): the closed form."""
    total = delta0.to(torch.float64)
    if errors is not None:
        total = total + errors.to(torch.float64).sum(0)
    gains = gains.to(dtype=torch.float64, device=total.device)
    return torch.exp(gains.sum()) * total * (1 + BOUND_MARGIN)


def cast_stack(stack, dtype: torch.dtype):
    """A copy of ``stack`` with every parameter, gate and buffer rounded to ``dtype``."""
    return copy.deepcopy(stack).to(dtype)


@dataclass
class PropagationRun:
    """Measured deviation |z~_i - z_i| of two computed runs and its certified bound, (L + 1, B)."""

    measured: torch.Tensor
    bound: torch.Tensor
    exp_bound: torch.Tensor  # (B,): DESIGN.md's closed form at layer L, with the same inputs
    delta0: torch.Tensor  # (B,): |z~_0 - z_0| as computed
    finite: torch.Tensor  # (B,): both runs stayed finite (no overflow), so the model applies
    perturbed_states: torch.Tensor  # (L + 1, B, d): the perturbed run as computed
    local_bounds: torch.Tensor  # (L, B): a priori bounds on its local rounding errors

    @property
    def amplification(self) -> torch.Tensor:
        """|delta_L| / |delta_0| per sample."""
        return self.measured[-1] / self.delta0

    @property
    def violations(self) -> int:
        """Finite samples where the measurement exceeds the bound at some layer."""
        bad = (self.measured > self.bound).any(dim=0) & self.finite
        return int(bad.sum())


def _run(work, z0, errors=None):
    """One computed run of ``work`` in its own dtype: states (L+1, B, d), the injected e_i as
    rounded to that dtype, and the unit outputs y_i before each injection (recomputed: the same
    operations on the same inputs give the same values)."""
    dtype = work.times.dtype
    e = None if errors is None else errors.to(dtype)
    with torch.no_grad():
        states = work(z0.to(dtype), return_all=True, perturbations=e)
        outputs = None
        if e is not None:
            outputs = torch.stack([work.unit(i, states[i]) for i in range(work.depth)])
    return states, outputs, e


def _working(stack, work, dtype):
    if work is None:
        return stack if dtype in (None, stack.times.dtype) else cast_stack(stack, dtype)
    if work.depth != stack.depth or not torch.equal(
            work.alpha.detach(), stack.alpha.detach().to(work.alpha.dtype)):
        raise ValueError("a working stack must be the exact stack cast to its dtype")
    return work


def propagation_run(stack, z0: torch.Tensor, *, delta0: torch.Tensor | None = None,
                    errors: torch.Tensor | None = None, dtype: torch.dtype | None = None,
                    reference_dtype: torch.dtype | None = None,
                    perturbed_stack=None, reference_stack=None) -> PropagationRun:
    """Run the stack from z0 (the reference run) and from z0 + delta0 with e_i added after unit i
    (the perturbed run); bound their distance at every layer.

    ``stack`` holds the exact (float64) units Phi_i.  The runs use ``perturbed_stack`` and
    ``reference_stack`` (casts of ``stack`` to their dtypes, see :func:`cast_stack`), by default
    ``stack`` cast to ``dtype`` and to ``reference_dtype`` (default: ``dtype``; default of both:
    the stack's own dtype).  The bound is the sum of the Gronwall bounds of each computed run
    against the exact-arithmetic trajectory from z0:

        |z~_i - z_i| <= B_i(|z~_0 - z0|, |e| + r~) + B_i(|z_0 - z0|, r),

    with r~, r the a priori local rounding bounds of the two runs (rounding.stack_error_bounds).
    """
    pert_work = _working(stack, perturbed_stack, dtype)
    ref_work = _working(stack, reference_stack,
                        reference_dtype or (None if perturbed_stack is not None else dtype))
    z0 = z0.to(torch.float64)
    gains = stack_gains(stack).to(z0.device)
    pert0 = z0 if delta0 is None else z0 + delta0.to(torch.float64)
    ref_states, _, _ = _run(ref_work, z0)
    pert_states, outputs, e = _run(pert_work, pert0, errors)
    ref64, pert64 = ref_states.to(torch.float64), pert_states.to(torch.float64)

    finite = (torch.isfinite(ref64).all(dim=0).all(dim=-1)
              & torch.isfinite(pert64).all(dim=0).all(dim=-1))
    measured = (pert64 - ref64).norm(dim=-1)
    e_norm = (torch.zeros(stack.depth, z0.shape[0], dtype=torch.float64, device=z0.device)
              if e is None else e.to(torch.float64).norm(dim=-1))
    r_pert = stack_error_bounds(stack, pert_states, RoundingModel.of(pert_work.times.dtype),
                                outputs)
    r_ref = stack_error_bounds(stack, ref_states, RoundingModel.of(ref_work.times.dtype))
    start_pert = (pert64[0] - z0).norm(dim=-1)
    start_ref = (ref64[0] - z0).norm(dim=-1)
    bound = (gronwall_bound(gains, start_pert, e_norm + r_pert)
             + gronwall_bound(gains, start_ref, r_ref))
    exp_bound = (gronwall_exp_bound(gains, start_pert, e_norm + r_pert)
                 + gronwall_exp_bound(gains, start_ref, r_ref))
    return PropagationRun(measured=measured, bound=bound, exp_bound=exp_bound,
                          delta0=measured[0], finite=finite, perturbed_states=pert_states,
                          local_bounds=r_pert)
