"""A depth study's plan: the grid of training runs a study file describes.

A study file (TOML or YAML, like the ``--config`` file of ``train``) has three parts:

    [train]        a flat mapping of training settings (TrainConfig names): the one recipe
    [[grid]]       one or more blocks; each maps axis names to lists of values, and the block's
                   runs are the product of its axes.  An axis is any training setting (gate,
                   seed, init, lr, data, ...), ``depth``, the backbone's depth option
                   (``models.depth_option``: DiT blocks, U-Net blocks per level, MLP units),
                   or ``norm`` (true/false: the gates with or without their normalisation).
    [measure]      how each trained run is measured (``MeasureConfig``)

Runs of several blocks that coincide are one run.  Each run is an ordinary training run folder,
``<out>/runs/<id>``, ``id`` naming the run's axis values (``data-digits-gmm_depth-4_gate-rdm``).
The presets ``smoke``, ``cpu``, ``gpu``, ``gpu-large``, ``deep`` and ``gpu-deep`` are such
files, shipped in ``rdm_dynamics/depth_study/presets/<name>.toml`` (``--show-preset NAME``
prints one); a user copies one and edits it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import UsageError
from ..models import depth_option
from ..training.settings import (
    SETTINGS,
    TrainConfig,
    check,
    coerce,
    read_mapping_file,
    settings_from_mapping,
)

__all__ = ["PRESETS", "PRESET_DIR", "MeasureConfig", "Study", "RunSpec", "load_study",
           "preset_path", "plan", "measure_config", "MEASURE_KINDS"]

PRESET_DIR = Path(__file__).resolve().parent / "presets"
PRESETS = ("smoke", "cpu", "gpu", "gpu-large", "deep", "gpu-deep")

#: Training settings a study sets itself for every run (the run folder, quiet progress).
MANAGED = ("out", "progress")
#: Axes that are architecture options (``model_options``) rather than training settings:
#: ``norm``, every gate with (true) or without (false) its normalisation (``models.gates``).
MODEL_AXES = ("norm",)


@dataclass(frozen=True)
class MeasureConfig:
    """How each trained run is measured; the ``[measure]`` section of a study file."""

    #: run the trained-model checks C8-C10 on every run (verify --ckpt)
    checks: bool = True
    #: ... with --quick
    quick: bool = True
    #: samples drawn for the Frechet distance (0: no FD)
    fd_samples: int = 256
    #: sampler steps for those samples
    sample_steps: int = 50
    #: classifier-free guidance of those samples
    guidance: float = 1.0
    #: the checks to run (verify --only: ids or claims, comma separated; "" runs them all)
    only: str = ""
    #: C8's bf16 output error computed by the study itself (``propagation.bf16_output_error``),
    #: for a study whose ``only`` leaves C8 out
    bf16_error: bool = False
    #: signal propagation at step 0 of every run (``propagation.step0_figures``)
    step0: bool = True

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = (int, float) if f.type == "float" else MEASURE_KINDS[f.name]
            if isinstance(value, bool) != (f.type == "bool") or not isinstance(value, kind) \
                    or (isinstance(value, float) and not math.isfinite(value)):
                kind_text = "finite float" if f.type == "float" else f.type
                raise UsageError(f"measure.{f.name} must be a {kind_text}, got {value!r}")
        if self.fd_samples < 0 or self.sample_steps < 1 or self.guidance < 0:
            raise UsageError("measure: fd_samples must be >= 0, sample_steps >= 1 and "
                             "guidance >= 0")


#: The type of each measure setting (read from the command line by ``coerce_as``).
MEASURE_KINDS = {f.name: {"bool": bool, "int": int, "float": float, "str": str}[f.type]
                 for f in dataclasses.fields(MeasureConfig)}


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid: its id, its axis values and the training configuration."""

    id: str
    axes: dict
    config: TrainConfig

    @property
    def depth(self) -> int:
        return int(self.axes["depth"])

    @property
    def folder(self) -> Path:
        return Path(self.config.out)

    def digest(self) -> str:
        """A hash of the run's full configuration: a finished run is reused only if it fits."""
        text = json.dumps(self.config.to_json(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Study:
    """A parsed study file."""

    name: str
    train: dict
    grids: list[dict]
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    source: str = ""


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESET_DIR / f"{name}.toml"


def _axis_values(block: int, axis: str, values) -> list:
    if not isinstance(values, list) or not values:
        raise UsageError(f"grid block {block}: axis {axis!r} must be a non-empty list")
    if axis == "depth":
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise UsageError(f"grid block {block}: depth must list positive integers, "
                             f"got {values!r}")
        if len(set(values)) != len(values):
            raise UsageError(f"grid block {block}: depth lists a value twice")
        return list(values)
    if axis == "norm":
        if not all(isinstance(v, bool) for v in values) or len(set(values)) != len(values):
            raise UsageError(f"grid block {block}: norm must list true and/or false once each, "
                             f"got {values!r}")
        return list(values)
    if axis not in SETTINGS or axis in MANAGED:
        raise UsageError(f"grid block {block}: {axis!r} is not a training setting a study can "
                         f"vary")
    try:
        return [coerce(axis, v) for v in values]
    except (UsageError, ValueError, TypeError) as exc:
        raise UsageError(f"grid block {block}: {exc}") from None


def load_study(source: str) -> Study:
    """Read a study file, or a preset by name; UsageError (one line) for anything malformed."""
    path = preset_path(source) if source in PRESETS else Path(source)
    raw = read_mapping_file(path, "study file")
    unknown = sorted(set(raw) - {"train", "grid", "measure"})
    if unknown:
        raise UsageError(f"{path}: unknown section(s) {', '.join(unknown)} (a study file has "
                         f"[train], [[grid]] and [measure])")
    train = raw.get("train", {})
    grids = raw.get("grid")
    if not isinstance(train, dict):
        raise UsageError(f"{path}: [train] must be a mapping of training settings")
    if not isinstance(grids, list) or not grids or not all(isinstance(g, dict) for g in grids):
        raise UsageError(f"{path}: the study needs at least one [[grid]] block of axes")
    train = settings_from_mapping(train, f"[train] of {str(path)!r}")
    if set(train) & set(MANAGED):
        managed = ", ".join(sorted(set(train) & set(MANAGED)))
        raise UsageError(f"{path}: [train] cannot set {managed}"
                         f" (the study sets them for every run)")
    parsed = []
    for i, block in enumerate(grids, 1):
        if "depth" not in block:
            raise UsageError(f"{path}: grid block {i} has no depth axis")
        parsed.append({axis: _axis_values(i, axis, v) for axis, v in block.items()})
    measure = raw.get("measure", {})
    if not isinstance(measure, dict):
        raise UsageError(f"{path}: [measure] must be a mapping")
    name = source if source in PRESETS else path.stem
    return Study(name=name, train=dict(train), grids=parsed,
                 measure=measure_config(MeasureConfig(), measure, where=f"{path}: [measure]"),
                 source=str(path))


def measure_config(base: MeasureConfig, changes: dict, *, where: str = "measure") -> MeasureConfig:
    """``base`` with the settings ``changes`` (name -> value); UsageError (one line) for an
    unknown name or a value of the wrong type."""
    names = {f.name for f in dataclasses.fields(MeasureConfig)}
    if set(changes) - names:
        raise UsageError(f"{where}: unknown setting(s) {', '.join(sorted(set(changes) - names))}"
                         f" (known: {', '.join(sorted(names))})")
    return dataclasses.replace(base, **changes)


def _slug(value) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", str(value)).strip("_")


def run_id(axes: dict) -> str:
    return "_".join(f"{k}-{_slug(v)}" for k, v in sorted(axes.items()))


def _check_architecture(cfg: TrainConfig, checked: set) -> None:
    """Build the run's architecture once, without memory (the meta device), so that a depth or
    an option the backbone refuses (``norm`` on rezero, more units than it has) is refused
    before any run starts: ValueError.  Custom factories are left to the run."""
    import torch

    from ..models import build_model

    key = json.dumps([cfg.model, cfg.gate, cfg.image_size, cfg.model_options], sort_keys=True,
                     default=str)
    if cfg.model_factory or key in checked:
        return
    with torch.device("meta"):
        build_model(cfg.model, gate=cfg.gate, input_size=cfg.image_size or 8,
                    **cfg.model_options)
    checked.add(key)


def plan(study: Study, out: str | Path, overrides: dict | None = None) -> list[RunSpec]:
    """Every run of the study, in grid order, without repeats; ``overrides`` (settings such as
    device) apply to every run.  UsageError for a grid that makes an invalid configuration."""
    runs: dict[str, RunSpec] = {}
    checked: set = set()
    axis_names = sorted({a for block in study.grids for a in block})
    for block in study.grids:
        keys = list(block)
        for values in itertools.product(*(block[k] for k in keys)):
            axes = dict(zip(keys, values, strict=True))
            settings = {**study.train, **(overrides or {})}
            settings.update({k: v for k, v in axes.items() if k not in ("depth", *MODEL_AXES)})
            model = settings.get("model", TrainConfig().model)
            try:
                option = depth_option(model)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            settings["model_options"] = {**settings.get("model_options", {}),
                                         option: axes["depth"],
                                         **{k: axes[k] for k in MODEL_AXES if k in axes}}
            rid = run_id({k: axes.get(k, "") for k in axis_names if k in axes})
            try:
                cfg = TrainConfig(**{k: coerce(k, v) for k, v in settings.items()},
                                  out=str(Path(out) / "runs" / rid), progress=False)
                check(cfg)
                _check_architecture(cfg, checked)
            except (ValueError, TypeError) as exc:
                raise UsageError(f"run {rid}: {exc}") from None
            runs.setdefault(rid, RunSpec(rid, axes, cfg))
    return list(runs.values())
