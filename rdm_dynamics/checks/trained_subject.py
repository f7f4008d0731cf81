"""The trained model under test: what the checks on checkpoints (C8 and up) are run with.

``python -m rdm_dynamics.verify --ckpt RUN`` builds a :class:`CheckpointConfig` (the run folder or
checkpoint file, seed, device, quick) and runs the checkpoint checks (``registry("checkpoint")``)
on it.  Each check calls :func:`load_subject`, which rebuilds the checkpoint's model
(``models.load_model``, EMA weights), its SDE, prediction and training times from the stored
training configuration, and its data law when the run trained on known-law data (``law.``
tensors, ``training.known_law``).  A subject is loaded once per (checkpoint, device).  A diffusers
``save_pretrained`` folder is read by ``model_folder`` (its time mapped onto the VP SDE, no law),
and ``rdm_dynamics.probe`` hands a model in memory over with :func:`in_memory_subject`.

Inputs of the checks: clean images from the run's data (fresh draws of the known law, or the
run's dataset), labels from the data, diffusion times uniform on [t_min, T] and noise, all drawn
from ``config.generator(stream)`` so that a check run alone gives the numbers it gives in a full
run.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..cli import UsageError
from ..models import ModelLoadError, load_model
from ..noise import stream_generator
from ..sde import SDE, expand_as_batch
from ..training.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from ..training.data import DataError, load_dataset
from ..training.diffusion import prediction_to_eps
from ..training.known_law import LAW_PREFIX, KnownLaw
from ..training.settings import TrainConfig
from ..training.validation import check_finite_weights, validate_config, validate_law

__all__ = ["CheckpointConfig", "Subject", "load_subject", "checkpoint_config", "Inputs",
           "draw_inputs", "in_memory_subject"]


@dataclass(frozen=True)
class CheckpointConfig:
    """What every checkpoint check is run with (the verify command line with --ckpt).

    ``depth`` (the number of residual units) and ``gate`` (the kind of the model's units: plain,
    post-ln, rezero, adaln-zero or rdm; ``models.GATE_KINDS``) are filled in from the checkpoint, so
    the report's header reads as for the theory checks."""

    ckpt: str
    seed: int = 0
    device: str = "cpu"
    quick: bool = False
    depth: int = 0
    gate: str = ""
    dtype: torch.dtype = torch.float64  # the references' precision

    def generator(self, stream: int = 0) -> torch.Generator:
        """The generator of random stream ``stream`` under this seed
        (``noise.stream_generator``)."""
        return stream_generator(self.seed, stream)

    @property
    def ladder(self) -> tuple[int, ...]:
        """The model's one depth (the report header's ladder)."""
        return (self.depth,)

    @property
    def report_fields(self) -> dict:
        """What the report says of this configuration beyond depth, seed, dtype and device: the
        gate, the checkpoint, and ``gating``, the gate under its former key (deprecated: kept for
        one release)."""
        return {"gate": self.gate, "gating": self.gate, "checkpoint": self.ckpt}


@dataclass
class Subject:
    """A trained model with what it was trained on."""

    net: nn.Module  # the EMA weights, as trained (float32), eval mode, on the device
    train_config: TrainConfig
    sde: SDE
    law: KnownLaw | None  # the data law, when known
    step: int
    path: Path
    labelled: bool  # trained with class labels
    #: clean images and labels for a model stored without its data (a diffusers folder:
    #: ``model_folder.clean_draws``); None: the run's law or dataset
    clean: object = None

    @property
    def prediction(self) -> str:
        return self.train_config.prediction

    @property
    def t_min(self) -> float:
        return self.train_config.t_min

    def float64(self) -> nn.Module:
        """A float64 copy of the network (for references)."""
        import copy

        return copy.deepcopy(self.net).double().eval()

    def eps(self, net: nn.Module, x_t: torch.Tensor, t: torch.Tensor,
            y: torch.Tensor | None) -> torch.Tensor:
        """The network's noise prediction at (x_t, t, y) in x_t's dtype (v read as eps)."""
        with torch.no_grad():
            out = net(x_t.to(next(net.parameters()).dtype), t.to(x_t.dtype), y).to(x_t.dtype)
        a = expand_as_batch(self.sde.mean_coef(t), x_t)
        s = expand_as_batch(self.sde.marginal_std(t), x_t)
        return prediction_to_eps(self.prediction, out, x_t, a, s)


def checkpoint_config(ckpt: str, *, seed: int = 0, device: str = "cpu",
                      quick: bool = False) -> CheckpointConfig:
    """The configuration for ``ckpt`` (a run folder or a checkpoint file), with its model's
    depth and gate; UsageError (one line) if it cannot be loaded."""
    config = CheckpointConfig(ckpt=str(ckpt), seed=seed, device=device, quick=quick)
    subject = load_subject(config)
    return CheckpointConfig(ckpt=str(subject.path), seed=seed, device=device, quick=quick,
                            depth=len(subject.net.residual_units()),
                            gate=subject.net.config.get("gate", ""))


def _version(ckpt: str) -> tuple | None:
    """What identifies the checkpoint ``ckpt`` names now (its JSON file, resolved, with its size
    and modification time), so that a cached subject is never one of another or older file."""
    path = Path(ckpt).resolve()
    found = latest_checkpoint(path) if path.is_dir() else path.with_suffix(".json")
    if found is None and path.is_dir():  # a diffusers folder: its files, one level down
        try:
            files = sorted(f for f in [*path.iterdir(), *path.glob("*/*")] if f.is_file())
            return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
        except OSError:
            return None
    try:
        st = found.stat() if found is not None else None
    except OSError:
        return None
    return None if st is None else (str(found), st.st_mtime_ns, st.st_size)


def _load(ckpt: str, device: str) -> Subject:
    return _load_version(ckpt, device, _version(ckpt))


@functools.lru_cache(maxsize=4)
def _load_version(ckpt: str, device: str, version: tuple | None) -> Subject:
    from .model_folder import folder_subject_fields  # a diffusers save_pretrained folder

    fields = folder_subject_fields(ckpt, device)
    if fields is not None:
        return Subject(**fields)
    try:  # a checkpoint is input: validated as the command line is (training.validation)
        c = load_checkpoint(ckpt)
        cfg = TrainConfig.from_json(c.meta.get("train_config") or {})
        sde = validate_config(cfg)
        net = load_model(c, "ema", factory=cfg.model_factory)
        check_finite_weights(net, "the EMA weights")
        law = validate_law(c.state_dict(LAW_PREFIX), cfg, getattr(net, "sample_shape", None))
        net = net.to(device)
    except UsageError as exc:
        raise UsageError(f"--ckpt {ckpt}: the stored run is refused: {exc}") from None
    except (CheckpointError, ModelLoadError, KeyError, TypeError, ValueError,
            RuntimeError) as exc:
        raise UsageError(f"--ckpt {ckpt}: {exc}") from None
    if not hasattr(net, "residual_units"):
        raise UsageError(f"--ckpt {ckpt}: the model has no residual units to check")
    _probe_sampler(ckpt, net, cfg, sde, device)
    labelled = bool(c.meta.get("labelled", net.config.get("num_classes", 1) > 1))
    return Subject(net.requires_grad_(False), cfg, sde, law, c.step, c.path, labelled)


def _probe_sampler(ckpt: str, net: nn.Module, cfg: TrainConfig, sde: SDE, device: str) -> None:
    """Refuse (one line) a model whose samples are not finite: two short ddpm samples (8 steps)
    from its prior; a model that yields NaN there is unusable, whatever the checks measure."""
    from ..training.sampling import NonFiniteSamples, generate

    if not hasattr(net, "config") or "input_size" not in net.config:
        return  # not one of this toolkit's backbones: the checks meet it as it is
    try:
        generate(net, 2, sde=sde, prediction=cfg.prediction, t_min=cfg.t_min, labels=None,
                 sampler="ddpm", steps=8, seed=0, device=device, disable=True)
    except NonFiniteSamples as exc:
        raise UsageError(f"--ckpt {ckpt}: the stored run is refused: {exc}") from None


#: Subjects handed over in memory (``rdm_dynamics.probe.check_model``), by key.
_IN_MEMORY: dict[tuple[str, str], Subject] = {}


@contextlib.contextmanager
def in_memory_subject(key: str, subject: Subject, device: str):
    """Within the block, ``subject`` is the one ``load_subject`` returns for ``ckpt=key`` on
    ``device``."""
    _IN_MEMORY[(key, device)] = subject
    try:
        yield key
    finally:
        _IN_MEMORY.pop((key, device), None)


def load_subject(config: CheckpointConfig) -> Subject:
    """The checkpoint's model, SDE and data law (module docstring); UsageError if it cannot be
    loaded."""
    if (config.ckpt, config.device) in _IN_MEMORY:
        return _IN_MEMORY[(config.ckpt, config.device)]
    return _load(config.ckpt, config.device)


@dataclass
class Inputs:
    """Clean images, labels, diffusion times, noise and the noisy images x_t, float64."""

    x0: torch.Tensor
    y: torch.Tensor | None
    t: torch.Tensor
    noise: torch.Tensor
    x_t: torch.Tensor


def _clean_images(subject: Subject, n: int, generator: torch.Generator):
    if subject.clean is not None:
        return subject.clean(n, generator)
    if subject.law is not None:
        x, k = subject.law.mixture.sample(n, generator, with_components=True)
        return subject.law.images(x), subject.law.classes[k]
    cfg = subject.train_config
    try:
        data = load_dataset(cfg.data, size=cfg.image_size, frames=cfg.frames,
                            channels=cfg.channels)
    except DataError as exc:
        raise UsageError(f"the run's data cannot be loaded for the checks: {exc}") from None
    idx = torch.randint(len(data), (n,), generator=generator)
    x, y = data.batch(idx)
    return x.double(), y


def draw_inputs(subject: Subject, n: int, generator: torch.Generator,
                t: torch.Tensor | None = None) -> Inputs:
    """``n`` noisy inputs of the run's data (module docstring); times uniform on [t_min, T]
    unless given.  Labels are None for a model trained without them."""
    x0, y = _clean_images(subject, n, generator)
    if not subject.labelled:
        y = None
    if t is None:
        t = subject.sde.uniform_times(n, subject.t_min, generator=generator,
                                      dtype=torch.float64)
    t = t.double().float().double()  # representable in float32: every precision sees one time
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    return Inputs(x0, y, t, noise, subject.sde.perturb(x0, t, noise))
