"""Symbolic steps of the C8 proof (proofs/C8_trained-propagation.md), checked with sympy.

Run: python proofs/C8_trained-propagation.py   (exit code 0 and "all steps verified" on success)
"""

import sympy as sp
from _steps import verified

eps = sp.Symbol("epsilon")  # the size of the rounding errors
a0, r1, r2, r3 = sp.symbols("a0 r1 r2 r3", real=True)
U1, U2, H = sp.Function("U1"), sp.Function("U2"), sp.Function("H")

# --- Step 3, chain case: two units and a head, each rounding r_i at unit i ------------------------
z1 = U1(a0)
z2 = U2(z1)
y = H(z2)
z1t = U1(a0) + eps * r1
z2t = U2(z1t) + eps * r2
yt = H(z2t)
first = sp.diff(yt, eps).subs(eps, 0).doit()
J1 = sp.diff(H(U2(sp.Symbol("w"))), sp.Symbol("w")).subs(sp.Symbol("w"), z1).doit()  # dy/dz1
J2 = sp.diff(H(sp.Symbol("w")), sp.Symbol("w")).subs(sp.Symbol("w"), z2).doit()  # dy/dz2
verified("chain: d(y~ - y)/d eps at 0 = J_(1->out) r1 + J_(2->out) r2",
         sp.simplify(first - (J1 * r1 + J2 * r2)) == 0)
verified("chain: y~ - y at eps = 0 vanishes (the remainder is O(eps^2) by Taylor)",
         sp.simplify((yt - y).subs(eps, 0)) == 0)

# --- Step 3, skip graph: z1 feeds unit 2 and, by a skip, the head ---------------------------------
G = sp.Function("G")  # glue between units: a2 = G(z1)
K = sp.Function("K")  # the head reads both z2 and the skip z1
w1, w2 = sp.symbols("w1 w2")
z2s = U2(G(z1))
ys = K(z2s, z1)
z2st = U2(G(z1t)) + eps * r2
yst = K(z2st, z1t)
first_s = sp.diff(yst, eps).subs(eps, 0).doit()
out_of = K(U2(G(w1)), w1)  # y as a function of z1 through both paths
J1s = sp.diff(out_of, w1).subs(w1, z1).doit()
J2s = sp.diff(K(w2, z1), w2).subs(w2, z2s).doit()
verified("skip graph: first-order output error = J_(1->out) r1 + J_(2->out) r2 with J_(1->out) "
         "the total derivative over both paths (unit 2 and the skip)",
         sp.simplify(first_s - (J1s * r1 + J2s * r2)) == 0)

# --- Step 4: the per-unit profile (3): delta_2 = J_(1->2) r1 + r2 to first order ------------------
d2 = sp.diff(z2st - z2s, eps).subs(eps, 0).doit()
J12 = sp.diff(U2(G(w1)), w1).subs(w1, z1).doit()
verified("profile: delta_2 = J_(1->2) r1 + r2 to first order",
         sp.simplify(d2 - (J12 * r1 + r2)) == 0)

# --- The negative control: leaving r1 out of the sum leaves exactly J_(1->out) r1 unexplained -----
verified("dropping unit 1's rounding leaves the residual J_(1->out) r1",
         sp.simplify(first_s - J2s * r2 - J1s * r1) == 0 and sp.simplify(first_s - J2s * r2) != 0)

print("all steps verified")
