"""Two-sample statistics with standard errors: is Law(X) = Law(Y), from samples of each?

``energy_distance`` estimates the energy distance (Szekely and Rizzo)

    D(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|  >= 0,   zero iff Law(X) = Law(Y),

as a block U-statistic: the samples are cut into blocks of b points; in each block the three
expectations are replaced by their unbiased U-statistics (all b^2 cross pairs, all b (b - 1)
within pairs), which gives independent unbiased estimates D_j of D, one per block.  The estimate
is their mean and its standard error their sample standard deviation over sqrt(number of blocks):
no asymptotic variance formula is needed, and a block of b points has about b / 2 times less
variance than one pair of the linear-time estimator.
"""

from __future__ import annotations

import math

import torch

__all__ = ["energy_distance"]

EXACT = "donot_use_mm_for_euclid_dist"  # no |x|^2 + |y|^2 - 2 x.y cancellation


def energy_distance(x: torch.Tensor, y: torch.Tensor, *, block: int = 100) -> tuple[float, float]:
    """(estimate, standard error) of the energy distance between the laws of x and y, (n, d)
    samples each (see the module docstring); uses the first ``block * m`` samples of each, with
    m = min(n_x, n_y) // block >= 2 blocks."""
    m = min(x.shape[0], y.shape[0]) // block
    if block < 2 or m < 2:
        raise ValueError(f"the energy distance needs at least two blocks of {block} samples "
                         "of each law")
    xb = x[: m * block].reshape(m, block, -1)
    yb = y[: m * block].reshape(m, block, -1)
    off_diagonal = block * (block - 1)
    cross = torch.cdist(xb, yb, compute_mode=EXACT).mean((1, 2))
    within_x = torch.cdist(xb, xb, compute_mode=EXACT).sum((1, 2)) / off_diagonal
    within_y = torch.cdist(yb, yb, compute_mode=EXACT).sum((1, 2)) / off_diagonal
    per_block = 2 * cross - within_x - within_y
    return float(per_block.mean()), float(per_block.std() / math.sqrt(m))
