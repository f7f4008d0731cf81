"""Symbolic steps of the C1 proof (proofs/C1_depth-limit.md), checked with sympy.

Run: python proofs/C1_depth-limit.py   (exit code 0 and "all steps verified" on success)
"""


import sympy as sp
from _steps import verified

tau, h, z0 = sp.symbols("tau h z_0", real=True)
A, K, M = sp.symbols("A K M", positive=True)
n = sp.symbols("n", integer=True, nonnegative=True)
x = sp.symbols("x", nonnegative=True)
lam, c = sp.symbols("lambda c", real=True)
L = sp.symbols("L", positive=True, integer=True)


# --- Step 1 and 2: one gated unit against the Taylor expansion of the exact flow ---------------
# Generic scalar F(z, tau), a(tau), b(tau) (the vector case is componentwise for the gates and
# the same algebra with G_z a Jacobian).
zf = sp.Function("z")
a, b = sp.Function("a"), sp.Function("b")
F = sp.Function("F")
Z = sp.Symbol("Z")  # the state at tau, as a plain symbol


def G(zz, tt):
    return a(tt) * F(zz, tt) + b(tt)


def total_derivative(expr):
    """d/dtau of expr(z(tau), tau) along the ODE z' = G(z, tau), with z(tau) written as Z."""
    e = expr.subs(Z, zf(tau))
    d = sp.diff(e, tau).subs(sp.Derivative(zf(tau), tau), G(zf(tau), tau))
    return sp.simplify(d.subs(zf(tau), Z))


z1 = G(Z, tau)               # z'
z2 = total_derivative(z1)    # z''
z3 = total_derivative(z2)    # z'''
exact = Z + h * z1 + h**2 / 2 * z2 + h**3 / 6 * z3  # Taylor series of z(tau + h) to O(h^3)

alpha, beta = h * a(tau), h * b(tau)
gated_unit = Z + alpha * F(Z, tau) + beta
local_error = sp.expand(exact - gated_unit)

verified("the gated unit with alpha = h a, beta = h b is the Euler step z + h G(z, tau)",
         sp.simplify(gated_unit - (Z + h * G(Z, tau))) == 0)
verified("the local error has no O(1) and no O(h) term",
         sp.simplify(local_error.coeff(h, 0)) == 0 and sp.simplify(local_error.coeff(h, 1)) == 0)
G_tau = sp.diff(G(Z, tau), tau)
G_z = sp.diff(G(Z, tau), Z)
verified("the O(h^2) term of the local error is (G_tau + G_z G) / 2",
         sp.simplify(local_error.coeff(h, 2) - (G_tau + G_z * G(Z, tau)) / 2) == 0)

# the same on a closed-form flow: G = lambda z, z(tau + h) = z e^{lambda h}
series = sp.series(Z * sp.exp(lam * h) - (Z + h * lam * Z), h, 0, 3).removeO()
verified("for G = lambda z the exact flow minus the Euler step is lambda^2 z h^2 / 2 + O(h^3)",
         sp.simplify(series - lam**2 * Z * h**2 / 2) == 0)

# --- Step 4: discrete Gronwall by induction ---------------------------------------------------
B = lambda k: M * h / (2 * A * K) * ((1 + h * A * K) ** k - 1)  # noqa: E731
verified("Gronwall base case: B_0 = 0", sp.simplify(B(0)) == 0)
verified("Gronwall induction: (1 + h A K) B_n + M h^2 / 2 = B_{n+1}",
         sp.simplify((1 + h * A * K) * B(n) + M * h**2 / 2 - B(n + 1)) == 0)
phi = x - sp.log(1 + x)
verified("1 + x <= e^x for x >= 0: x - log(1 + x) is 0 at 0 and has derivative x/(1+x) >= 0",
         phi.subs(x, 0) == 0 and sp.simplify(sp.diff(phi, x) - x / (1 + x)) == 0)
bound = sp.limit(B(1 / h).subs(h, 1 / L) / (1 / L), L, sp.oo)
verified("so B_L / h -> M (e^{A K} - 1) / (2 A K) as L -> oo: the constant C of the statement",
         sp.simplify(bound - M * (sp.exp(A * K) - 1) / (2 * A * K)) == 0)

# --- Step 5: the first order is sharp --------------------------------------------------------
lead = sp.limit(L * (sp.exp(lam) - (1 + lam / L) ** L), L, sp.oo)
verified("L (e^lambda - (1 + lambda/L)^L) -> lambda^2 e^lambda / 2: the error is exactly O(1/L)",
         sp.simplify(lead - lam**2 * sp.exp(lam) / 2) == 0)

# --- Step 6: the controls --------------------------------------------------------------------
i = sp.symbols("i", integer=True, nonnegative=True)
euler_sum = sp.summation(c / L, (i, 0, L - 1))
plain_sum = sp.summation(c, (i, 0, L - 1))
invsqrt_sum = sp.summation(c / sp.sqrt(L), (i, 0, L - 1))
verified("constant field: Euler gates reach z_0 + c = z(1) at every depth",
         sp.simplify(euler_sum - c) == 0)
verified("constant field: plain gates reach z_0 + L c (unbounded in L)",
         sp.simplify(plain_sum - L * c) == 0 and sp.limit(plain_sum / c, L, sp.oo) == sp.oo)
verified("constant field: inv-sqrt gates reach z_0 + sqrt(L) c (unbounded in L)",
         sp.simplify(invsqrt_sum - sp.sqrt(L) * c) == 0
         and sp.limit(invsqrt_sum / c, L, sp.oo) == sp.oo)
# i.i.d. weights: E_Z tanh(w z + Z) differs from tanh(w z) (tanh is not affine): second-order
# term of the expansion in the perturbation Z with E Z = 0, E Z^2 = s^2.
w, s, u = sp.symbols("w s u", real=True)
expansion = sp.series(sp.tanh(u + Z), Z, 0, 3).removeO()
averaged = expansion.subs(Z**2, s**2).subs(Z, 0)  # E[Z] = 0, E[Z^2] = s^2
gap = sp.simplify(averaged - sp.tanh(u))
verified("i.i.d. weights: E tanh(u + Z) - tanh(u) = -s^2 tanh(u) (1 - tanh(u)^2) + O(s^4) != 0",
         sp.simplify(gap + s**2 * sp.tanh(u) * (1 - sp.tanh(u) ** 2)) == 0)

print("all steps verified")
