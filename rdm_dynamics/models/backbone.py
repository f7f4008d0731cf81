"""What every Neural-RDM backbone shares: its residual units in order, their gate values, its
conditioning and the shape of its samples."""

from __future__ import annotations

import torch
from torch import nn

from .gates import ResidualUnit

__all__ = ["GatedBackbone"]


class GatedBackbone(nn.Module):
    """Base class of the backbones.

    A subclass builds ``self.cond`` (a :class:`Conditioning`) and its units, registering modules
    in the order the forward pass runs them, then calls ``self.finish()``, which names the units
    and runs its ``initialize_weights``.  ``config`` is set by ``build_model``.
    """

    def __init__(self, *, input_size: int, in_channels: int, frames: int | None):
        super().__init__()
        if frames is not None and int(frames) < 1:
            raise ValueError(f"frames must be a positive integer or None, got {frames!r}")
        self.input_size, self.in_channels = int(input_size), int(in_channels)
        self.frames = None if frames is None else int(frames)
        self.config: dict = {}

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: (C, H, W), or (T, C, H, W) in video mode."""
        image = (self.in_channels, self.input_size, self.input_size)
        return image if self.frames is None else (self.frames, *image)

    def check_input(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.sample_shape:
            shape = ", ".join(map(str, self.sample_shape))
            raise ValueError(f"expected input of shape (B, {shape}), got {tuple(x.shape)}")

    def conditioning(self, t: torch.Tensor, y: torch.Tensor | None,
                     batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, e) for each sample, repeated for each frame in video mode (B or B T rows)."""
        c, e = self.cond(t, y, batch)
        if self.frames is not None:
            c, e = c.repeat_interleave(self.frames, 0), e.repeat_interleave(self.frames, 0)
        return c, e

    def finish(self) -> None:
        for name, module in self.named_modules():
            if isinstance(module, ResidualUnit):
                module.name = name
        self.initialize_weights()

    def initialize_weights(self) -> None:
        raise NotImplementedError

    def initialize_shared(self) -> None:
        """The initialisation every backbone shares (each ``initialize_weights`` says why).

        Linear maps: Xavier uniform, zero bias.  Time MLP and label table: N(0, 0.02^2).  Then
        every gate's ``initialize(L)``, L the number of units: modulation regressors zero and
        the gates at their initial values (gates.py).
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.cond.time.mlp[0].weight, std=0.02)
        nn.init.normal_(self.cond.time.mlp[2].weight, std=0.02)
        nn.init.normal_(self.cond.label.table.weight, std=0.02)
        units = self.residual_units()
        for unit in units:
            unit.gate.initialize(len(units))

    def residual_units(self) -> list[ResidualUnit]:
        """The gated residual units, in the order the forward pass applies them."""
        return [m for m in self.modules() if isinstance(m, ResidualUnit)]

    def extra_gates(self) -> dict[str, torch.Tensor]:
        """Gates that are not residual units (e.g. a U-Net's long-skip gates), by name."""
        return {}

    @torch.no_grad()
    def gate_values(self, t: float = 0.5, y: int | None = None) -> dict[str, torch.Tensor]:
        """Current gate values, ``"<unit>.alpha"`` (and ``"<unit>.beta"``) for every unit, in order.

        Gates that depend on the conditioning (adaln-zero; rdm with time conditioning) are
        evaluated at diffusion time ``t`` and label ``y`` (None: the null label).  Per-channel
        gates are vectors, scalar gates 0-d tensors; plain and post-ln gates are 1.
        """
        label = self.cond.label
        device = label.table.weight.device
        e = self.cond.time(torch.tensor([float(t)], device=device))
        c = e + label.table(torch.tensor([label.num_classes if y is None else y], device=device))
        out = {}
        for unit in self.residual_units():
            for key, value in unit.gate.values(c, e).items():
                out[f"{unit.name}.{key}"] = value
        out.update(self.extra_gates())
        return out
