"""The checks, one module per claim, listed by kind in :data:`CLAIM_MODULES`.

Every claim module has one shape (``claim.py`` says it in full): ``measure(config) -> Measurement``
(the metrics, no judging), its pass rules declared once (``RULES``, or ``rules(measurement)``
built from the metrics' names), ``summary(measurement, verdict)``, ``headline(measurement)``,
``figure(measurement)``; ``claim.run_claim`` composes them into a ``report.CheckResult``.
Adding a claim means adding its module and one entry in :data:`CLAIM_MODULES`.

Beside the claim modules: ``claim`` (the shape and ``run_claim``), ``rules`` (pass rules and the
one ``judge``), ``report`` (results, table, JSON, figures), ``workers`` (running checks in this
process or in worker processes), ``problems`` (the problems several theory checks share),
``trained_subject`` (the trained model the checkpoint checks run on), ``denoising_audit`` (what C10
checks besides its identity: design, law, label control, training data), ``faults``, ``self_test``
and ``self_test_subject`` (``verify --self-test`` and the small model it trains).  Listing or
running the theory checks imports none of the training code: the registry imports only the
modules of the kind asked for.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from types import ModuleType

import torch

from ..noise import stream_generator

__all__ = ["CheckConfig", "KINDS", "CLAIM_MODULES", "registry", "Measurement", "run_claim",
           "depth_ladder", "resolve_ids", "run_checks", "min_depth", "MIN_RUNGS"]

#: An order is a least-squares slope with a standard error: it needs at least three depths.
MIN_RUNGS = 3


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
    schedule: str = "rdm"
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
        return stream_generator(self.seed, stream)

    @property
    def report_fields(self) -> dict:
        """What the report says of this configuration beyond depth, seed, dtype and device: the
        schedule, and under ``gating`` (its former key, deprecated: kept for one release) again."""
        return {"schedule": self.schedule, "gating": self.schedule}

    @property
    def placement(self) -> dict:
        """The dtype and device the stack under test runs in, as keyword arguments:
        ``tensor.to(**config.placement)``, ``GatedResidualStack(..., **config.placement)``."""
        return {"dtype": self.dtype, "device": self.device}

    @property
    def reference_placement(self) -> dict:
        """float64 on the config's device: where the references run, whatever ``dtype`` is."""
        return {"dtype": torch.float64, "device": self.device}


def min_depth(module: ModuleType) -> int:
    """The smallest --depth a check can measure its claim at: its ``MIN_DEPTH`` if it declares
    one, else the smallest whose ladder has :data:`MIN_RUNGS` depths."""
    return int(getattr(module, "MIN_DEPTH", 1 << (MIN_RUNGS - 1)))


def _claim_number(module: ModuleType) -> tuple[int, str]:
    claim = module.CLAIM
    return (int(claim[1:]) if claim[1:].isdigit() else 10**6, module.ID)


#: The claim modules of this package by kind: ``theory`` checks run on exact residual functions
#: (:class:`CheckConfig`, ``verify``), ``checkpoint`` checks on one trained model
#: (``trained_subject.CheckpointConfig``, ``verify --ckpt``), ``study`` claims on the runs of a
#: depth study (``depth_study.aggregate.StudyClaimConfig``, ``python -m rdm_dynamics.study``).
#: Only the modules of the kind asked for are imported.
CLAIM_MODULES = {
    "theory": ("depth_limit", "pf_ode", "reverse_sde", "gate_moments", "error_propagation",
               "residual_sensitivity", "iid_depth_limit"),
    "checkpoint": ("trained_propagation", "trained_sensitivity", "denoising_risk"),
    "study": ("depth_consistency", "depth_scaling"),
}
KINDS = tuple(CLAIM_MODULES)


def registry(kind: str = "theory") -> dict[str, ModuleType]:
    """The claim modules of ``kind`` (:data:`KINDS`), by id, in claim order."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of check {kind!r}; choose one of {KINDS}")
    found = [importlib.import_module(f"{__name__}.{name}") for name in CLAIM_MODULES[kind]]
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


def run_checks(config: CheckConfig, checks: dict[str, ModuleType], progress: bool = True, *,
               jobs: int = 1, figures: bool = True) -> list:
    """Run each check (``registry()`` entries), timing it; results in the order of ``checks``.

    ``jobs`` > 1 runs them in that many worker processes (``workers.run_in_processes``: the same
    numbers as a serial run; the figures come back rendered, or not at all when ``figures`` is
    false); ``jobs`` = 1 runs them one after another in this process.  A check that raises, or
    whose worker dies, is an error of the toolkit, not a failed claim: its result has ``error``
    set (one line; ``traceback`` the full text, kept for the report), no metrics and no bands.
    A tqdm bar on stderr unless ``progress`` is false (and on a terminal only).  Ctrl-C is not
    caught.
    """
    from tqdm.auto import tqdm

    from .workers import run_check, run_in_processes

    class Bar(tqdm):
        monitor_interval = 0  # no monitor thread: worker processes are forked while it runs

    jobs = max(1, min(jobs, len(checks)))
    with Bar(total=len(checks), desc="verify", unit="check", disable=None if progress else True,
             file=sys.stderr, leave=False) as bar:
        if jobs > 1:
            def on_done(result, running):
                bar.set_postfix_str(",".join(running))
                bar.update()

            return run_in_processes(config, checks, jobs, figures=figures, on_done=on_done)
        results = []
        for cid, module in checks.items():
            bar.set_postfix_str(cid)
            results.append(run_check(cid, module, config))
            bar.update()
        return results


from .claim import Measurement, run_claim  # noqa: E402  (the claim modules' one shape)
