"""A tiny model that follows the rdm_dynamics.models contract, for fast training tests.

``build(name, *, gate, input_size, in_channels, num_classes, frames, class_dropout_prob,
**overrides)`` mirrors ``rdm_dynamics.models.build_model``: ``model(x, t, y)`` returns a tensor of
x's shape, label ``num_classes`` is the null label (y=None: all null), ``config`` rebuilds it,
``residual_units()`` and ``gate_values()`` expose two gated conv units.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Unit(nn.Module):
    """h + alpha * conv(silu(conv(silu(h + c)))) + beta, alpha and beta per channel."""

    def __init__(self, width: int):
        super().__init__()
        self.branch = nn.Sequential(nn.SiLU(), nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                                    nn.Conv2d(width, width, 3, padding=1))
        self.alpha = nn.Parameter(torch.full((width, 1, 1), 0.5))
        self.beta = nn.Parameter(torch.zeros(width, 1, 1))

    def forward(self, h, c):
        return h + self.alpha * self.branch(h + c) + self.beta


class TinyNet(nn.Module):
    def __init__(self, input_size=8, in_channels=1, num_classes=10, frames=None,
                 class_dropout_prob=0.1, gate="rdm", width=16, depth=2):
        super().__init__()
        self.num_classes, self.frames, self.width = num_classes, frames, width
        self.dropout_prob = class_dropout_prob
        self.time = nn.Sequential(nn.Linear(2 * 8, width), nn.SiLU(), nn.Linear(width, width))
        self.label = nn.Embedding(num_classes + 1, width)
        self.inp = nn.Conv2d(in_channels, width, 3, padding=1)
        self.units = nn.ModuleList(Unit(width) for _ in range(depth))
        self.out = nn.Conv2d(width, in_channels, 3, padding=1)

    def residual_units(self):
        return list(self.units)

    def gate_values(self):
        vals = {}
        for i, u in enumerate(self.units):
            vals[f"unit{i}.alpha"] = u.alpha.detach().reshape(-1)
            vals[f"unit{i}.beta"] = u.beta.detach().reshape(-1)
        return vals

    def forward(self, x, t, y=None):
        video = x.ndim == 5
        b = x.shape[0]
        if y is None:
            y = torch.full((b,), self.num_classes, dtype=torch.long, device=x.device)
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(b, device=x.device) < self.dropout_prob
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        freqs = torch.exp(torch.arange(8, device=x.device) * (-math.log(1000.0) / 8))
        ang = 1000.0 * t[:, None].to(torch.float32) * freqs
        c = self.time(torch.cat([ang.sin(), ang.cos()], -1)) + self.label(y)
        if video:
            f = x.shape[1]
            x = x.reshape(b * f, *x.shape[2:])
            c = c.repeat_interleave(f, 0)
        h = self.inp(x)
        c = c[:, :, None, None].to(h.dtype)
        for u in self.units:
            h = u(h, c)
        out = self.out(h)
        return out.reshape(b, -1, *out.shape[1:]) if video else out


def build(name="tiny", *, gate="rdm", input_size=8, in_channels=1, num_classes=10, frames=None,
          class_dropout_prob=0.1, **overrides):
    model = TinyNet(input_size, in_channels, num_classes, frames, class_dropout_prob, gate,
                    **overrides)
    model.config = {"name": name, "gate": gate, "input_size": input_size,
                    "in_channels": in_channels, "num_classes": num_classes, "frames": frames,
                    "class_dropout_prob": class_dropout_prob, **overrides}
    return model
