"""Known-law image data: a Gaussian mixture in pixel space fitted to scikit-learn's digits.

``digits-gmm`` (DESIGN.md section 3b) is image data whose law is known in closed form, so a
trained denoiser can be measured exactly: its score at every diffusion time, the Bayes-optimal
denoiser eps* and the exact log-density of any image all come from
:class:`rdm_dynamics.laws.GaussianMixture` (the same class the synthetic checks use).

The law.  The training split of the digits (``data.digits``, pixels in [-1, 1], resized to
``size`` x ``size`` for ``size != 8``) is fitted class by class with ``components`` Gaussian
components each (scikit-learn's EM, ``GaussianMixture(covariance_type="full")`` under
``random_state=seed``; one component is the class's sample mean and covariance).  The weight of
component j of class c is (n_c / n) pi_{c,j}.  Each covariance is then put in the chosen form:

* ``full``: Sigma + min_var I;
* ``lowrank``: W W^T + D, with W = U_r diag(sqrt lam_r) the top-``rank`` eigen-directions of
  Sigma and D = diag(max(diag(Sigma - W W^T), 0)) + min_var I the rest of each pixel's variance.

``min_var`` > 0 is a pixel-noise floor: the digits' border pixels never vary, and a singular
covariance would have no density.  The law is a function of (size, components, covariance, rank,
min_var, seed) and the scikit-learn digits only, to rounding: refitted under another BLAS build or
thread count its entries may differ from a stored law's by about one ulp, so the checks read the
law a checkpoint stores (validated: ``training.validation.validate_law``) rather than refit it.

Training data.  :class:`KnownLawData` draws sample j as a function of (seed, j) alone, and its
:class:`FreshSchedule` hands step k the indices k B .. (k+1) B - 1: every step sees fresh images
(no epochs, no finite training set), a resumed run sees the uninterrupted run's images, and a
data-parallel rank that takes its slice of a step's indices draws exactly those images.  The label
of an image is the class of its component.

Storage.  :func:`law_tensors` and :func:`law_from_tensors` turn the law into named float64 tensors
and back (``weights``, ``means``, ``covs``, ``classes``); the training loop stores them in every
checkpoint under the prefix ``law.`` so a checkpoint carries its data law.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..laws import GaussianMixture
from ..noise import stream_generator

__all__ = ["NAME", "COVARIANCES", "LawSpec", "KnownLaw", "fit_digits_mixture", "KnownLawData",
           "FreshSchedule", "law_tensors", "law_from_tensors", "LAW_PREFIX"]

NAME = "digits-gmm"
COVARIANCES = ("full", "lowrank")
LAW_PREFIX = "law"
NUM_CLASSES = 10


@dataclass(frozen=True)
class LawSpec:
    """What the fitted law depends on (besides the digits)."""

    size: int = 8
    components: int = 1
    covariance: str = "lowrank"
    rank: int = 8
    min_var: float = 0.01
    seed: int = 0


@dataclass
class KnownLaw:
    """The data law of known-law images: the mixture over flattened pixels, the class of each
    component, and the image shape (C, H, W)."""

    mixture: GaussianMixture
    classes: torch.Tensor  # (K,) long
    shape: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    def class_mask(self, y: torch.Tensor) -> torch.Tensor:
        """(B, K) bool: the components of each label's class."""
        return self.classes.to(y.device)[None, :] == y[:, None]

    def class_weights(self) -> torch.Tensor:
        """(NUM_CLASSES,): the total weight of each class's components."""
        out = torch.zeros(NUM_CLASSES, dtype=self.mixture.weights.dtype)
        return out.index_add_(0, self.classes.cpu(), self.mixture.weights.cpu())

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)

    def images(self, v: torch.Tensor) -> torch.Tensor:
        return v.reshape(v.shape[0], *self.shape)


def _covariance_form(cov: np.ndarray, spec: LawSpec) -> np.ndarray:
    d = cov.shape[0]
    cov = 0.5 * (cov + cov.T)
    if spec.covariance == "full":
        return cov + spec.min_var * np.eye(d)
    lam, U = np.linalg.eigh(cov)
    r = min(spec.rank, d)
    lam_r, U_r = np.clip(lam[-r:], 0.0, None), U[:, -r:]
    W = U_r * np.sqrt(lam_r)
    low = W @ W.T
    rest = np.clip(np.diag(cov) - np.diag(low), 0.0, None)
    return low + np.diag(rest + spec.min_var)


def fit_digits_mixture(spec: LawSpec, images: torch.Tensor, labels: torch.Tensor) -> KnownLaw:
    """The known law of ``spec`` (module docstring), float64, fitted to ``images`` (N, 1, s, s)
    with ``labels`` (N,) 0..9: the training split of ``data.digits(size=spec.size)``.  Raises
    ValueError for a bad spec."""
    from threadpoolctl import threadpool_limits

    if spec.covariance not in COVARIANCES:
        raise ValueError(f"unknown data covariance {spec.covariance!r}; choose "
                         f"{' or '.join(COVARIANCES)}")
    if spec.components < 1 or spec.rank < 1 or not spec.min_var > 0:
        raise ValueError("digits-gmm needs components >= 1, rank >= 1 and min_var > 0")
    x = images.reshape(len(images), -1).double().numpy()
    y = labels.numpy()
    with threadpool_limits(1):  # small matrices: BLAS threads only contend (40x slower on 2 cores)
        return _fit(spec, x, y)


def _fit(spec: LawSpec, x: np.ndarray, y: np.ndarray) -> KnownLaw:
    from sklearn.mixture import GaussianMixture as SkMixture

    weights, means, covs, classes = [], [], [], []
    for c in range(NUM_CLASSES):
        xc = x[y == c]
        if spec.components == 1:
            pis, mus, sigmas = np.ones(1), xc.mean(0, keepdims=True), np.cov(xc.T)[None]
        else:
            fit = SkMixture(spec.components, covariance_type="full", reg_covar=1e-6,
                            random_state=spec.seed, n_init=1).fit(xc)
            pis, mus, sigmas = fit.weights_, fit.means_, fit.covariances_
        for pi, mu, sigma in zip(pis, mus, sigmas, strict=True):
            weights.append(pi * len(xc) / len(x))
            means.append(mu)
            covs.append(_covariance_form(sigma, spec))
            classes.append(c)
    mixture = GaussianMixture(torch.tensor(np.array(weights)), torch.tensor(np.array(means)),
                              torch.tensor(np.array(covs)))
    return KnownLaw(mixture, torch.tensor(classes), (1, spec.size, spec.size))


def law_tensors(law: KnownLaw) -> dict[str, torch.Tensor]:
    """The law as named tensors (stored under ``law.`` in a checkpoint)."""
    m = law.mixture
    return {"weights": m.weights, "means": m.means, "covs": m.covs, "classes": law.classes,
            "shape": torch.tensor(law.shape)}


def law_from_tensors(tensors: dict[str, torch.Tensor]) -> KnownLaw:
    """Inverse of :func:`law_tensors`."""
    mixture = GaussianMixture(tensors["weights"].double(), tensors["means"].double(),
                              tensors["covs"].double())
    return KnownLaw(mixture, tensors["classes"].long(), tuple(int(s) for s in tensors["shape"]))


class LawModule(torch.nn.Module):
    """The law's tensors as buffers, so the checkpoint writer stores them like a state_dict."""

    def __init__(self, law: KnownLaw):
        super().__init__()
        for name, value in law_tensors(law).items():
            self.register_buffer(name, value.contiguous())


class FreshSchedule:
    """Step k's (global) indices are k B, ..., (k+1) B - 1: never repeated, no hidden state."""

    steps_per_epoch = 2**62  # there are no epochs: the log's epoch stays 0

    def __init__(self, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.batch_size = batch_size

    def indices(self, step: int) -> torch.Tensor:
        return torch.arange(step * self.batch_size, (step + 1) * self.batch_size)


class KnownLawData:
    """Images drawn from a :class:`KnownLaw`, image j a function of (seed, j) (module docstring).

    Answers the dataset protocol of ``data.py``: ``batch(indices) -> (x float32, y)``,
    ``sample_shape``, ``num_classes``, ``name``, ``skipped``; ``schedule(batch_size)`` replaces
    the epoch-wise ``BatchSchedule``.
    """

    length = 2**62

    def __init__(self, law: KnownLaw, seed: int = 0, name: str = NAME):
        self.law, self.seed, self.name = law, int(seed), name
        self.num_classes = law.num_classes
        self.skipped: list = []
        m = law.mixture
        self._factors = m.eigvecs * m.eigvals.sqrt().unsqueeze(-2)  # (K, d, d)

    def __len__(self) -> int:
        return self.length

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.law.shape

    def schedule(self, batch_size: int, seed: int = 0) -> FreshSchedule:
        return FreshSchedule(batch_size)

    def draw(self, index: int) -> tuple[torch.Tensor, int]:
        """Image ``index`` (flattened, float64) and its component."""
        g = stream_generator(self.seed, index)
        m = self.law.mixture
        k = int(torch.multinomial(m.weights, 1, generator=g))
        eps = torch.randn(m.dim, generator=g, dtype=m.means.dtype)
        return m.means[k] + self._factors[k] @ eps, k

    def batch(self, indices: torch.Tensor):
        drawn = [self.draw(int(i)) for i in indices]
        x = torch.stack([v for v, _ in drawn]).float()
        y = self.law.classes[[k for _, k in drawn]]
        return self.law.images(x), y
