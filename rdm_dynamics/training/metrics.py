"""Sample quality on digits: Frechet distance and class accuracy under a small digit classifier.

A small convolutional classifier is trained deterministically (fixed seed, fixed schedule) on the
training split of scikit-learn's digits (``data.digits``), or on the frames of the moving-digits
videos made from it, at the resolution of the samples.  It is cached on disk as safetensors
(``$RDM_DYNAMICS_CACHE`` or ``~/.cache/rdm_dynamics``) and retrained when the file is missing,
unreadable or of another architecture.  Its 64-dimensional penultimate activations are the
feature space of the Frechet distance (FID's construction, Heusel et al. 2017, with a digit
classifier in place of Inception):

    FD(P, Q) = |mu_P - mu_Q|^2 + tr S_P + tr S_Q - 2 tr (S_P^{1/2} S_Q S_P^{1/2})^{1/2},

the squared 2-Wasserstein distance of the fitted Gaussians, ``stats.frechet_distance`` (float64,
symmetric PSD square roots, so no complex noise from a general matrix square root).

Every figure is reported beside its real-vs-real floor: the same statistic between the training
split and the held-out split (359 images).  The plug-in FD is biased upward at finite sample
size, by roughly tr(S_P)/n_P + tr(S_Q)/n_Q (the estimation noise of the means alone), and more
through the covariances.  Samples and the held-out split are both compared with the whole
training split (1438 images), so n = 359 samples carry the floor's bias; ``n`` is reported.
Standard errors: accuracy sqrt(p(1-p)/n); FD by a bootstrap over both feature sets (its spread
only: the bootstrap does not remove the bias); means over videos std(ddof=1) / sqrt(n)
(``stats.mean_se``).

Videos: the same per frame index, plus temporal consistency: the fraction of frames whose
predicted class agrees with the video's majority class, and the mean feature change between
consecutive frames (the motion as the classifier sees it), each beside the real videos' value.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..files import atomic_write_bytes
from ..stats import frechet_distance, mean_se
from . import data

__all__ = ["DigitClassifier", "DigitJudge", "feature_frechet_distance",
           "cache_dir", "video_figure", "CLASSIFIER_VERSION"]

CLASSIFIER_VERSION = "1"
FEATURES = 64


def cache_dir() -> Path:
    """Where trained classifiers are cached: $RDM_DYNAMICS_CACHE or ~/.cache/rdm_dynamics."""
    env = os.environ.get("RDM_DYNAMICS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "rdm_dynamics"


# ------------------------------------------------------------------------------------------------
# Frechet distance of feature sets
# ------------------------------------------------------------------------------------------------

def _moments(f: np.ndarray):
    return f.mean(0), np.cov(f, rowvar=False)


def feature_frechet_distance(f1: np.ndarray, f2: np.ndarray, bootstrap: int = 0,
                             seed: int = 0) -> tuple[float, float]:
    """FD between the Gaussians fitted to two feature sets (n, d), and its bootstrap standard
    error over ``bootstrap`` resamples of both sets (NaN when bootstrap = 0)."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    fd = frechet_distance(*_moments(f1), *_moments(f2))
    if bootstrap <= 0:
        return fd, math.nan
    rng = np.random.default_rng(seed)
    reps = [frechet_distance(*_moments(f1[rng.integers(0, len(f1), len(f1))]),
                             *_moments(f2[rng.integers(0, len(f2), len(f2))]))
            for _ in range(bootstrap)]
    return fd, float(np.std(reps, ddof=1))


# ------------------------------------------------------------------------------------------------
# The classifier
# ------------------------------------------------------------------------------------------------

class DigitClassifier(nn.Module):
    """conv3x3(32), conv3x3(32), pool to 4x4, conv3x3(64), linear(64) [features], linear(10)."""

    def __init__(self, features: int = FEATURES, classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(),
            nn.Flatten(), nn.Linear(64 * 16, features), nn.GELU())
        self.head = nn.Linear(features, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _frames(x: torch.Tensor) -> torch.Tensor:
    """Videos (N, T, 1, H, W) -> frames (N*T, 1, H, W); images pass through."""
    return x.reshape(-1, *x.shape[-3:]) if x.ndim == 5 else x


def _training_set(kind: str, size: int, split: str):
    if kind == "digits":
        ds = data.digits(split, size=size)
        return ds.images, ds.labels
    ds = data.moving_digits(split, canvas=size)
    frames = ds.images.shape[1]
    return _frames(ds.images), ds.labels.repeat_interleave(frames)


def train_classifier(kind: str = "digits", size: int = 8, epochs: int | None = None,
                     seed: int = 0) -> DigitClassifier:
    """Train the classifier deterministically (seeded init and batch order, AdamW, fixed epochs)."""
    x, y = _training_set(kind, size, "train")
    epochs = epochs or (30 if kind == "digits" else 6)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=epochs
                                                * math.ceil(len(x) / 64))
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for j in range(0, len(x), 64):
            idx = perm[j:j + 64]
            # one-pixel random shifts make the features robust to small misplacements
            shift = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(x[idx], shifts=shift, dims=(-2, -1)) if kind == "digits" else x[idx]
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def _cache_path(kind: str, size: int) -> Path:
    return cache_dir() / f"digit-classifier-{kind}-{size}px-v{CLASSIFIER_VERSION}.safetensors"


def load_classifier(kind: str = "digits", size: int = 8, retrain: bool = False) -> DigitClassifier:
    """The cached classifier for (kind, size), trained and cached first if missing or corrupt."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save

    path = _cache_path(kind, size)
    model = DigitClassifier()
    if not retrain and path.is_file():
        try:
            model.load_state_dict(load_file(path), strict=True)
            return model.eval()
        except (SafetensorError, OSError, RuntimeError, ValueError):
            pass  # unreadable or of another shape: retrain below
    model = train_classifier(kind, size)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        atomic_write_bytes(path, save(state, metadata={"kind": kind, "size": str(size),
                                                        "version": CLASSIFIER_VERSION}))
    except OSError:
        pass  # a read-only cache only costs a retraining next time
    return model


class DigitJudge:
    """Frechet distance and class accuracy of digit samples (images or videos) at one size.

    ``kind`` is ``digits`` (images (N, 1, S, S)) or ``moving-digits`` (videos (N, T, 1, S, S),
    compared frame by frame with the moving-digits videos of ``frames`` frames).
    The reference statistics (training split, held-out split) are computed once.
    """

    def __init__(self, kind: str = "digits", size: int = 8, bootstrap: int = 50,
                 frames: int = 8):
        if kind not in data.DATASETS:
            raise ValueError(f"unknown kind {kind!r}; choose one of {data.DATASETS}")
        self.kind, self.size, self.bootstrap = kind, size, bootstrap
        self.classifier = load_classifier(kind, size)
        load = data.digits if kind == "digits" else (
            lambda split, size: data.moving_digits(split, frames=frames, canvas=size))
        self.train_set, self.held_out = load("train", size=size), load("test", size=size)
        self._train_features = self.features(self.train_set.images)

    @torch.no_grad()
    def _run(self, x: torch.Tensor):
        x = x.detach().float().cpu().clamp(-1.0, 1.0)
        shape = x.shape[:2] if x.ndim == 5 else x.shape[:1]
        f = torch.cat([self.classifier.features(b) for b in _frames(x).split(1024)])
        pred = self.classifier.head(f).argmax(-1)
        return f.double().numpy().reshape(*shape, -1), pred.reshape(shape).numpy()

    def features(self, x: torch.Tensor) -> np.ndarray:
        """Penultimate features: (N, 64) for images, (N, T, 64) for videos."""
        return self._run(x)[0]

    def predict(self, x: torch.Tensor) -> np.ndarray:
        """Predicted classes: (N,) for images, (N, T) for videos."""
        return self._run(x)[1]

    def evaluate(self, samples: torch.Tensor, labels: torch.Tensor | np.ndarray | None = None,
                 prefix: str = "") -> dict[str, float]:
        """FD against the training split and, with labels, class accuracy; videos add per-frame
        and temporal-consistency figures.  A flat dict of numbers with ``_se`` where estimated."""
        f, pred = self._run(samples)
        out: dict[str, float] = {f"{prefix}n": len(f)}
        labels = None if labels is None else np.asarray(labels)
        if f.ndim == 2:
            out[f"{prefix}fd"], out[f"{prefix}fd_se"] = feature_frechet_distance(
                f, self._train_features, self.bootstrap)
            if labels is not None:
                _accuracy(out, prefix, pred == labels)
            return out
        frames = f.shape[1]
        per_frame = [feature_frechet_distance(f[:, k], self._train_features[:, k])[0]
                     for k in range(frames)]
        for k, v in enumerate(per_frame):
            out[f"{prefix}fd_frame{k}"] = v
        out[f"{prefix}fd"], out[f"{prefix}fd_se"] = feature_frechet_distance(
            f.reshape(-1, f.shape[-1]), self._train_features.reshape(-1, f.shape[-1]),
            self.bootstrap)
        if labels is not None:
            correct = pred == labels[:, None]
            _accuracy(out, prefix, correct.reshape(-1))
            for k in range(frames):
                out[f"{prefix}accuracy_frame{k}"] = float(correct[:, k].mean())
        majority = np.array([np.bincount(p, minlength=10).argmax() for p in pred])
        agree = (pred == majority[:, None]).mean(1)
        out[f"{prefix}label_consistency"], out[f"{prefix}label_consistency_se"] = mean_se(agree)
        step = np.linalg.norm(np.diff(f, axis=1), axis=-1).mean(1)
        out[f"{prefix}feature_motion"], out[f"{prefix}feature_motion_se"] = mean_se(step)
        return out

    def floor(self) -> dict[str, float]:
        """The real-vs-real floor: the held-out split evaluated as if it were samples."""
        return self.evaluate(self.held_out.images, self.held_out.labels, prefix="real_")


def _accuracy(out: dict, prefix: str, correct: np.ndarray) -> None:
    p = float(correct.mean())
    out[f"{prefix}accuracy"] = p
    out[f"{prefix}accuracy_se"] = math.sqrt(max(p * (1 - p), 1e-12) / len(correct))


def video_figure(metrics: dict[str, float], frames: int):
    """A drawer (report.save_figure) for video samples against the real floor: FD and accuracy
    per frame, and temporal consistency (label agreement across frames, feature motion between
    consecutive frames, relative to the real videos'), with standard errors."""

    def draw(fig):
        ax1, ax2, ax3 = fig.subplots(1, 3)
        k = np.arange(frames)
        for prefix, label in (("", "samples"), ("real_", "held-out (floor)")):
            fd = [metrics.get(f"{prefix}fd_frame{i}", math.nan) for i in k]
            acc = [metrics.get(f"{prefix}accuracy_frame{i}", math.nan) for i in k]
            ax1.plot(k, fd, "o-", label=label)
            ax2.plot(k, acc, "o-", label=label)
        ax1.set(xlabel="frame", ylabel="Frechet distance", title="per-frame FD")
        ax2.set(xlabel="frame", ylabel="class accuracy", title="per-frame accuracy",
                ylim=(0, 1.02))
        real_motion = metrics.get("real_feature_motion", math.nan)
        names = ("label\nagreement", "motion\n/ real")
        for j, (prefix, label) in enumerate((("", "samples"), ("real_", "held-out"))):
            vals = [metrics.get(f"{prefix}label_consistency", math.nan),
                    metrics.get(f"{prefix}feature_motion", math.nan) / real_motion]
            errs = [metrics.get(f"{prefix}label_consistency_se", 0.0),
                    metrics.get(f"{prefix}feature_motion_se", 0.0) / real_motion]
            ax3.bar(np.arange(2) + 0.4 * j - 0.2, vals, 0.4, yerr=errs, label=label)
        ax3.set_xticks(np.arange(2), names, fontsize=8)
        ax3.set(title="over time")
        for ax in (ax1, ax2, ax3):
            ax.grid(alpha=0.3)
        ax1.legend(fontsize=8)

    return draw
