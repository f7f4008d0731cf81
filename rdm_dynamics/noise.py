"""Random streams and Brownian paths: where every random draw of the toolkit comes from.

* ``stream_generator(seed, stream)``: the one seeding formula (each check, each trained model's
  draws, each epoch's shuffle and each known-law image have their own stream);
* ``numpy_rng``: the one place a torch generator becomes a numpy one;
* ``standard_normal``: draws made on the generator's device, then moved;
* ``BrownianPath``: one Brownian path per sample on an interval of length ``span``, handing out
  its increments on uniform grids of ``base_steps * 2^k`` steps.  Finer grids are made from
  coarser ones by the Levy (Brownian bridge) construction: an increment D over a step of length
  dt splits into

    left = D / 2 + (sqrt(dt) / 2) Z,   right = D - left,     Z ~ N(0, I),

  so the two halves are independent N(0, dt/2) given nothing, sum to D, and every rung of a depth
  ladder sees the same path.  Levels are built in order, so the path is a function of the seed
  alone, whatever order the levels are asked for in.  No Brownian tree is queried per step: each
  level is one vectorised tensor operation.

The path's normals Z come from numpy's ``Generator(PCG64)`` (ziggurat sampling, float64), seeded
by one draw from the torch generator the path is given (``numpy_rng``): torch's CPU generator
makes float64 normals at about half that rate, and the noise is the largest cost of a stochastic
stack.  They are made in float64 on the CPU whatever the path's dtype and device, then cast and
moved: a float32 or CUDA path is the float64 CPU path, rounded.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["stream_generator", "numpy_rng", "standard_normal", "BrownianPath"]


def standard_normal(shape, *, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """N(0, I) draws of ``shape`` from ``generator``, made on the generator's own device and
    then moved to ``device``: a seeded CPU generator gives the same numbers whether the result
    lives on the CPU or on a GPU (and torch refuses a generator of another device anyway)."""
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=where).to(device)


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """The CPU generator of random stream ``stream`` under run seed ``seed``, seeded with
    seed * 1_000_003 + stream: the one seeding formula of the toolkit (each check, each trained
    model's draws, each epoch's shuffle and each known-law image have their own stream, so
    running one alone gives the numbers it gives among the others)."""
    g = torch.Generator(device="cpu")
    g.manual_seed((int(seed) * 1_000_003 + int(stream)) % 2**63)
    return g


def numpy_rng(generator) -> np.random.Generator:
    """The numpy generator that draws bulk float64 normals (numpy's PCG64 with its ziggurat
    sampler, about twice as fast as ``torch.randn`` in float64 on a CPU): ``generator`` itself
    if it is one, else one seeded by a draw from the torch ``generator`` (None: torch's default
    stream), so every draw is reproducible from the torch seed and the torch stream moves on by
    one draw.  The one place the toolkit turns a torch generator into a numpy one (the Brownian
    path, C7's weights and paths)."""
    if isinstance(generator, np.random.Generator):
        return generator
    seed = torch.randint(0, 2**62, (1,), generator=generator,
                         device=None if generator is None else generator.device).item()
    return np.random.default_rng(seed)


class BrownianPath:
    """A Brownian path per sample, refined dyadically on demand.

    Args:
        span: length of the time interval the path covers (> 0).
        shape: shape of one increment, usually the batch shape (B, ...).
        base_steps: number of steps of the coarsest grid.
        generator: the random source; the path is reproducible from its seed.
    """

    def __init__(self, span: float, shape, *, base_steps: int = 1,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None):
        if span <= 0 or base_steps < 1:
            raise ValueError("span must be positive and base_steps >= 1")
        self.span, self.shape, self.base_steps = float(span), tuple(shape), int(base_steps)
        self.dtype, self.device = dtype, device
        self._source = numpy_rng(generator)
        dt = self.span / self.base_steps
        self._levels = [math.sqrt(dt) * self._normal(self.base_steps)]

    def _normal(self, n: int) -> torch.Tensor:
        """n x shape N(0, 1) draws: float64 on the CPU from the path's source, then cast and
        moved to the path's dtype and device."""
        z = torch.from_numpy(self._source.standard_normal((n, *self.shape)))
        return z.to(device=self.device, dtype=self.dtype)

    def _refine(self, coarse: torch.Tensor) -> torch.Tensor:
        """The next level: left = D / 2 + (sqrt(dt) / 2) Z, right = D - left, interleaved.

        Written into one preallocated (n, 2, ...) tensor (no temporaries, no stack copy); the
        arithmetic is that of the formula, rounding for rounding (each product and sum rounded
        once, in this order), so the path is the same for a seed as with the plain formula."""
        n = coarse.shape[0]
        dt = self.span / n
        fine = torch.empty((n, 2, *self.shape), dtype=coarse.dtype, device=coarse.device)
        left, right = fine[:, 0], fine[:, 1]
        torch.mul(coarse, 0.5, out=right)  # D / 2, kept in `right` until right = D - left
        torch.add(right, self._normal(n).mul_(0.5 * math.sqrt(dt)), out=left)
        torch.sub(coarse, left, out=right)
        return fine.reshape(2 * n, *self.shape)

    def increments(self, steps: int) -> torch.Tensor:
        """Increments W(t_{i+1}) - W(t_i) on the grid of ``steps`` steps; (steps, *shape)."""
        ratio = steps // self.base_steps
        if steps < self.base_steps or ratio * self.base_steps != steps or ratio & (ratio - 1):
            raise ValueError(f"steps must be base_steps * 2^k (base_steps={self.base_steps}), "
                             f"got {steps}")
        level = ratio.bit_length() - 1
        while len(self._levels) <= level:
            self._levels.append(self._refine(self._levels[-1]))
        return self._levels[level]

    def normalised_increments(self, steps: int) -> torch.Tensor:
        """xi_i = dW_i / sqrt(dt): the standard normal noise a stochastic unit takes."""
        return self.increments(steps) / math.sqrt(self.span / steps)
