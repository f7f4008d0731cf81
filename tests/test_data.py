"""Data loaders on good, empty and corrupt inputs; deterministic digits, videos and batches."""

import numpy as np
import pytest
import torch
from PIL import Image

from rdm_dynamics.training.data import (
    BatchSchedule,
    DataError,
    ImageFolder,
    _split_indices,
    digits,
    load_array,
    load_dataset,
    moving_digits,
)


def test_digits_splits_are_disjoint_stratified_and_scaled():
    train, test = digits("train"), digits("test")
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert train.sample_shape == (1, 8, 8) and train.num_classes == 10
    assert float(train.images.min()) == -1.0 and float(train.images.max()) == 1.0
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    labels = digits("all").labels.numpy()
    tr, te = _split_indices(labels, "train"), _split_indices(labels, "test")
    assert not set(tr) & set(te) and len(set(tr) | set(te)) == 1797  # a partition
    torch.testing.assert_close(digits("test").images, test.images)  # deterministic
    assert digits("train", size=16).sample_shape == (1, 16, 16)


def test_digits_are_scikit_learns_read_from_its_file(monkeypatch):
    """The file read directly is scikit-learn's digits, image for image and label for label; it
    is read without ``load_digits`` (made to fail here), so without importing scikit-learn."""
    import sklearn.datasets
    from sklearn.datasets import load_digits

    from rdm_dynamics.training import data

    bunch = load_digits()

    def refused():
        raise AssertionError("load_digits called: the shipped file was not read")

    monkeypatch.setattr(sklearn.datasets, "load_digits", refused)
    data._digits_arrays.cache_clear()
    try:
        images, labels = data._digits_arrays()
    finally:
        data._digits_arrays.cache_clear()
    assert np.array_equal(images, bunch.images) and np.array_equal(labels, bunch.target)
    assert images.dtype == bunch.images.dtype and labels.dtype == bunch.target.dtype
    assert not images.flags.writeable and not labels.flags.writeable


def test_moving_digits_are_deterministic_and_keep_the_digit_on_the_canvas():
    a = moving_digits("test", frames=5, canvas=12)
    b = moving_digits("test", frames=5, canvas=12)
    assert a.images.shape == (359, 5, 1, 12, 12)
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
    ink = (a.images > -1).flatten(2).sum(-1)
    # the digit is pasted whole in every frame: the same amount of ink in each frame
    assert (ink == ink[:, :1]).all()
    moved = (a.images[:, 1:] != a.images[:, :-1]).flatten(1).any(1)
    assert moved.all()
    fixed = moving_digits("test", frames=4, canvas=8)  # no room to move: the digit stays put
    assert (fixed.images == fixed.images[:, :1]).all()
    fast = moving_digits("test", frames=6, canvas=9)  # speed 2 > room 1: reflected twice
    assert fast.images.shape == (359, 6, 1, 9, 9)


def write_png(path, value=128, size=(10, 12)):
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(path)


def test_image_folder_labels_from_subfolders(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for k in range(3):
            write_png(tmp_path / c / f"{k}.png", value=40 * k)
    ds = ImageFolder(tmp_path, size=8)
    assert len(ds) == 6 and ds.classes == ["cat", "dog"] and ds.num_classes == 2
    x, y = ds.batch(torch.arange(6))
    assert x.shape == (6, 1, 8, 8) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert x.min() >= -1 and x.max() <= 1
    rgb = ImageFolder(tmp_path, size=4, channels=3)
    assert rgb.batch(torch.tensor([0]))[0].shape == (1, 3, 4, 4)


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no PNG/JPEG images"):
        ImageFolder(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no PNG/JPEG images"):
        load_dataset(str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "missing")


def test_corrupt_files_are_skipped_and_reported_by_name(tmp_path):
    for k in range(3):
        write_png(tmp_path / f"good{k}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    reports = []
    ds = ImageFolder(tmp_path, size=8, report=reports.append)
    assert len(ds) == 3
    assert {p.split("/")[-1] for p, _ in ds.skipped} == {"broken.png", "empty.jpg"}
    assert any("broken.png" in r for r in reports) and any("empty.jpg" in r for r in reports)
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="no readable"):
        ImageFolder(only_bad, report=reports.append)


def test_a_file_that_breaks_mid_epoch_does_not_stop_the_batch(tmp_path):
    """A file readable at construction but corrupt when decoded is replaced by the next one."""
    for k in range(4):
        write_png(tmp_path / f"{k}.png", value=50 * k)
    reports = []
    ds = ImageFolder(tmp_path, size=8, report=reports.append)
    (tmp_path / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    x, y = ds.batch(torch.arange(4))
    assert x.shape == (4, 1, 8, 8) and y is None
    assert [p.split("/")[-1] for p, _ in ds.skipped] == ["1.png"] and len(reports) == 1
    torch.testing.assert_close(x[1], x[2])  # index 1 took the next readable image
    ds.batch(torch.arange(4))
    assert len(reports) == 1  # reported once


def test_arrays_npy_and_npz(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(5, 6, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", imgs)
    ds = load_array(tmp_path / "a.npy")
    assert ds.sample_shape == (3, 6, 6) and ds.labels is None
    torch.testing.assert_close(ds.images[0, :, 0, 0],
                               torch.tensor(imgs[0, 0, 0] / 127.5 - 1, dtype=torch.float32))
    vids = np.zeros((4, 3, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "v.npz", x=vids, y=np.array([0, 1, 2, 1]))
    v = load_dataset(str(tmp_path / "v.npz"))
    assert v.sample_shape == (3, 1, 8, 8) and v.num_classes == 3


def test_corrupt_or_pickled_arrays_are_clear_errors(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="bad.npy"):
        load_array(tmp_path / "bad.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="obj.npy"):
        load_array(tmp_path / "obj.npy")  # never unpickled
    np.savez(tmp_path / "nolabel.npz", a=np.zeros((2, 4, 4)), b=np.zeros(2))
    with pytest.raises(DataError, match="no 'images'"):
        load_array(tmp_path / "nolabel.npz")
    np.save(tmp_path / "nan.npy", np.full((2, 4, 4), np.nan, dtype=np.float32))
    with pytest.raises(DataError, match="NaN"):
        load_array(tmp_path / "nan.npy")
    with pytest.raises(DataError, match="unsupported"):
        (tmp_path / "x.csv").write_text("1,2")
        load_dataset(str(tmp_path / "x.csv"))


def test_batch_schedule_is_a_function_of_seed_and_step():
    s = BatchSchedule(10, 3, seed=4)
    seq = [s.indices(k).tolist() for k in range(7)]
    again = BatchSchedule(10, 3, seed=4)
    assert [again.indices(k).tolist() for k in (6, 0, 3)] == [seq[6], seq[0], seq[3]]
    epoch0 = sum(seq[:3], [])
    assert len(set(epoch0)) == 9  # drop-last, no repeats within an epoch
    assert seq[3] != seq[0] or seq[4] != seq[1]  # a new permutation each epoch
    with pytest.raises(DataError, match="exceeds"):
        BatchSchedule(5, 6)
