"""The flow-shaped Neural-RDM backbone: a DiT-like transformer with gated residual units.

Images (B, C, H, W) are cut into p x p patches, embedded linearly and given a fixed 2-D sin-cos
position; the diffusion time and the class make the conditioning c.  The tokens then flow
through ``depth`` blocks of two residual units each, self-attention then MLP, under any gate of
:mod:`rdm_dynamics.models.gates`; a modulated linear head turns each token back into its patch.

Video mode (``frames=T``, input (B, T, C, H, W)) factorises attention over space and time as
Latte does (Ma et al. 2024, its interleaved variant): the frames are patchified one by one, a
fixed sin-cos embedding of the frame index is added to the tokens, and the blocks alternate
between spatial attention (over the N tokens of a frame) and temporal attention (over the T
frames at one spatial position).  Every unit works on tokens of shape (B T, N, D).

Named configurations (``DIT_CONFIGS``, sizes in ``DIT_SIZES``) follow DiT's table (S, B, L, XL
with p = 2, 4, 8) plus a tiny size T and a nano size N (the digits benchmark's) for the CPU:
``RDM-DiT-N/2``, ``RDM-DiT-T/2`` ... ``RDM-DiT-XL/8`` (and ``RDM-DiT-N/1``, ``RDM-DiT-T/1``).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import GatedBackbone
from .gates import Modulation, ResidualUnit, gate_class, make_gate
from .layers import (
    Attention,
    Conditioning,
    Mlp,
    TemporalAttention,
    grid_embedding,
    sinusoidal_embedding,
)

__all__ = ["RDMDiT", "DIT_CONFIGS", "DIT_SIZES", "describe_size"]

DIT_SIZES = {  # depth (blocks), width (hidden size), heads
    "N": {"depth": 4, "width": 96, "heads": 4},  # the digits benchmark's (benchmarks/)
    "T": {"depth": 6, "width": 128, "heads": 4},
    "S": {"depth": 12, "width": 384, "heads": 6},
    "B": {"depth": 12, "width": 768, "heads": 12},
    "L": {"depth": 24, "width": 1024, "heads": 16},
    "XL": {"depth": 28, "width": 1152, "heads": 16},
}
DIT_CONFIGS = {f"RDM-DiT-{size}/{p}": {"backbone": "dit", "patch_size": p, **dims}
               for size, dims in DIT_SIZES.items()
               for p in ((1, 2, 4, 8) if size in ("N", "T") else (2, 4, 8))}


def describe_size(size: str) -> str:
    """A DiT size in words, from ``DIT_SIZES`` (the one place the sizes are written)."""
    dims = DIT_SIZES[size]
    return f"{dims['depth']} blocks of width {dims['width']}, {dims['heads']} heads"


class Block(nn.Module):
    """Two gated residual units: self-attention (over space or time), then the MLP."""

    def __init__(self, attn: nn.Module, width: int, mlp_ratio: float, gate_factory):
        super().__init__()
        self.attn = ResidualUnit(gate_factory(), attn)
        self.mlp = ResidualUnit(gate_factory(), Mlp(width, mlp_ratio))

    def forward(self, h, c, e):
        return self.mlp(self.attn(h, c, e), c, e)


class FinalLayer(nn.Module):
    """Modulated LayerNorm, then a linear map of each token to its p x p x C patch."""

    def __init__(self, width: int, patch_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
        self.modulation = Modulation(width, width, 2)
        self.linear = nn.Linear(width, patch_dim)

    def forward(self, h, c):
        shift, scale = self.modulation(c)
        return self.linear(self.norm(h) * (1 + scale[:, None]) + shift[:, None])


class RDMDiT(GatedBackbone):
    """DiT-like transformer with gated residual units (module docstring).

    Args:
        input_size: image side H = W (divisible by ``patch_size``).
        in_channels: C; the output has the input's shape.
        num_classes: K; label K is the null label of classifier-free guidance.
        frames: None for images, T for videos (B, T, C, H, W).
        class_dropout_prob: probability of replacing a label by the null label in training.
        gate: one of ``GATE_KINDS``.
        patch_size, depth, width, heads, mlp_ratio: the transformer's shape (``depth`` blocks of
            two units each).
        rdm_alpha_init, rdm_beta_init, rdm_time_conditioned: options of the ``rdm`` gate.
        norm: None builds each gate as defined; True/False with or without its normalisation
            (``gates.make_gate``; the head keeps its LayerNorm).
    """

    def __init__(self, *, input_size: int = 32, in_channels: int = 4, num_classes: int = 1000,
                 frames: int | None = None, class_dropout_prob: float = 0.1, gate: str = "rdm",
                 patch_size: int = 2, depth: int = 12, width: int = 768, heads: int = 12,
                 mlp_ratio: float = 4.0, rdm_alpha_init: str | float = "rdm",
                 rdm_beta_init: float = 0.0, rdm_time_conditioned: bool = False,
                 norm: bool | None = None):
        super().__init__(input_size=input_size, in_channels=in_channels, frames=frames)
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        gate_class(gate)
        self.patch_size, self.gate_kind = patch_size, gate
        self.grid = input_size // patch_size

        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", grid_embedding(self.grid, self.grid, width)[None],
                             persistent=False)
        if self.frames is not None:
            frame_pos = sinusoidal_embedding(torch.arange(self.frames), width)[:, None]
            self.register_buffer("frame_embed", frame_pos, persistent=False)  # (T, 1, D)
        self.cond = Conditioning(width, num_classes, class_dropout_prob)

        def gate_factory():
            return make_gate(gate, width, width, rdm_alpha_init=rdm_alpha_init,
                             rdm_beta_init=rdm_beta_init,
                             rdm_time_conditioned=rdm_time_conditioned, norm=norm)

        def attention(i):  # video: even blocks attend over space, odd blocks over time
            if self.frames is not None and i % 2 == 1:
                return TemporalAttention(width, heads, self.frames)
            return Attention(width, heads)

        self.blocks = nn.ModuleList(Block(attention(i), width, mlp_ratio, gate_factory)
                                    for i in range(depth))
        self.final = FinalLayer(width, patch_size * patch_size * in_channels)
        self.finish()

    def initialize_weights(self) -> None:
        """DiT's initialisation, for the same reasons.

        * Linear maps and the patch embedding (a linear map of the flattened patch): Xavier
          uniform, zero bias, so the token stream starts with unit-order variance.
        * Time MLP and label table: N(0, 0.02^2), small against the unit-order tokens.
        * Every modulation regressor is zero: at init no branch depends on the conditioning.
        * The head is zero: the prediction starts at 0 (an epsilon-prediction loss starts at 1).
        * The gates take their initial values (gates.py): rezero and adaln-zero make every unit
          the identity, rdm starts at the ODE-consistent step alpha = 1/L, L = 2 depth units.
        The branches themselves are not zeroed, so the gate alone decides whether a unit starts
        as the identity.
        """
        self.initialize_shared()
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        self.final.modulation.zero_()
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B', C, H, W) -> tokens (B', N, D) with their positions."""
        return self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed

    def unpatchify(self, h: torch.Tensor) -> torch.Tensor:
        """(B', N, p p C) -> (B', C, H, W)."""
        p, g, C = self.patch_size, self.grid, self.in_channels
        h = h.view(-1, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(-1, C, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) or (B, T, C, H, W), t (B,) in [0, 1], y (B,) labels or None (null)."""
        self.check_input(x)
        B = x.shape[0]
        h = self.patchify(x.reshape(-1, *x.shape[-3:]))  # (B T, N, D)
        if self.frames is not None:
            h = (h.view(B, self.frames, *h.shape[1:]) + self.frame_embed).view(h.shape)
        c, e = self.conditioning(t, y, B)
        for block in self.blocks:
            h = block(h, c, e)
        return self.unpatchify(self.final(h, c)).view(x.shape)
