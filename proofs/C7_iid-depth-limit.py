"""Symbolic steps of the C7 proof (proofs/C7_iid-depth-limit.md), checked with sympy.

Run: python proofs/C7_iid-depth-limit.py   (exit code 0 and "all steps verified" on success)
"""

import importlib.util
from pathlib import Path

import sympy as sp

_spec = importlib.util.spec_from_file_location(
    "steps", Path(__file__).resolve().with_name("_steps.py"))
_steps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_steps)
verified, is_zero = _steps.verified, _steps.is_zero


def gaussian_moment(k: int, var) -> sp.Expr:
    """E x^k for x ~ N(0, var): 0 for odd k, (k-1)!! var^(k/2) for even k."""
    return sp.Integer(0) if k % 2 else sp.factorial2(k - 1) * var ** sp.Rational(k, 2)


def expect_polynomial(expr, gaussians: dict) -> sp.Expr:
    """E of a polynomial in independent centred Gaussians (symbol -> variance)."""
    poly = sp.Poly(sp.expand(expr), *gaussians)
    total = sp.Integer(0)
    for powers, coeff in poly.terms():
        term = coeff
        for var, k in zip(gaussians.values(), powers, strict=True):
            term *= gaussian_moment(k, var)
        total += term
    return sp.simplify(total)


def main() -> None:
    sw, sb, d = sp.symbols("s_w s_b d", positive=True)
    q, x, h, t = sp.symbols("q x h t", positive=True)

    # --- Step 1: the pre-activation u = W z + b given z, in d = 3 --------------------------------
    n = 3
    z = sp.symbols("z0:3", real=True)
    W = sp.Matrix(n, n, lambda j, k: sp.Symbol(f"W{j}{k}", real=True))
    b = sp.symbols("b0:3", real=True)
    law = {W[j, k]: sw**2 / n for j in range(n) for k in range(n)} | {bj: sb**2 for bj in b}
    u = [sum(W[j, k] * z[k] for k in range(n)) + b[j] for j in range(n)]
    sq = sum(zk**2 for zk in z)
    verified("Var u_j = s_w^2 |z|^2 / d + s_b^2 (d = 3)",
             all(is_zero(expect_polynomial(u[j] ** 2, law) - (sw**2 * sq / n + sb**2))
                 for j in range(n)))
    verified("E u_j u_k = 0 for j != k: the coordinates of u are independent Gaussians",
             all(is_zero(expect_polynomial(u[j] * u[k], law)) for j in range(n)
                 for k in range(n) if j != k))

    # --- Step 2: E F = 0, third moments 0, Sigma = K(q) I ----------------------------------------
    phi = sp.exp(-x**2 / 2) / sp.sqrt(2 * sp.pi)
    for k in (1, 3):
        integrand = sp.tanh(sp.sqrt(q) * x) ** k * phi
        verified(f"tanh^{k}(sqrt(q) x) phi(x) is odd: E F_j^{k} = 0 (so E F = 0 and every third "
                 "moment of F vanishes, the coordinates being independent)",
                 is_zero(integrand + integrand.subs(x, -x)))

    # --- Step 3: K near 0, its slope, and bounds -------------------------------------------------
    series = sp.series(sp.tanh(x) ** 2, x, 0, 9).removeO()
    K_series = sum(series.coeff(x, k) * gaussian_moment(k, q) for k in range(0, 9, 2))
    verified("K(q) = q - 2 q^2 + 17 q^3 / 3 - 62 q^4 / 3 + O(q^5)",
             is_zero(sp.expand(K_series) - (q - 2 * q**2 + sp.Rational(17, 3) * q**3
                                            - sp.Rational(62, 3) * q**4)))
    y = sp.symbols("y", real=True)
    second = sp.diff(sp.tanh(y) ** 2, y, 2)
    tt = sp.symbols("t_", real=True)
    verified("(tanh^2)'' = 2 (1 - tanh^2)(1 - 3 tanh^2)",
             is_zero((second - 2 * (1 - sp.tanh(y) ** 2) * (1 - 3 * sp.tanh(y) ** 2))
                     .rewrite(sp.exp)))
    g2 = 2 * (1 - tt**2) * (1 - 3 * tt**2)
    crit = [c for c in sp.solve(sp.diff(g2, tt), tt) if c.is_real and -1 <= c <= 1]
    verified("|2 (1 - t^2)(1 - 3 t^2)| <= 2 on [-1, 1]: by the heat identity "
             "dK/dq = E[(tanh^2)''(sqrt(q) xi)] / 2, |K'(q)| <= 1",
             max(abs(g2.subs(tt, c)) for c in [*crit, -1, 1]) == 2)
    for k in (4, 6, 8):  # the heat identity d/dq E p(sqrt(q) xi) = E p''(sqrt(q) xi) / 2
        lhs = sp.diff(gaussian_moment(k, q), q)
        rhs = k * (k - 1) * gaussian_moment(k - 2, q) / 2
        verified(f"heat identity d/dq E x^{k} = E (x^{k})'' / 2 under N(0, q)", is_zero(lhs - rhs))

    # --- Step 4: one unit's moments and the local weak error, d = 2 -------------------------------
    # Delta = sqrt(h) F with E F = 0, E F F^T = kappa I, third moments 0, fourth m4 (any value).
    # u(t, x) solves the backward Kolmogorov equation u_t + kappa(x) Laplacian(u) / 2 = 0.
    x1, x2, f1, f2, rh = sp.symbols("x1 x2 f1 f2 r_h", real=True)
    kap = sp.Function("kappa")(x1, x2)
    U = sp.Function("u")
    moments = {(1, 0): 0, (0, 1): 0, (2, 0): kap, (0, 2): kap, (1, 1): 0,
               (3, 0): 0, (0, 3): 0, (2, 1): 0, (1, 2): 0}
    # Taylor of u(t + h, x + rh F) in (h, rh) up to h^1 and rh^3 (rh = sqrt(h))
    taylor = sp.Integer(0)
    for a in range(0, 2):            # time derivatives
        for i in range(0, 4):        # x1 derivatives
            for j in range(0, 4 - i):
                if 2 * a + i + j > 3:
                    continue
                counts = [(v, k) for v, k in ((t, a), (x1, i), (x2, j)) if k]
                deriv = sp.Derivative(U(t, x1, x2), *counts) if counts else U(t, x1, x2)
                taylor += (deriv * h**a * (rh * f1) ** i * (rh * f2) ** j
                           / (sp.factorial(a) * sp.factorial(i) * sp.factorial(j)))
    expanded = sp.expand(taylor)
    mean = sp.Integer(0)
    for term in sp.Add.make_args(expanded):
        i, j = sp.degree(term, f1), sp.degree(term, f2)
        coeff = term / (f1**i * f2**j)
        mean += coeff * (1 if i + j == 0 else moments[(i, j)])
    local = sp.expand(mean.subs(h, rh**2) - U(t, x1, x2))
    u_t = -kap / 2 * (sp.Derivative(U(t, x1, x2), x1, 2) + sp.Derivative(U(t, x1, x2), x2, 2))
    local = sp.expand(local.subs(sp.Derivative(U(t, x1, x2), t), u_t))
    verified("E u(t + h, x + sqrt(h) F) - u(t, x) has no h^{1/2}, h, h^{3/2} terms when "
             "u_t + kappa Lap(u)/2 = 0: one unit's local weak error is O(h^2)",
             all(is_zero(local.coeff(rh, k)) for k in (0, 1, 2, 3)))

    # --- Step 5: the three scalings, summed over L units ------------------------------------------
    L, i, c = sp.symbols("L i c", positive=True, integer=True)
    for alpha, label, expect in ((1 / sp.sqrt(L), "1/sqrt(L)", c),
                                 (1 / L, "1/L", c / L), (1, "1", c * L)):
        total = sp.summation(alpha**2 * c, (i, 1, L))
        verified(f"alpha = {label}: sum_i alpha^2 E|F_i|^2 = {sp.simplify(expect)} for E|F|^2 = c",
                 is_zero(total - expect))

    # --- Step 6: the coupled draw (conditional Gaussian) -----------------------------------------
    # x' ~ N(0, I_m), xi ~ N(0, 1) independent, |a| = 1: x = x' + a (xi - a^T x') has Cov I and
    # a^T x = xi.  Checked for m = 3 with a = (cos t e, sin t), e = (e1, e2) a unit vector.
    th, ph = sp.symbols("theta phi", real=True)
    a = sp.Matrix([sp.cos(th) * sp.cos(ph), sp.cos(th) * sp.sin(ph), sp.sin(th)])
    P = sp.eye(3) - a * a.T
    cov = sp.simplify(P * P.T + a * a.T)
    verified("Cov(x' + a (xi - a^T x')) = (I - a a^T)^2 + a a^T = I for |a| = 1",
             all(is_zero(e) for e in (cov - sp.eye(3))))
    verified("a^T (x' + a (xi - a^T x')) = xi for |a| = 1",
             is_zero(sp.simplify((a.T * P)[0, 0] ** 2 + (a.T * P)[0, 1] ** 2
                                 + (a.T * P)[0, 2] ** 2)))
    print("all steps verified")


if __name__ == "__main__":
    main()
