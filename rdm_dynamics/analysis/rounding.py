"""A priori rounding-error bounds for a gated residual stack run in floating point.

Rounding model (precision p with unit roundoff u = eps / 2, e.g. bfloat16 2^-8, float16 2^-11,
float32 2^-24, float64 2^-53).  Every arithmetic operation, conversion and parameter rounding
returns

    fl(v) = v (1 + theta) + eta',   |theta| <= rho,   |eta'| <= eta,

where v is the exact result on the (exact) operands, ``rho = u + 2^-24 (1 + u)`` for 16-bit
types (PyTorch evaluates them in float32 and rounds: two roundings) and ``rho = u`` otherwise, and
``eta`` is half the smallest subnormal (gradual underflow).  Elementary functions (tanh) satisfy the
same with ``rho_fn = 4 rho`` (2 ulps); for 16-bit types this is verified exhaustively on every
finite input by :func:`elementary_violations`.  Sums of n terms in any order: Higham's lemma
|prod_{k<=n} (1 + theta_k) - 1| <= gamma_n = n rho / (1 - n rho).  No overflow (a run that
overflows is reported, not bounded).

One unit, computed as ``y = fl(fl(x + fl(alpha^ * F^(x))) + beta^)`` with rounded gates alpha^,
beta^ and a residual evaluated in precision p with |F^(x) - F(x)| <= eps_F (the residual's own
``rounding_bound``), has local error e = y - (x + alpha F(x) + beta) bounded componentwise by
:func:`unit_error_bound` (derivation in proofs/C5_error-propagation.md):

    |e| <= [rho S1 + eta] + [rho S2 + eta] + eps_m + [rho |beta| + eta],
    S1 = (|y| + eta) / (1 - rho)           >= |s^ + beta^|,
    S2 = (S1 + |beta^| + eta) / (1 - rho)  >= |x + m^|,
    eps_m = rho |alpha^| |F^| + eta + (rho |alpha| + eta) |F^| + |alpha| eps_F
                                           >= |m^ - alpha F(x)|,

with |alpha^| <= |alpha| (1 + rho) + eta, |beta^| <= |beta| (1 + rho) + eta, |F^| <= |F(x)| + eps_F.
The leading term is 2 rho |z|: "unit roundoff times the state", plus the gated rounding of F.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["RoundingModel", "unit_error_bound", "tanh_layer_error_bound", "stack_error_bounds",
           "elementary_violations", "all_finite_values", "local_errors", "BOUND_MARGIN"]

#: Relative margin on every bound evaluated in float64 (covers the float64 evaluation of the
#: bound itself: a few thousand operations at 2^-53 each).
BOUND_MARGIN = 1e-9


@dataclass(frozen=True)
class RoundingModel:
    """The rounding model of one floating-point type (module docstring)."""

    dtype: torch.dtype
    u: float  # unit roundoff eps / 2
    rho: float  # relative error of one operation
    eta: float  # absolute error from underflow
    rho_fn: float  # relative error of an elementary function

    @classmethod
    def of(cls, dtype: torch.dtype) -> RoundingModel:
        fi = torch.finfo(dtype)
        u = fi.eps / 2
        rho = u + (2.0**-24 * (1 + u) if fi.bits == 16 else 0.0)
        return cls(dtype=dtype, u=u, rho=rho, eta=fi.tiny * fi.eps / 2, rho_fn=4 * rho)

    def gamma(self, n: int) -> float:
        """gamma_n = n rho / (1 - n rho): bound on |prod of n factors (1 + theta) - 1|."""
        if n * self.rho >= 1:
            raise ValueError(f"gamma_{n} undefined: n * rho = {n * self.rho:.3g} >= 1")
        return n * self.rho / (1 - n * self.rho)


def tanh_layer_error_bound(W: torch.Tensor, c: torch.Tensor, slope: float, x: torch.Tensor,
                           model: RoundingModel) -> torch.Tensor:
    """Componentwise bound on |F^(x) - F(x)| for F(x) = slope x + tanh(W x + c) evaluated in
    ``model``'s precision (weights rounded to it), for an input x representable in it.
    Batched: x (..., B, d) with W (..., d, d) and c broadcasting against (..., B, d).

    eps_p = gamma_{d+3} (|W||x| + |c|) + (1 + gamma_{d+3}) eta (|x|_1 + 2d + 2)  (pre-activation)
    eps_r = eps_p + rho_fn + eta                                               (tanh, |tanh| <= 1)
    eps_q = (2 rho + rho^2) |s||x| + eta (1 + rho) |x| + eta                    (slope * x)
    eps_F = eps_r                                              if slope = 0,
          = eps_q + eps_r + rho (|s||x| + eps_q + 1 + rho_fn + eta) + eta   otherwise (the sum).
    """
    W, c, x = (v.detach().to(torch.float64) for v in (W, c, x))
    d = W.shape[-1]
    g = model.gamma(d + 3)
    ax = x.abs()
    m = ax @ W.abs().mT + c.abs()
    eps_p = g * m + (1 + g) * model.eta * (ax.sum(-1, keepdim=True) + 2 * d + 2)
    eps_r = eps_p + model.rho_fn + model.eta
    if slope == 0:
        return eps_r
    s = abs(float(slope))
    rho, eta = model.rho, model.eta
    eps_q = (2 * rho + rho**2) * s * ax + eta * (1 + rho) * ax + eta
    return eps_q + eps_r + rho * (s * ax + eps_q + 1 + model.rho_fn + eta) + eta


def unit_error_bound(alpha: torch.Tensor, beta: torch.Tensor, F_x: torch.Tensor,
                     eps_F: torch.Tensor, y: torch.Tensor, model: RoundingModel) -> torch.Tensor:
    """Componentwise bound on |y - (x + alpha F(x) + beta)| for a unit output y computed in
    ``model``'s precision (module docstring).  All arguments exact (float64) values; F_x = F(x)."""
    rho, eta = model.rho, model.eta
    alpha, beta, F_x, eps_F, y = (v.detach().to(torch.float64) for v in
                                  (alpha, beta, F_x, eps_F, y))
    a, b = alpha.abs(), beta.abs()
    a_hat = a * (1 + rho) + eta
    b_hat = b * (1 + rho) + eta
    F_hat = F_x.abs() + eps_F
    eps_m = rho * a_hat * F_hat + eta + (rho * a + eta) * F_hat + a * eps_F
    S1 = (y.abs() + eta) / (1 - rho)
    S2 = (S1 + b_hat + eta) / (1 - rho)
    return (rho * S1 + eta) + (rho * S2 + eta) + eps_m + (rho * b + eta)


def stack_error_bounds(stack, states: torch.Tensor, model: RoundingModel,
                       outputs: torch.Tensor | None = None) -> torch.Tensor:
    """Norm bounds on the local errors e_i = z^_{i+1} - Phi_i(z^_i) of a run in precision p.

    Args:
        stack: the exact (float64) GatedResidualStack whose units Phi_i are the reference; every
            residual must provide ``rounding_bound(x, model)``.
        states: the computed states z^_0..z^_L of the run in precision p, shape (L + 1, B, d).
        outputs: the computed unit outputs y_i = fl(Phi_i)(z^_i) when the run added a perturbation
            after each unit (z^_{i+1} = fl(y_i + e_i)); the extra rounding of that addition is then
            included, and the bound is on z^_{i+1} - Phi_i(z^_i) - e_i.  Default: y_i = z^_{i+1}.

    Returns:
        (L, B) tensor: |e_i| <= returned value (Euclidean norm per sample), float64.
    """
    if stack.stochastic:
        raise ValueError("rounding bounds cover deterministic units only (no gamma_i xi_i term)")
    states64 = states.detach().to(torch.float64).to(stack.times.device)
    rho, eta = model.rho, model.eta
    L = stack.depth
    xs, ys = states64[:-1], states64[1:]
    if outputs is not None:
        ys = outputs.detach().to(torch.float64).to(xs.device)
    with torch.no_grad():
        F_x, eps_F = _residual_values(stack, xs, model)
        alpha, beta = (stack.alpha.detach(), stack.beta.detach())
        # gates (L, *g) broadcast against one sample: align them with (L, B, *sample)
        shape = (L,) + (1,) * (xs.ndim - alpha.ndim) + tuple(alpha.shape[1:])
        e = unit_error_bound(alpha.reshape(shape), beta.reshape(shape), F_x, eps_F, ys, model)
        if outputs is not None:  # z^_{i+1} = fl(y_i + e_i): one more rounding
            e = e + rho * (states64[1:].abs() + eta) / (1 - rho) + eta
    return e.norm(dim=-1) * (1 + BOUND_MARGIN)


def _residual_values(stack, xs: torch.Tensor, model: RoundingModel):
    """F_i(x_i) (exact, float64) and the residuals' rounding bounds, each (L, B, d)."""
    residuals = stack.residuals
    kind = type(residuals[0])
    if (hasattr(kind, "evaluate_layers") and not stack.shared_residual
            and all(type(r) is kind for r in residuals)):
        return kind.evaluate_layers(residuals, xs, model)
    F_x, eps_F = [], []
    for i, residual in enumerate(residuals):
        if not hasattr(residual, "rounding_bound"):
            raise TypeError(f"{type(residual).__name__} provides no rounding_bound(x, model)")
        F_x.append(residual(xs[i], stack.times[i]))
        eps_F.append(residual.rounding_bound(xs[i], model))
    return torch.stack(F_x), torch.stack(eps_F)


def all_finite_values(dtype: torch.dtype) -> torch.Tensor:
    """Every finite value of a 16-bit floating-point type (65536 bit patterns minus inf/NaN)."""
    if torch.finfo(dtype).bits != 16:
        raise ValueError(f"exhaustive enumeration is for 16-bit types, not {dtype}")
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    return bits[torch.isfinite(bits)]


def elementary_violations(fn, model: RoundingModel, device: str | torch.device = "cpu") -> int:
    """How many finite inputs x of a 16-bit type violate |fn_p(x) - fn(x)| <= rho_fn |fn(x)| + eta
    (fn_p computed in the type on ``device``, fn in float64): 0 validates the model for fn."""
    x = all_finite_values(model.dtype).to(device)
    approx = fn(x).to(torch.float64)
    exact = fn(x.to(torch.float64))
    ok = (approx - exact).abs() <= model.rho_fn * exact.abs() + model.eta
    return int((~ok).sum())


def local_errors(stack, states: torch.Tensor) -> torch.Tensor:
    """Measured local errors |z^_{i+1} - Phi_i(z^_i)| of a computed run, (L, B), with the exact
    units Phi_i of the float64 ``stack`` evaluated in float64 (their own error, ~2^-53 |z|, is
    far below any lower-precision bound they are compared with)."""
    states64 = states.detach().to(torch.float64).to(stack.times.device)
    with torch.no_grad():
        return torch.stack([(states64[i + 1] - stack.unit(i, states64[i])).norm(dim=-1)
                            for i in range(stack.depth)])
