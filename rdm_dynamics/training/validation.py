"""One validation of a run, wherever its settings come from: the command line and config files
(``train``), or a checkpoint (``train --resume``, ``verify --ckpt``, ``sample``, ``study``).

A checkpoint is input like a flag: its stored ``train_config``, its data law (``law.*``
tensors) and its weights pass the same checks before anything is computed from them, and a
checkpoint that fails is refused with one line naming the field (UsageError, exit code 2).

* :func:`validate_config`: every declared constraint of the settings (``settings.check``), the
  names that select code (prediction, sampler, SDE, law covariance), and the forward SDE that
  ``sde`` and ``sde_options`` build (:func:`build_sde`);
* :func:`build_sde`: the SDE, with its coefficients checked on the training times
  [t_min, T]: f(t), g(t), m(t) and sigma(t) finite, g(t) >= 0, m(t) > 0 and sigma(t) > 0 (what
  the objective and the samplers divide by or take roots of); t_min < T;
* :func:`validate_law`: the known law of a ``digits-gmm`` run (required for one, refused for any
  other): weights (K,), means (K, d), covariances (K, d, d), classes (K,), shape (C, H, W) with
  C H W = d equal to the model's sample shape; every entry finite; weights positive, summing to 1
  (to 1e-6); covariances symmetric (to 1e-8 of their largest entry) and positive definite (a
  Cholesky factor exists): the mixture has a density;
* :func:`check_finite_weights`: a network whose weights hold NaN or infinities is unusable.
"""

from __future__ import annotations

import torch

from ..cli import UsageError
from ..limits import cut
from ..sde import SDE, SDES, make_sde
from .diffusion import PREDICTIONS, SAMPLERS
from .known_law import COVARIANCES, NAME, NUM_CLASSES, KnownLaw, law_from_tensors
from .settings import TrainConfig, check

__all__ = ["validate_config", "build_sde", "validate_law", "check_finite_weights"]

#: Times at which an SDE's coefficients are checked, evenly spread over [t_min, T].
_PROBES = 65


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise UsageError(f"unknown {name} {cut(str(value), 40)!r}; choose one of "
                         f"{', '.join(map(str, choices))}")


def validate_config(cfg: TrainConfig) -> SDE:
    """Check ``cfg`` (module docstring); its SDE.  UsageError naming the first bad field."""
    check(cfg)
    _choice("prediction", cfg.prediction, PREDICTIONS)
    _choice("sampler", cfg.sampler, SAMPLERS)
    _choice("SDE", cfg.sde, tuple(SDES))
    _choice("data covariance (law_covariance)", cfg.law_covariance, COVARIANCES)
    return build_sde(cfg)


def build_sde(cfg: TrainConfig) -> SDE:
    """The forward SDE of ``cfg``, its coefficients checked on [t_min, T] (module docstring)."""
    try:
        sde = make_sde(cfg.sde, **cfg.sde_options)
    except (TypeError, ValueError, ArithmeticError) as exc:  # e.g. sigma_min 0
        raise UsageError(f"bad sde_options for {cfg.sde}: {cut(str(exc), 160)}") from None
    if not (isinstance(sde.T, float) and cfg.t_min < sde.T < float("inf")):
        raise UsageError(f"sde_options: T must be finite and above t_min {cfg.t_min:g}, got "
                         f"{sde.T!r}")
    t = torch.linspace(cfg.t_min, sde.T, _PROBES, dtype=torch.float64)
    with torch.no_grad():
        coefs = {"f(t)": sde.drift_coef(t), "g(t)": sde.diffusion_coef(t),
                 "m(t)": sde.mean_coef(t), "sigma(t)": sde.marginal_std(t)}
    for name, value in coefs.items():
        value = torch.as_tensor(value, dtype=torch.float64).expand_as(t)
        positive = name in ("m(t)", "sigma(t)")
        bad = ~torch.isfinite(value)
        if name != "f(t)":
            bad |= (value <= 0) if positive else (value < 0)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise UsageError(f"sde_options {str(cfg.sde_options)[:80]} give the {cfg.sde} SDE "
                             f"{name} = {float(value[i]):g} at t = {float(t[i]):.3g} (it must be "
                             f"finite{' and positive' if positive else ''})")
    return sde


def _law_entry(tensors: dict, key: str, ndim: int) -> torch.Tensor:
    if key not in tensors:
        raise UsageError(f"law.{key} is missing")
    value = tensors[key]
    if value.ndim != ndim:
        raise UsageError(f"law.{key} must have {ndim} dimension(s), has shape "
                         f"{list(value.shape)[:6]}")
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise UsageError(f"law.{key} holds NaN or infinite entries")
    return value


def validate_law(tensors: dict[str, torch.Tensor], cfg: TrainConfig,
                 sample_shape: tuple[int, ...] | None = None) -> KnownLaw | None:
    """The known law stored as ``law.*`` tensors (``tensors`` without the prefix), checked
    (module docstring); None for a run of other data that stores none.  UsageError naming the
    field otherwise."""
    if cfg.data != NAME:
        if tensors:
            raise UsageError(f"the checkpoint stores a data law (law.*) but its data is "
                             f"{cfg.data[:40]!r}, not {NAME}")
        return None
    if not tensors:
        raise UsageError(f"the run trained on {NAME} but its checkpoint holds no data law "
                         "(law.* tensors)")
    unknown = sorted(set(tensors) - {"weights", "means", "covs", "classes", "shape"})
    if unknown:
        raise UsageError(f"unknown law tensor(s) law.{', law.'.join(unknown)[:80]}")
    w, mu = _law_entry(tensors, "weights", 1), _law_entry(tensors, "means", 2)
    cov, cls = _law_entry(tensors, "covs", 3), _law_entry(tensors, "classes", 1)
    shape = _law_entry(tensors, "shape", 1)
    k, d = w.shape[0], mu.shape[1] if mu.ndim == 2 else 0
    if shape.is_floating_point() or cls.is_floating_point():
        raise UsageError("law.shape and law.classes must be integers")
    dims = [int(s) for s in shape]
    if len(dims) != 3 or min(dims) < 1 or dims[0] * dims[1] * dims[2] != d:
        raise UsageError(f"law.shape {dims[:6]} is not a (C, H, W) of the {d} pixels of "
                         "law.means")
    if sample_shape is not None and tuple(dims) != tuple(sample_shape):
        raise UsageError(f"law.shape {dims} is not the model's sample shape "
                         f"{list(sample_shape)}")
    if k < 1 or mu.shape[0] != k or tuple(cov.shape) != (k, d, d) or cls.shape[0] != k:
        raise UsageError(f"the law's tensors disagree on the number of components or pixels "
                         f"(weights {list(w.shape)}, means {list(mu.shape)}, covs "
                         f"{list(cov.shape)}, classes {list(cls.shape)})")
    _check_weights_and_covs(w.double(), cov.double(), cls)
    return law_from_tensors(tensors)


def _check_weights_and_covs(w: torch.Tensor, cov: torch.Tensor, cls: torch.Tensor) -> None:
    if not bool((w > 0).all()) or abs(float(w.sum()) - 1) > 1e-6:
        raise UsageError(f"law.weights must be positive and sum to 1, got sum {float(w.sum()):g}"
                         f" and minimum {float(w.min()):g}")
    if not bool(((cls >= 0) & (cls < NUM_CLASSES)).all()):
        raise UsageError(f"law.classes must lie in 0..{NUM_CLASSES - 1}")
    scale = cov.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-300)
    if bool(((cov - cov.transpose(-2, -1)).abs() > 1e-8 * scale).any()):
        raise UsageError("law.covs must be symmetric")
    _, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        j = int((info != 0).nonzero()[0])
        raise UsageError(f"law.covs[{j}] is not positive definite")


def check_finite_weights(net: torch.nn.Module, what: str = "the model's weights") -> None:
    """UsageError naming the first tensor of ``net``'s state that holds NaN or infinities."""
    for name, value in net.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UsageError(f"{what} are not finite ({name[:60]} holds NaN or infinities): "
                             "the checkpoint is unusable")
