"""Data for training: scikit-learn digits, moving-digits videos, image folders, .npy/.npz arrays.

Every dataset yields images ``(C, H, W)`` or videos ``(T, C, H, W)`` as float32 in [-1, 1] and an
integer class label (or none), and answers ``batch(indices) -> (x, y)``.  ``y`` is None for
unlabelled data.

* :func:`digits`: the 1797 8x8 handwritten digits that ship with scikit-learn (values 0..16),
  split deterministically and stratified by class into a training split (80%) and a held-out
  split (20%); optionally resized (bilinear, antialiased).
* :func:`moving_digits`: videos of one digit moving at constant integer velocity on a larger
  canvas, bouncing off the borders.  Generated from the digits of the chosen split with a fixed
  seed, so the same call gives the same videos everywhere.
* :class:`ImageFolder`: PNG/JPEG files, labelled by sub-folder name if there are sub-folders.
  Files are checked when the dataset is built and decoded when first used; a file that cannot be
  read at either point is skipped and reported by name, and a batch that meets one takes the
  next readable file instead, so an epoch never dies on one bad file.  An empty folder (or one
  with no readable image) is an error.
* :func:`known_law_data` (``digits-gmm``): fresh images from a Gaussian mixture fitted to the
  digits, whose law is known exactly (``known_law.py``).
* :func:`load_array`: ``.npy`` (an array) or ``.npz`` (``images``/``x`` and optional
  ``labels``/``y``), loaded without unpickling (``allow_pickle=False``).  Integer arrays are
  scaled from [0, 255] to [-1, 1]; float arrays are taken to be in [-1, 1] already.

:class:`BatchSchedule` turns a global step into the indices of its batch with no hidden state:
epoch e is the permutation drawn from a generator seeded with (seed, e), so a resumed run meets
the same batches as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..limits import check_inflation, check_pixels
from ..noise import stream_generator
from . import known_law

__all__ = ["DataError", "ArrayDataset", "ImageFolder", "BatchSchedule", "digits", "moving_digits",
           "load_array", "load_dataset", "known_law_data", "DATASETS", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DATASETS = ("digits", "moving-digits", known_law.NAME)
SPLITS = ("train", "test", "all")
HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 0


class DataError(ValueError):
    """Unusable data (missing, empty, corrupt, wrong shape): one clear line for the user."""


def _report_skip(message: str) -> None:
    print(f"rdm_dynamics.training.data: {message}", file=sys.stderr)


class ArrayDataset:
    """An in-memory dataset: ``images`` (N, ...) float32 in [-1, 1], ``labels`` (N,) or None."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                 num_classes: int | None = None, name: str = "arrays"):
        if images.ndim not in (4, 5):
            raise DataError(f"{name}: expected images (N, C, H, W) or videos (N, T, C, H, W), "
                            f"got shape {tuple(images.shape)}")
        if len(images) == 0:
            raise DataError(f"{name}: no samples")
        if labels is not None and labels.shape != (len(images),):
            raise DataError(f"{name}: {len(images)} samples but labels of shape "
                            f"{tuple(labels.shape)}")
        self.images = images.float().contiguous()
        self.labels = None if labels is None else labels.long()
        if num_classes is None and self.labels is not None:
            num_classes = int(self.labels.max()) + 1
        self.num_classes = num_classes
        self.name = name
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.images)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def batch(self, indices: torch.Tensor):
        y = None if self.labels is None else self.labels[indices]
        return self.images[indices], y


# ------------------------------------------------------------------------------------------------
# Digits and moving digits
# ------------------------------------------------------------------------------------------------

def _split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Deterministic stratified split: per class, a seeded permutation; the first 20% held out."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "all":
        return np.arange(len(labels))
    rng = np.random.default_rng(SPLIT_SEED)
    chosen = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(HELD_OUT_FRACTION * len(idx)))
        chosen.append(idx[:n_test] if split == "test" else idx[n_test:])
    return np.sort(np.concatenate(chosen))


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize of (N, C, H, W) images to size x size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).clamp(-1.0, 1.0)


#: Where scikit-learn keeps its digits, inside its package: one row per image, 64 pixel counts
#: (0..16, row-major 8x8) then the label.  ``load_digits`` reads this file.
DIGITS_FILE = ("datasets", "data", "digits.csv.gz")


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images (1797, 8, 8) float64 counts 0..16 and labels (1797,) int.

    Read from the file scikit-learn ships (``DIGITS_FILE``) without importing scikit-learn: its
    import costs about a second, which every training and checking process on digits would pay
    for a 20 ms read.  Where the file is not found (another layout), ``load_digits``."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent.joinpath(*DIGITS_FILE)
        if path.is_file():
            with gzip.open(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",")
            images, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
            return _read_only(images), _read_only(labels)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _read_only(bunch.images.copy()), _read_only(bunch.target.copy())


def _read_only(a: np.ndarray) -> np.ndarray:
    """``a``, no longer writable (it is shared by every caller of the cache)."""
    a.setflags(write=False)
    return a


def digits(split: str = "train", size: int = 8) -> ArrayDataset:
    """scikit-learn's 8x8 digits as (N, 1, size, size) in [-1, 1] with labels 0..9."""
    images, labels = _digits_arrays()
    idx = _split_indices(labels, split)
    x = torch.from_numpy(images[idx]).float().unsqueeze(1) / 8.0 - 1.0  # 0..16 -> [-1, 1]
    if size != 8:
        if size < 2:
            raise DataError(f"digit size must be at least 2, got {size}")
        x = resize(x, size)
    return ArrayDataset(x, torch.from_numpy(labels[idx]), 10, name=f"digits[{split}]")


def _bounce(pos: int, vel: int, hi: int) -> tuple[int, int]:
    """Move by vel inside [0, hi], reflecting at the ends (as often as needed)."""
    if hi == 0:
        return 0, vel
    pos += vel
    while not 0 <= pos <= hi:
        pos, vel = (-pos, -vel) if pos < 0 else (2 * hi - pos, -vel)
    return pos, vel


def moving_digits(split: str = "train", frames: int = 8, canvas: int = 16, digit_size: int = 8,
                  per_digit: int = 1, seed: int = 0) -> ArrayDataset:
    """Videos (N, frames, 1, canvas, canvas): one digit of the split moving on a blank canvas.

    Each video draws a start position uniform on the canvas and a velocity in {-2, -1, 1, 2}^2
    pixels per frame from a generator seeded with ``seed``, and reflects at the borders.
    """
    if frames < 1 or canvas < digit_size:
        raise DataError(f"need frames >= 1 and canvas >= digit size, got {frames}, {canvas}")
    source = digits(split, size=digit_size)
    rng = np.random.default_rng(seed)
    hi = canvas - digit_size
    n = len(source) * per_digit
    videos = torch.full((n, frames, 1, canvas, canvas), -1.0)
    labels = source.labels.repeat(per_digit)
    speeds = np.array([-2, -1, 1, 2])
    for v in range(n):
        img = source.images[v % len(source)]
        px, py = (int(p) for p in rng.integers(0, hi + 1, size=2))
        vx, vy = (int(s) for s in rng.choice(speeds, size=2))
        for f in range(frames):
            videos[v, f, :, py:py + digit_size, px:px + digit_size] = img
            px, vx = _bounce(px, vx, hi)
            py, vy = _bounce(py, vy, hi)
    return ArrayDataset(videos, labels, 10, name=f"moving-digits[{split}]")


# ------------------------------------------------------------------------------------------------
# Users' data: image folders and arrays
# ------------------------------------------------------------------------------------------------

class ImageFolder:
    """PNG/JPEG images under ``root``, resized to ``size`` and converted to ``channels`` (1 or 3).

    Labels come from the names of the first-level sub-folders (sorted) when there are any, and
    images directly under ``root`` are then ignored; with no sub-folder the data are unlabelled.
    Unreadable files are skipped and reported through ``report`` (stderr by default) by name;
    ``skipped`` lists (path, reason).  Decoded images are kept in memory (``cache``).
    """

    def __init__(self, root: str | Path, size: int = 32, channels: int = 1, cache: bool = True,
                 report: Callable[[str], None] = _report_skip):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder {str(self.root)!r} does not exist")
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        self.size, self.channels, self.report = int(size), int(channels), report
        self.name = str(self.root)
        classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if classes:
            files = [(f, c) for c, name in enumerate(classes)
                     for f in sorted((self.root / name).rglob("*")) if _is_image(f)]
            self.num_classes: int | None = len(classes)
        else:
            files = [(f, None) for f in sorted(self.root.iterdir()) if _is_image(f)]
            self.num_classes = None
        self.classes = classes
        self.skipped: list[tuple[str, str]] = []
        self.files: list[Path] = []
        labels = []
        for f, c in files:
            reason = _header_problem(f)
            if reason is None:
                self.files.append(f)
                labels.append(c)
            else:
                self._skip(f, reason)
        if not self.files:
            what = "no PNG/JPEG images" if not files else "no readable PNG/JPEG images"
            raise DataError(f"image folder {str(self.root)!r} has {what}")
        self.labels = None if self.num_classes is None else torch.tensor(labels)
        self._bad: set[int] = set()
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.channels, self.size, self.size)

    def _skip(self, path: Path, reason: str) -> None:
        self.skipped.append((str(path), reason))
        self.report(f"skipping unreadable image {str(path)!r}: {reason}")

    def _decode(self, i: int) -> torch.Tensor:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        x = _decode_image(self.files[i], self.size, self.channels)
        if self._cache is not None:
            self._cache[i] = x
        return x

    def _load(self, i: int) -> tuple[int, torch.Tensor]:
        """Image i, or the next readable one if it cannot be decoded (reported once)."""
        n = len(self.files)
        for j in (k % n for k in range(i, i + n)):
            if j in self._bad:
                continue
            try:
                return j, self._decode(j)
            except (OSError, ValueError, SyntaxError, _bomb_error()) as exc:
                self._bad.add(j)
                self._skip(self.files[j], _reason(exc))
        raise DataError(f"image folder {self.name!r}: no readable image left")

    def batch(self, indices: torch.Tensor):
        loaded = [self._load(int(i)) for i in indices]
        x = torch.stack([img for _, img in loaded])
        y = None if self.labels is None else self.labels[[j for j, _ in loaded]]
        return x, y


def _bomb_error() -> type:
    from PIL import Image

    return Image.DecompressionBombError


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def _header_problem(path: Path) -> str | None:
    """None if PIL can open and verify the file's structure, else why not."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _open_image(path) as im:
            im.verify()
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError,
            Image.DecompressionBombError) as exc:  # FileLimitError is a ValueError
        return _reason(exc)
    return None


@contextlib.contextmanager
def _open_image(path: Path):
    """PIL's image of ``path``, its header read and its pixel count checked against
    ``limits.MAX_PIXELS`` before any pixel is decoded (FileLimitError, a ValueError; PIL's own
    DecompressionBombError above twice its limit; its warning silenced: ours is lower)."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(path)
    with im:
        check_pixels(*im.size, str(path))
        yield im


def _decode_image(path: Path, size: int, channels: int) -> torch.Tensor:
    """Decode, centre-crop to a square, resize (bicubic) and scale to [-1, 1]: (C, size, size)."""
    from PIL import Image

    with _open_image(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
        im = im.resize((size, size), Image.Resampling.BICUBIC)
        arr = np.asarray(im, dtype=np.float32)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy()) / 127.5 - 1.0


def _as_channels_first(arr: np.ndarray, name: str) -> np.ndarray:
    """(N, H, W) -> (N, 1, H, W); (N, H, W, C) with C in {1, 3} -> (N, C, H, W); (N, C, H, W)
    and videos (N, T, C, H, W) are kept."""
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4:
        if arr.shape[1] not in (1, 3) and arr.shape[-1] in (1, 3):
            return arr.transpose(0, 3, 1, 2)
        return arr
    if arr.ndim == 5:
        return arr
    raise DataError(f"{name}: expected (N, H, W), (N, C, H, W), (N, H, W, C) or "
                    f"(N, T, C, H, W), got shape {arr.shape}")


def load_array(path: str | Path) -> ArrayDataset:
    """A dataset from a ``.npy`` or ``.npz`` file (module docstring for layout and scaling)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"array file {str(path)!r} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"cannot read array file {str(path)!r}: {_reason(exc)}") from None
    labels = None
    try:
        if isinstance(loaded, np.ndarray):
            images = loaded
        else:
            with loaded:
                keys = set(loaded.files)
                key = next((k for k in ("images", "x") if k in keys), None)
                if key is None and len(keys) == 1:
                    key = next(iter(keys))
                if key is None:
                    raise DataError(f"{str(path)!r}: no 'images' or 'x' array among "
                                    f"{sorted(keys)}")
                for info in loaded.zip.infolist():  # before inflating any member (limits.py)
                    check_inflation(info.compress_size, info.file_size,
                                    f"{str(path)!r} member {info.filename!r}")
                images = loaded[key]
                lkey = next((k for k in ("labels", "y") if k in keys and k != key), None)
                labels = None if lkey is None else loaded[lkey]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot read array file {str(path)!r}: {_reason(exc)}") from None
    name = str(path)
    if images.dtype.kind not in "uif":
        raise DataError(f"{name}: images must be numbers, got dtype {images.dtype}")
    images = _as_channels_first(images, name)
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    x = x / 127.5 - 1.0 if images.dtype.kind in "ui" else x
    if not torch.isfinite(x).all():
        raise DataError(f"{name}: the images contain NaN or infinite values")
    y = None
    if labels is not None:
        if labels.dtype.kind not in "ui" or labels.ndim != 1 or (labels < 0).any():
            raise DataError(f"{name}: labels must be a 1-D array of non-negative integers")
        y = torch.from_numpy(labels.astype(np.int64))
    return ArrayDataset(x, y, name=name)


def known_law_data(law: known_law.LawSpec | None = None,
                   seed: int = 0) -> known_law.KnownLawData:
    """``digits-gmm``: fresh images from the Gaussian mixture ``law`` fitted to the training split
    of the digits at ``law.size`` (``known_law``; default ``LawSpec()``), image j a function of
    (seed, j)."""
    law = law or known_law.LawSpec()
    if law.size < 2:
        raise DataError(f"digit size must be at least 2, got {law.size}")
    return known_law.KnownLawData(_fitted_law(law), seed=seed)


@functools.lru_cache(maxsize=8)
def _fitted_law(law: known_law.LawSpec) -> known_law.KnownLaw:
    """The fit of ``law`` (a pure function of the spec, so kept for the process)."""
    source = digits("train", size=law.size)
    try:
        return known_law.fit_digits_mixture(law, source.images, source.labels)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def load_dataset(spec: str, *, split: str = "train", size: int | None = None,
                 frames: int | None = None, channels: int = 1,
                 law: known_law.LawSpec | None = None, seed: int = 0):
    """A dataset by name (``digits``, ``moving-digits``, ``digits-gmm``) or path (folder, .npy,
    .npz).

    ``size`` resizes digits (default 8) and folder images (default 32) and sets the moving-digits
    canvas (default 16); ``frames`` is the moving-digits video length (default 8).  ``law``: the
    ``digits-gmm`` law (its ``size`` replaced by ``size`` when given), whose images are drawn
    fresh under ``seed``.
    """
    if spec == known_law.NAME:
        law = law or known_law.LawSpec()
        if size is not None:
            law = dataclasses.replace(law, size=size)
        return known_law_data(law, seed=seed)
    if spec == "digits":
        return digits(split, size=size or 8)
    if spec == "moving-digits":
        return moving_digits(split, frames=frames or 8, canvas=size or 16)
    path = Path(spec)
    if path.is_dir():
        return ImageFolder(path, size=size or 32, channels=channels)
    if path.suffix.lower() in (".npy", ".npz"):
        return load_array(path)
    if not path.exists():
        raise DataError(f"unknown data {spec!r}: not one of {', '.join(DATASETS)} and no such "
                        "file or folder")
    raise DataError(f"unsupported data file {spec!r}: give a folder of PNG/JPEG images or a "
                    ".npy/.npz array")


class BatchSchedule:
    """The indices of the (global) batch at each step: epoch-wise permutations, drop-last.

    Step k is batch k mod E of epoch k div E, E = len // batch_size, and epoch e is
    ``randperm(len)`` under a generator seeded with seed * 1_000_003 + e.  No state is carried
    from step to step, so a resumed run sees the uninterrupted run's batches.
    """

    def __init__(self, length: int, batch_size: int, seed: int = 0):
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {batch_size}")
        if batch_size > length:
            raise DataError(f"batch size {batch_size} exceeds the dataset's {length} samples")
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.steps_per_epoch = length // batch_size
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> torch.Tensor:
        epoch, j = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            g = stream_generator(self.seed, epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.length, generator=g)
        return self._perm[j * self.batch_size:(j + 1) * self.batch_size]
