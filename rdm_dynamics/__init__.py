"""rdm_dynamics: numerical verification of Neural Residual Diffusion Models.

A gated residual stack ``z_{i+1} = z_i + alpha_i F(z_i) + beta_i`` is treated as a discretised
continuous-time flow and checked against exact or independent references (DESIGN.md).
"""

__version__ = "0.1.0"
