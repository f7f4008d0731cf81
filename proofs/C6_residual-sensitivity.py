"""Symbolic steps of the C6 proof (proofs/C6_residual-sensitivity.md), checked with sympy.

Run: python proofs/C6_residual-sensitivity.py   (exit code 0 and "all steps verified" on success)
"""


import sympy as sp
from _steps import verified

tau, h, th = sp.symbols("tau h theta", real=True)

# --- Step 1: one gated unit's vector-Jacobian product, generic F in two dimensions -------------
z1, z2, q1, q2 = sp.symbols("z1 z2 q1 q2", real=True)
F = [sp.Function(f"F{j}")(z1, z2, tau, th) for j in (1, 2)]
a = [sp.Function(f"a{j}")(tau) for j in (1, 2)]
b = [sp.Function(f"b{j}")(tau) for j in (1, 2)]
z = sp.Matrix([z1, z2])
unit = sp.Matrix([z[j] + h * a[j] * F[j] + h * b[j] for j in range(2)])
q = sp.Matrix([[q1, q2]])  # p_{i+1}
J = unit.jacobian(z)
dF = sp.Matrix(F).jacobian(z)
A_i = sp.diag(*a) * dF
verified("Jacobian of the unit is I + h diag(a) dF/dz",
         sp.simplify(J - (sp.eye(2) + h * A_i)) == sp.zeros(2, 2))
vjp = q * J
verified("backprop: p_i = p_(i+1) J = p_(i+1) (I + h A_i), one Euler step of dp/dtau = -p A "
         "taken backwards from tau_(i+1) with A frozen at tau_i",
         sp.simplify(vjp - (q + h * q * A_i)) == sp.zeros(1, 2))
dtheta = sp.diff((q * unit)[0], th)
verified("parameter gradient of one unit: p_(i+1) h diag(a) dF/dtheta",
         sp.simplify(dtheta - h * sum(q[j] * a[j] * sp.diff(F[j], th) for j in range(2))) == 0)

# --- Step 2: local error O(h^2) against the exact adjoint ------------------------------------
A = sp.Matrix(2, 2, lambda j, k: sp.Function(f"A{j}{k}")(tau))
p = sp.Matrix([[sp.Symbol("p1"), sp.Symbol("p2")]])  # p(tau)
dp1 = -p * A                                  # p' = -p A
dp2 = -(dp1 * A) - p * A.diff(tau)            # p'' = p A^2 - p A'
dp3 = -(dp2 * A) - 2 * dp1 * A.diff(tau) - p * A.diff(tau, 2)
verified("p'' = p (A^2 - A') along the adjoint ODE",
         sp.simplify(dp2 - p * (A * A - A.diff(tau))) == sp.zeros(1, 2))
p_next = p + h * dp1 + h**2 / 2 * dp2 + h**3 / 6 * dp3  # p(tau + h) to O(h^3)
local = (p - p_next * (sp.eye(2) + h * A)).applyfunc(sp.expand)
coef = lambda k: local.applyfunc(lambda e: sp.simplify(e.coeff(h, k)))  # noqa: E731
verified("p(tau) - p(tau + h)(I + h A(tau)) has no O(1) and no O(h) term",
         coef(0) == sp.zeros(1, 2) and coef(1) == sp.zeros(1, 2))
verified("its O(h^2) term is p (A^2 + A') / 2",
         sp.simplify(coef(2) - p * (A * A + A.diff(tau)) / 2) == sp.zeros(1, 2))
lam = sp.symbols("lambda", positive=True)
verified("for A = lambda (constant) the O(h^2) term is p lambda^2 / 2 != 0: the order is exactly 1",
         sp.simplify(coef(2).subs({A[j, k]: (lam if j == k else 0) for j in range(2)
                                   for k in range(2)}).doit()
                     - p * lam**2 / 2) == sp.zeros(1, 2))

# --- Step 3: the parameter gradient is a left Riemann sum: error O(h) -----------------------
c0, c1, c2, c3 = sp.symbols("c0:4", real=True)
L = sp.symbols("L", positive=True, integer=True)
i = sp.symbols("i", integer=True, nonnegative=True)
f = lambda s: c0 + c1 * s + c2 * s**2 + c3 * s**3  # noqa: E731
riemann = sp.summation(f(i / L) / L, (i, 0, L - 1))
integral = sp.integrate(f(tau), (tau, 0, 1))
verified("left Riemann sum - integral = -(f(1) - f(0)) / (2 L) + O(1/L^2) (generic cubic f)",
         sp.simplify(sp.limit(L * (riemann - integral), L, sp.oo) + (f(1) - f(0)) / 2) == 0)

# --- Step 3': stability of the backward recursion, and the sensitivity bounds ----------------
g = sp.symbols("g", nonnegative=True)
phi = sp.log(1 - g) + g / (1 - g)
verified("log(1 - g) >= -g/(1 - g) on [0, 1): the difference is 0 at 0 with derivative "
         "g/(1 - g)^2 >= 0",
         phi.subs(g, 0) == 0 and sp.simplify(sp.diff(phi, g) - g / (1 - g) ** 2) == 0)
K = sp.symbols("K", positive=True)
verified("gated: (1 + K/L)^L -> e^K, so the upper bound on |p_0|/|p_L| converges as L grows",
         sp.simplify(sp.limit((1 + K / L) ** L, L, sp.oo) - sp.exp(K)) == 0)
verified("gated: (1 - K/L)^L -> e^(-K): the lower bound stays away from 0",
         sp.simplify(sp.limit((1 - K / L) ** L, L, sp.oo) - sp.exp(-K)) == 0)
verified("plain: (1 + K)^L -> oo: no bound independent of L",
         sp.limit((1 + K) ** L, L, sp.oo) == sp.oo)
r1, r2, aa = sp.symbols("r1 r2 a", real=True)
Jm = sp.Matrix(2, 2, sp.symbols("j11 j12 j21 j22", real=True))
r = sp.Matrix([[r1, r2]])
lhs = (r * (sp.eye(2) + aa * Jm)) * (r * (sp.eye(2) + aa * Jm)).T
rhs = r * r.T + aa * r * (Jm + Jm.T) * r.T + aa**2 * (r * Jm) * (r * Jm).T
verified("|p (I + a J)|^2 = |p|^2 + a p (J + J^T) p^T + a^2 |p J|^2 (plain growth when "
         "J + J^T >= 2 mu I)", sp.expand(lhs[0] - rhs[0]) == 0)

print("all steps verified")
