"""The U-shaped Neural-RDM backbone: a U-Net whose every residual unit is gated.

    stem conv -> encoder levels 0..n-1 -> middle -> decoder levels n-1..0 -> head
    encoder level l:  [downsample if l > 0] -> units -> keep skip_l
    decoder level l:  [upsample if l < n-1] -> h + kappa_l * skip_l -> units

Level l has width * channel_mult[l] channels at resolution input_size / 2^l.  Each level holds
``blocks_per_level`` blocks; a block is a gated residual conv unit (branch: SiLU, 3x3 conv,
GroupNorm, SiLU, dropout, 3x3 conv), followed at the levels in ``attention_levels`` by a gated
spatial self-attention unit, and in video mode by a gated temporal self-attention unit.  The
middle is conv, attention (spatial, then temporal for videos), conv.

Channel counts change only in the transitions (stem, strided-conv downsampling, nearest
upsampling + conv), which are not residual units: every unit is a true residual z -> z' of one
shape, as in the theory's stack.  The long skips are gated, h + kappa_l * skip_l, with kappa_l a
per-channel vector initialised at 1; it is learnable when ``skip_gates`` is true (by default for
every gate with learnable gates, i.e. all but plain and post-ln, which keep the ordinary additive
skip).

Video mode (``frames=T``, input (B, T, C, H, W)) runs the convolutions and spatial attention on
each frame (B T, C, H, W), factorises attention over space and time (Ho et al. 2022's
factorised space-time U-Net) and adds a sin-cos embedding of the frame index to the conditioning
of each frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import GatedBackbone
from .gates import ResidualUnit, gate_class, make_gate, make_norm
from .layers import Attention, Conditioning, OnMaps, TemporalAttention, sinusoidal_embedding

__all__ = ["RDMUNet", "UNET_CONFIGS"]

UNET_CONFIGS = {
    "RDM-UNet-T": {"backbone": "unet", "width": 32, "channel_mult": [1, 2],
                   "blocks_per_level": 1, "attention_levels": [1], "heads": 4, "norm_groups": 8},
    "RDM-UNet-S": {"backbone": "unet", "width": 64, "channel_mult": [1, 2, 2],
                   "blocks_per_level": 2, "attention_levels": [1, 2], "heads": 4,
                   "norm_groups": 16},
    "RDM-UNet-B": {"backbone": "unet", "width": 128, "channel_mult": [1, 2, 2, 2],
                   "blocks_per_level": 2, "attention_levels": [2, 3], "heads": 4,
                   "norm_groups": 32},
    "RDM-UNet-L": {"backbone": "unet", "width": 192, "channel_mult": [1, 2, 3, 4],
                   "blocks_per_level": 3, "attention_levels": [2, 3], "heads": 8,
                   "norm_groups": 32},
}


class ConvBranch(nn.Module):
    """F(h) = conv(dropout(SiLU(GroupNorm(conv(SiLU(h)))))), 3x3 convolutions, C -> C."""

    def __init__(self, channels: int, dropout: float, norm_groups: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            make_norm(channels, False, affine=True, groups=norm_groups), nn.SiLU(),
            nn.Dropout(dropout), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, h):
        return self.net(h)


class SkipGate(nn.Module):
    """h + kappa * skip, kappa per channel (learnable or fixed), initialised at 1."""

    def __init__(self, channels: int, learnable: bool):
        super().__init__()
        kappa = torch.ones(channels, 1, 1)
        if learnable:
            self.kappa = nn.Parameter(kappa)
        else:
            self.register_buffer("kappa", kappa)

    def forward(self, h, skip):
        return torch.addcmul(h, self.kappa, skip)


class Level(nn.Module):
    """One resolution of the encoder or decoder: a transition, [a skip gate], then the units."""

    def __init__(self, transition: nn.Module, units: list[ResidualUnit],
                 skip_gate: SkipGate | None = None):
        super().__init__()
        self.transition, self.skip_gate = transition, skip_gate
        self.units = nn.ModuleList(units)

    def forward(self, h, c, e, skip=None):
        h = self.transition(h)
        if self.skip_gate is not None:
            h = self.skip_gate(h, skip)
        for unit in self.units:
            h = unit(h, c, e)
        return h


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv that sets the channel count."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, 3, padding=1)

    def forward(self, h):
        return self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))


class RDMUNet(GatedBackbone):
    """U-Net with gated residual units and gated long skips (module docstring).

    Args:
        input_size: image side H = W, divisible by 2^(levels - 1).
        in_channels, num_classes, frames, class_dropout_prob, gate: as for :class:`RDMDiT`.
        width: channels of level 0; level l has width * channel_mult[l].
        channel_mult: one entry per level.
        blocks_per_level: gated conv units (with their attention units) per level.
        attention_levels: levels with spatial self-attention (the middle always has it).
        heads: attention heads at every attention unit.
        dropout: dropout inside the conv branches.
        norm_groups: GroupNorm groups (gcd with the channel count).
        skip_gates: learnable long-skip gates; None: learnable unless gate is plain or post-ln.
        rdm_alpha_init, rdm_beta_init, rdm_time_conditioned: options of the ``rdm`` gate.
    """

    def __init__(self, *, input_size: int = 32, in_channels: int = 3, num_classes: int = 10,
                 frames: int | None = None, class_dropout_prob: float = 0.1, gate: str = "rdm",
                 width: int = 128, channel_mult=(1, 2, 2, 2), blocks_per_level: int = 2,
                 attention_levels=(2, 3), heads: int = 4, dropout: float = 0.0,
                 norm_groups: int = 32, skip_gates: bool | None = None,
                 rdm_alpha_init: str | float = "rdm", rdm_beta_init: float = 0.0,
                 rdm_time_conditioned: bool = False):
        super().__init__(input_size=input_size, in_channels=in_channels, frames=frames)
        levels = len(channel_mult)
        if levels < 1 or input_size % 2 ** (levels - 1):
            raise ValueError(f"input_size {input_size} is not divisible by 2^{levels - 1} "
                             f"({levels} levels)")
        gate_class(gate)
        bad = [lvl for lvl in attention_levels if not 0 <= lvl < levels]
        if bad:
            raise ValueError(f"attention_levels {bad} outside the {levels} levels")
        self.gate_kind = gate
        self.skip_gates = gate not in ("plain", "post-ln") if skip_gates is None else skip_gates
        chans = [width * m for m in channel_mult]
        cond_dim = 4 * width
        self.cond = Conditioning(cond_dim, num_classes, class_dropout_prob)
        if self.frames is not None:
            self.register_buffer("frame_embed",
                                 sinusoidal_embedding(torch.arange(self.frames), cond_dim),
                                 persistent=False)  # (T, Dc)

        def unit(channels, branch):
            gate_ = make_gate(gate, channels, cond_dim, channels_last=False,
                              norm_groups=norm_groups, rdm_alpha_init=rdm_alpha_init,
                              rdm_beta_init=rdm_beta_init,
                              rdm_time_conditioned=rdm_time_conditioned)
            return ResidualUnit(gate_, branch)

        def block(channels, attend):  # conv unit [, spatial attention] [, temporal attention]
            units = [unit(channels, ConvBranch(channels, dropout, norm_groups))]
            if attend:
                units.append(unit(channels, OnMaps(Attention(channels, heads))))
            if self.frames is not None:
                units.append(unit(channels, OnMaps(TemporalAttention(channels, heads,
                                                                          self.frames))))
            return units

        def level_units(lvl):
            return [u for _ in range(blocks_per_level)
                    for u in block(chans[lvl], lvl in attention_levels)]

        self.stem = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.encoder = nn.ModuleList(
            Level(nn.Conv2d(chans[lvl - 1], chans[lvl], 3, stride=2, padding=1) if lvl
                  else nn.Identity(), level_units(lvl)) for lvl in range(levels))
        bottom = chans[-1]
        self.middle = nn.ModuleList(block(bottom, True)
                                    + [unit(bottom, ConvBranch(bottom, dropout, norm_groups))])
        self.decoder = nn.ModuleList(
            Level(Upsample(chans[lvl + 1], chans[lvl]) if lvl < levels - 1 else nn.Identity(),
                  level_units(lvl), SkipGate(chans[lvl], self.skip_gates))
            for lvl in reversed(range(levels)))
        self.head = nn.Sequential(make_norm(chans[0], False, affine=True, groups=norm_groups),
                                  nn.SiLU(), nn.Conv2d(chans[0], in_channels, 3, padding=1))
        self.finish()

    def initialize_weights(self) -> None:
        """ADM-like, with the gates deciding the identity.

        * Convolutions keep PyTorch's default (He-uniform) initialisation; attention and other
          linear maps are Xavier uniform with zero bias, as in the transformer.
        * Time MLP and label table: N(0, 0.02^2).  Modulation regressors: zero (no branch
          depends on the conditioning at init).
        * The head's last conv is zero, so the prediction starts at 0.
        * Unlike ADM, the branches' last convs are not zeroed: the gate alone decides whether a
          unit starts as the identity (rezero, adaln-zero, rdm with alpha_init 0) or not; rdm
          starts at alpha = 1/L with L the number of units.  Long-skip gates start at 1.
        """
        self.initialize_shared()
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def conditioning(self, t, y, batch):
        c, e = super().conditioning(t, y, batch)
        if self.frames is not None:  # each frame knows its index through its conditioning
            c = (c.view(batch, self.frames, -1) + self.frame_embed).view(c.shape)
        return c, e

    def extra_gates(self) -> dict[str, torch.Tensor]:
        return {f"decoder.{i}.skip_gate.kappa": level.skip_gate.kappa.detach().flatten()
                for i, level in enumerate(self.decoder)}

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) or (B, T, C, H, W), t (B,) in [0, 1], y (B,) labels or None (null)."""
        self.check_input(x)
        B = x.shape[0]
        c, e = self.conditioning(t, y, B)
        h = self.stem(x.reshape(-1, *x.shape[-3:]))  # (B T, C0, H, W)
        skips = []
        for level in self.encoder:
            h = level(h, c, e)
            skips.append(h)
        for unit in self.middle:
            h = unit(h, c, e)
        for level in self.decoder:
            h = level(h, c, e, skips.pop())
        return self.head(h).view(x.shape)
