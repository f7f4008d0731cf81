"""The flow-shaped residual MLP: a stack of gated MLP units on the flattened sample.

The deep regime's backbone (DESIGN.md section 3c): hundreds of residual units on a CPU.  A sample
x (C, H, W) (or (T, C, H, W) for videos) is flattened to a vector of D = C H W (T C H W) numbers
and embedded linearly, z_0 = W_in x + b_in (width ``width``); the diffusion time and the class
make the conditioning c, e exactly as for the transformer (:class:`.layers.Conditioning`).  The
state then flows through ``depth`` residual units, each

    z_(i+1) = gate_i(z_i, F_i; c, e),     F_i(h) = W_2 GELU(W_1 h + b_1) + b_2

under any gate of :mod:`.gates` (hidden width ``mlp_ratio`` * width), and a modulated head maps
z_L back to the sample's shape: out = W_out m(N z_L) + b_out, W_out = b_out = 0 at init.

``norm`` removes (False) or keeps (True) the normalisation of every gate and of the head; None
(the default) builds each gate as it is defined.  With ``gate="plain", norm=False`` the backbone
is the textbook residual network z + F(z) of C5's theory and of Marion et al., whose stream grows
geometrically in depth at initialisation.

Every unit costs two (B, width) x (width, hidden) matrix products and a (B, Dc) x (Dc, 2 width)
modulation product forward, with a handful of element-wise operations around them.  ``depth``
counts residual units (one per unit; the transformer's blocks hold two).  Named configurations:
``RDM-MLP-T``, ``RDM-MLP-S``, ``RDM-MLP-B`` (``MLP_SIZES``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .backbone import GatedBackbone
from .gates import Modulation, ResidualUnit, gate_class, make_gate, make_norm
from .layers import Conditioning, Mlp

__all__ = ["RDMMLP", "MLP_CONFIGS", "MLP_SIZES"]

MLP_SIZES = {  # depth (residual units), width, hidden width / width
    "T": {"depth": 16, "width": 64, "mlp_ratio": 2.0},
    "S": {"depth": 64, "width": 128, "mlp_ratio": 2.0},
    "B": {"depth": 256, "width": 256, "mlp_ratio": 4.0},
}
MLP_CONFIGS = {f"RDM-MLP-{size}": {"backbone": "mlp", **dims} for size, dims in MLP_SIZES.items()}

#: The most residual units an RDM-MLP is built with.
MAX_DEPTH = 1024


class MlpHead(nn.Module):
    """out = W m(N z) + b: modulated normalisation (or none), then a linear map to the sample."""

    def __init__(self, width: int, out_dim: int, norm: bool):
        super().__init__()
        self.norm = make_norm(width, True, affine=False) if norm else nn.Identity()
        self.modulation = Modulation(width, width, 2)
        self.linear = nn.Linear(width, out_dim)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c)
        return self.linear(torch.addcmul(shift, self.norm(z), 1 + scale))


class RDMMLP(GatedBackbone):
    """Residual MLP on the flattened sample with gated units (module docstring).

    Args:
        input_size, in_channels, num_classes, frames, class_dropout_prob, gate: as for
            :class:`.dit.RDMDiT`.
        depth: the number of residual units (1 to ``MAX_DEPTH``).
        width: the state's dimension; mlp_ratio: hidden width of each branch over ``width``.
        norm: None, True or False (module docstring).
        rdm_alpha_init, rdm_beta_init, rdm_time_conditioned: options of the ``rdm`` gate.
    """

    def __init__(self, *, input_size: int = 8, in_channels: int = 1, num_classes: int = 10,
                 frames: int | None = None, class_dropout_prob: float = 0.1, gate: str = "rdm",
                 depth: int = 16, width: int = 64, mlp_ratio: float = 2.0,
                 norm: bool | None = None, rdm_alpha_init: str | float = "rdm",
                 rdm_beta_init: float = 0.0, rdm_time_conditioned: bool = False):
        super().__init__(input_size=input_size, in_channels=in_channels, frames=frames)
        gate_class(gate)
        for name, value in (("depth", depth), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if depth > MAX_DEPTH:
            raise ValueError(f"depth {depth} is more than the {MAX_DEPTH} units an RDM-MLP has")
        self.gate_kind = gate
        self.sample_dim = math.prod(self.sample_shape)
        self.embed = nn.Linear(self.sample_dim, width)
        self.cond = Conditioning(width, num_classes, class_dropout_prob)
        self.units = nn.ModuleList(
            ResidualUnit(make_gate(gate, width, width, norm=norm, rdm_alpha_init=rdm_alpha_init,
                                   rdm_beta_init=rdm_beta_init,
                                   rdm_time_conditioned=rdm_time_conditioned),
                         Mlp(width, mlp_ratio))
            for _ in range(depth))
        self.head = MlpHead(width, self.sample_dim, norm=norm is not False)
        self.finish()

    def initialize_weights(self) -> None:
        """The transformer's initialisation (:meth:`.dit.RDMDiT.initialize_weights`): Xavier
        linear maps with zero bias (the embedding too), N(0, 0.02^2) conditioning, zero
        modulations and head, the gates at their initial values."""
        self.initialize_shared()
        self.head.modulation.zero_()
        nn.init.zeros_(self.head.linear.weight)
        nn.init.zeros_(self.head.linear.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, *sample_shape), t (B,) in [0, 1], y (B,) labels or None (null)."""
        self.check_input(x)
        z = self.embed(x.reshape(x.shape[0], self.sample_dim))
        c, e = self.cond(t, y, x.shape[0])
        for unit in self.units:
            z = unit(z, c, e)
        return self.head(z, c).view(x.shape)
