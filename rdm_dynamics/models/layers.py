"""Layers shared by the backbones: embeddings of time, class and position; attention; MLP.

Time is the continuous diffusion time t in [0, 1] of :mod:`rdm_dynamics.sde`.  Its embedding is
an MLP of the sinusoidal features of 1000 t (the integer-step scale of DDPM and DiT, so the
highest frequency resolves time steps of 1e-3).  Class labels 0..K-1 are embedded by a table
with one more row, the null label K used by classifier-free guidance; in training mode a label is
replaced by the null label with probability ``dropout_prob`` (Ho & Salimans 2022).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["sinusoidal_embedding", "grid_embedding", "TimestepEmbedder", "LabelEmbedder",
           "Conditioning", "Attention", "TemporalAttention", "OnMaps", "Mlp",
           "frames_to_sequences", "sequences_to_frames"]


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """x (...) -> (..., dim): [cos(x w_k), sin(x w_k)], w_k = max_period^(-k / (dim/2)), k < dim/2.

    An odd ``dim`` gets a zero last column.
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=x.device)
    args = x.float()[..., None] * torch.exp(-math.log(max_period) * k / half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def grid_embedding(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (height * width, dim), row-major: half the channels
    encode the row, half the column."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.cat([sinusoidal_embedding(rows.flatten(), dim // 2),
                      sinusoidal_embedding(cols.flatten(), dim - dim // 2)], dim=-1)


class TimestepEmbedder(nn.Module):
    """t (B,) in [0, 1] -> (B, dim): MLP(sinusoidal(1000 t))."""

    def __init__(self, dim: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = sinusoidal_embedding(1000.0 * t, self.frequency_dim)
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """y (B,) in 0..K (K = null label) -> (B, dim), with label dropout to K in training mode."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        if not 0.0 <= dropout_prob <= 1.0:
            raise ValueError(f"class_dropout_prob must lie in [0, 1], got {dropout_prob}")
        self.num_classes, self.dropout_prob = num_classes, float(dropout_prob)
        self.table = nn.Embedding(num_classes + 1, dim)

    def drop(self, y: torch.Tensor) -> torch.Tensor:
        """Replace each label by the null label with probability ``dropout_prob``."""
        dropped = torch.rand(y.shape, device=y.device) < self.dropout_prob
        return torch.where(dropped, torch.full_like(y, self.num_classes), y)

    def forward(self, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if self.training and self.dropout_prob > 0:
            y = self.drop(y)
        return self.table(y)


class Conditioning(nn.Module):
    """(t, y) -> (c, e): c = e(t) + emb(y) conditions the branches, e(t) alone the time gates."""

    def __init__(self, dim: int, num_classes: int, dropout_prob: float):
        super().__init__()
        self.time = TimestepEmbedder(dim)
        self.label = LabelEmbedder(num_classes, dim, dropout_prob)

    def forward(self, t: torch.Tensor, y: torch.Tensor | None,
                batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, device=self.label.table.weight.device)
        e = self.time(t.expand(batch) if t.ndim == 0 else t)
        return e + self.label(y, batch, e.device), e


class Attention(nn.Module):
    """Multi-head self-attention over the sequences of x (B, L, D), by
    ``torch.nn.functional.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class TemporalAttention(nn.Module):
    """Self-attention over time (Latte-style factorised video attention): tokens (B T, N, D) of
    T-frame videos attend to the tokens at the same position N in all T frames."""

    def __init__(self, dim: int, heads: int, frames: int):
        super().__init__()
        self.frames = frames
        self.attn = Attention(dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sequences_to_frames(self.attn(frames_to_sequences(x, self.frames)), x.shape[1])


class OnMaps(nn.Module):
    """A token module (B', L, C) -> (B', L, C) applied to feature maps (B', C, H, W), whose
    L = H W positions are the tokens (how the U-Net uses the attention layers)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, C, H, W = h.shape
        out = self.inner(h.flatten(2).transpose(1, 2))
        return out.transpose(1, 2).reshape(B, C, H, W)


class Mlp(nn.Module):
    """x -> W_2 GELU(W_1 x), hidden width ``ratio`` * dim (tanh GELU, as in DiT)."""

    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def frames_to_sequences(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B T, N, D) -> (B N, T, D): one sequence over time per video and spatial position."""
    BT, N, D = x.shape
    return x.view(BT // frames, frames, N, D).transpose(1, 2).reshape(-1, frames, D)


def sequences_to_frames(x: torch.Tensor, tokens: int) -> torch.Tensor:
    """(B N, T, D) -> (B T, N, D), the inverse of :func:`frames_to_sequences`."""
    BN, T, D = x.shape
    return x.view(BN // tokens, tokens, T, D).transpose(1, 2).reshape(-1, tokens, D)
