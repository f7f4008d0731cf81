"""Symbolic steps of the C11 proof (proofs/C11_depth-consistency.md), checked with sympy.

Run: python proofs/C11_depth-consistency.py   (exit code 0 and "all steps verified" on success)
"""

import sympy as sp
from _steps import is_zero, verified

# --- Step 1: the gradient of one unit ------------------------------------------------------------
L = 3
h, z0 = sp.symbols("h z0", positive=True)
a = sp.symbols(f"a0:{L}", real=True)
zs = [z0]
for i in range(L):
    zs.append(zs[-1] * (1 + h * a[i]))
loss = zs[-1] ** 2 / 2  # l(z) = z^2 / 2, dl/dz_L = z_L
for i in range(L):
    p_next = sp.diff(loss, a[i]) / (h * zs[i])  # should be dl/dz_{i+1}
    later = sp.prod([1 + h * a[j] for j in range(i + 1, L)])
    verified(f"dl/dA_{i} = h p_(i+1) z_{i} with p_(i+1) = dl/dz_(i+1) (scalar stack, L = {L})",
             is_zero(p_next - zs[-1] * later))

# --- Step 2: the gradient is h G(tau) + O(h^2) at a fixed tau ------------------------------------
a0, a1, tau, t = sp.symbols("a0 a1 tau t", real=True)
A = lambda s: a0 + a1 * s  # noqa: E731
# continuous forward and adjoint for l = z(1)^2 / 2:
# z(t) = z0 exp(int_0^t A), p(t) = z(1) exp(int_t^1 A)
I = lambda lo, hi: sp.integrate(A(t), (t, lo, hi))  # noqa: E731
z_c = z0 * sp.exp(I(0, tau))
p_c = z0 * sp.exp(I(0, 1)) * sp.exp(I(tau, 1))
G = sp.simplify(p_c * z_c)
# the discrete gradient at unit i = tau L: h z_L prod_{j != i} (1 + h A(t_j)) z0 with log-sums
# expanded to second order: log prod_{j<i}(1 + h A_j) = sum_j (h A_j - h^2 A_j^2 / 2) + O(h^3)
Lsym = sp.symbols("L", positive=True, integer=True)
j = sp.symbols("j", integer=True, nonnegative=True)


def log_prod(lo, hi):
    """sum_{lo <= j < hi} log(1 + h A(j h)) to O(h^2), in closed form (Faulhaber)."""
    first = sp.summation(h * A(j * h) - h ** 2 * A(j * h) ** 2 / 2, (j, lo, hi - 1))
    return sp.expand(first)


i_tau = tau / h
before = log_prod(0, i_tau)
after = log_prod(i_tau + 1, 1 / h)
whole = log_prod(0, 1 / h)
# (1/h) dl/dA_i = z_L * prod_{j>i}(1+hA_j) * z_i = z0^2 exp(whole + after + before)
discrete = z0 ** 2 * sp.exp(whole + after + before)
series = sp.series(sp.simplify(discrete / G), h, 0, 2).removeO()
verified("(1/h) dl/dA_i / G(tau_i) = 1 + O(h) at fixed tau = i h (scalar, A(tau) = a0 + a1 tau)",
         is_zero(series.subs(h, 0) - 1))
coefficient = sp.simplify(sp.diff(series, h).subs(h, 0))
verified("... and the O(h) term is a nonzero function of tau: the discretisation error is first "
         "order", coefficient != 0)

# --- Step 3: one training step keeps matched units O(h) apart ------------------------------------
eta, g0, g1, c = sp.symbols("eta g0 g1 c", real=True)
Gk = lambda s: g0 + g1 * s  # noqa: E731  (the gradient density at step k)
# unit at tau in a depth-L model: A_i^k = A^k(tau) + c h; gradient (1/h) dl/dA_i = G(tau) + O(h)
step = lambda A_tau, hh: A_tau + c * hh - eta * (Gk(tau) + c * hh)  # noqa: E731
diff_step = sp.expand(step(A(tau), h / 2) - step(A(tau), h))
verified("after one step the 2N unit at tau and the N unit at tau differ by O(h): "
         "(A + c h/2 - eta(G + c h/2)) - (A + c h - eta(G + c h)) = -(1 - eta) c h / 2",
         is_zero(diff_step + (1 - eta) * c * h / 2))

# --- Step 4: independent draws stay sqrt(2) apart ------------------------------------------------
s2 = sp.symbols("sigma2", positive=True)
X, Y = sp.symbols("X Y", real=True)
E = lambda expr: sp.expand(expr).subs({X ** 2: s2, Y ** 2: s2}).subs({X * Y: 0, X: 0, Y: 0})  # noqa: E731
verified("E|X - Y|^2 / E|X|^2 = 2 for independent zero-mean X, Y of one law",
         is_zero(E((X - Y) ** 2) / E(X ** 2) - 2))

print("all steps verified")
