"""The theory checks, one module per claim, found by discovery.

A check module defines ``CLAIM`` ("C1", ...), ``ID`` (the name used by ``--only``), ``TITLE``
and ``run(config: CheckConfig) -> CheckResult``.  Adding a claim means adding one module here:
the registry imports every module of this package that defines those names and orders the checks
by claim number; ``run_checks`` runs them.  A claim module reads as measure (its metrics), rules
(``rules.Rule``, applied by ``rules.judge``), summary (one sentence) and figure.  Beside the
claim modules: ``report`` (results, table, JSON, figures), ``rules`` (the verdict mechanism),
``problems`` (the problems several checks share) and ``checkpoints`` (the trained model that the
checks of ``KIND = "checkpoint"``, C8 and up, are run on: a registry of their own).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from types import ModuleType

import torch

__all__ = ["CheckConfig", "KINDS", "registry", "depth_ladder", "resolve_ids", "run_checks"]


def depth_ladder(depth: int, rungs: int = 5) -> list[int]:
    """The depths depth / 2^k, k = rungs-1 .. 0, that are integers (ascending).

    The ladder is nested: every grid is a sub-grid of the next, so the same initial points and
    the same Brownian path serve every rung.
    """
    return sorted({depth >> k for k in range(rungs) if depth % (1 << k) == 0 and depth >> k >= 1})


@dataclass(frozen=True)
class CheckConfig:
    """What every check is run with (the verify command line)."""

    depth: int = 256
    gating: str = "rdm"
    seed: int = 0
    dtype: torch.dtype = torch.float64
    device: str = "cpu"
    quick: bool = False
    ladder: tuple[int, ...] = field(default=())

    def __post_init__(self):
        if not self.ladder:
            object.__setattr__(self, "ladder", tuple(depth_ladder(self.depth)))

    def generator(self, stream: int = 0) -> torch.Generator:
        """A CPU generator seeded by (seed, stream): each check draws from its own stream, so
        running one check alone (``--only``) gives the same numbers as running all of them."""
        g = torch.Generator(device="cpu")
        g.manual_seed(self.seed * 1_000_003 + stream)
        return g

    @property
    def placement(self) -> dict:
        """The dtype and device the stack under test runs in, as keyword arguments:
        ``tensor.to(**config.placement)``, ``GatedResidualStack(..., **config.placement)``."""
        return {"dtype": self.dtype, "device": self.device}

    @property
    def reference_placement(self) -> dict:
        """float64 on the config's device: where the references run, whatever ``dtype`` is."""
        return {"dtype": torch.float64, "device": self.device}


def _claim_number(module: ModuleType) -> tuple[int, str]:
    claim = module.CLAIM
    return (int(claim[1:]) if claim[1:].isdigit() else 10**6, module.ID)


#: The two registries: ``theory`` checks run on exact residual functions (CheckConfig),
#: ``checkpoint`` checks on a trained model (checks.checkpoints.CheckpointConfig).  A module
#: says which with ``KIND`` (default ``theory``).
KINDS = ("theory", "checkpoint")


def registry(kind: str = "theory") -> dict[str, ModuleType]:
    """All check modules of ``kind`` (``KINDS``), by id, in claim order."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of check {kind!r}; choose one of {KINDS}")
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if all(hasattr(module, name) for name in ("CLAIM", "ID", "TITLE", "run")) \
                and getattr(module, "KIND", "theory") == kind:
            found.append(module)
    return {m.ID: m for m in sorted(found, key=_claim_number)}


def resolve_ids(spec: str, checks: dict[str, ModuleType]) -> list[str]:
    """Turn ``--only`` text (ids or claim names, comma separated) into check ids.

    Raises ValueError naming the unknown entries.
    """
    by_claim = {m.CLAIM.lower(): cid for cid, m in checks.items()}
    wanted, unknown = [], []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        cid = item if item in checks else by_claim.get(item.lower())
        (wanted if cid else unknown).append(cid or item)
    if unknown:
        raise ValueError(f"unknown check {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(checks)}")
    if not wanted:
        raise ValueError("--only names no check")
    return [cid for cid in checks if cid in wanted]


def run_checks(config: CheckConfig, checks: dict[str, ModuleType], progress: bool = True) -> list:
    """Run each check (``registry()`` entries), timing it; a check that raises is a FAIL with the
    error in its summary and its traceback on stderr.  A tqdm bar on stderr unless
    ``progress`` is false."""
    from tqdm.auto import tqdm

    from .report import CheckResult
    from .rules import Verdict

    results = []
    bar = tqdm(list(checks.items()), desc="verify", unit="check", disable=not progress,
               file=sys.stderr, leave=False)
    for cid, module in bar:
        bar.set_postfix_str(cid)
        start = time.perf_counter()
        try:
            result = module.run(config)
        except Exception as exc:  # a crashed check is reported, never silently passed
            traceback.print_exc(file=sys.stderr)
            result = CheckResult(id=cid, claim=module.CLAIM, metrics={},
                                 verdict=Verdict(passed=False), summary=f"the check crashed: "
                                 f"{type(exc).__name__}: {exc}",
                                 measured_text="crashed", theory_text="-")
        result.seconds = time.perf_counter() - start
        results.append(result)
    return results
