"""Symbolic steps of the C9 proof (proofs/C9_trained-sensitivity.md), checked with sympy.

Run: python proofs/C9_trained-sensitivity.py   (exit code 0 and "all steps verified" on success)
"""

import sympy as sp
from _steps import verified

a1, a2, q1, q2 = sp.symbols("a1 a2 q1 q2", real=True)
al = sp.symbols("alpha1 alpha2", real=True)
be = sp.symbols("beta1 beta2", real=True)
a = sp.Matrix([a1, a2])
F = sp.Matrix([sp.Function(f"F{j}")(a1, a2) for j in (1, 2)])

# --- (i): the gated unit's Jacobian and its VJP --------------------------------------------------
U = a + sp.diag(*al) * F + sp.Matrix(be)
J = U.jacobian(a)
verified("dU/da = I + diag(alpha) dF/da (beta does not enter)",
         sp.simplify(J - (sp.eye(2) + sp.diag(*al) * F.jacobian(a))) == sp.zeros(2, 2))
q = sp.Matrix([[q1, q2]])
loss_through_unit = (q * U)[0]  # l linear in z with adjoint q at the output
grad = sp.Matrix([[sp.diff(loss_through_unit, v) for v in (a1, a2)]])
verified("chain rule: dl/da = p_z dU/da for l depending on a only through z = U(a)",
         sp.simplify(grad - q * J) == sp.zeros(1, 2))

# --- the negative control: the identity in place of the unit's Jacobian errs by p alpha dF/da -----
verified("skipping the unit's Jacobian leaves p diag(alpha) dF/da",
         sp.simplify(q * J - q - q * sp.diag(*al) * F.jacobian(a)) == sp.zeros(1, 2))

# --- (ii): a chain of three scalar units composes the steps -------------------------------------
x = sp.Symbol("x")
f1, f2, f3 = (sp.Function(f"f{k}") for k in (1, 2, 3))
g1, g2, g3 = sp.symbols("g1 g2 g3")
u1 = x + g1 * f1(x)
u2 = u1 + g2 * f2(u1)
u3 = u2 + g3 * f3(u2)
w = sp.Symbol("w")
step = [sp.diff(w + g * f(w), w) for g, f in ((g1, f1), (g2, f2), (g3, f3))]
product = step[2].subs(w, u2) * step[1].subs(w, u1) * step[0].subs(w, x)
verified("chain: dz_3/dz_0 = prod_i (1 + alpha_i f_i'(z_(i-1)))",
         sp.simplify(sp.diff(u3, x).doit() - product.doit()) == 0)

print("all steps verified")
