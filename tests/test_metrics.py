"""Frechet distance (against scipy and the Gaussian W2 of laws.py) and the cached classifier."""

import numpy as np
import pytest
import scipy.linalg
import torch

from rdm_dynamics.checks.report import save_figure
from rdm_dynamics.laws import Gaussian, gaussian_w2
from rdm_dynamics.stats import frechet_distance
from rdm_dynamics.training import metrics


def random_spd(d, rng):
    A = rng.standard_normal((d, d))
    return A @ A.T / d + 0.05 * np.eye(d)


def test_frechet_distance_matches_scipy_sqrtm_and_gaussian_w2():
    rng = np.random.default_rng(0)
    for d in (1, 3, 16):
        m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
        S1, S2 = random_spd(d, rng), random_spd(d, rng)
        fd = frechet_distance(m1, S1, m2, S2)
        covmean = scipy.linalg.sqrtm(S1 @ S2).real
        ref = float((m1 - m2) @ (m1 - m2) + np.trace(S1 + S2 - 2 * covmean))
        assert abs(fd - ref) < 1e-8 * max(1.0, abs(ref))
        w2 = gaussian_w2(Gaussian(torch.tensor(m1), torch.tensor(S1)),
                         Gaussian(torch.tensor(m2), torch.tensor(S2)))
        assert abs(fd - float(w2) ** 2) < 1e-8 * max(1.0, fd)


def test_frechet_distance_of_a_law_with_itself_is_zero_even_when_singular():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((8, 3))
    S = A @ A.T  # rank 3: zero eigenvalues come back as O(eps), their roots as O(sqrt(eps))
    fd = frechet_distance(np.zeros(8), S, np.zeros(8), S)
    assert 0 <= fd < 1e-6 * np.trace(S)
    f = rng.standard_normal((500, 4))
    fd, se = metrics.feature_frechet_distance(f, f, bootstrap=20)
    assert abs(fd) < 1e-9 and se > 0


def test_sample_fd_is_biased_upward_at_small_n():
    """Two samples of the same law: the FD estimate is positive and shrinks roughly like 1/n."""
    rng = np.random.default_rng(2)
    small = np.mean([metrics.feature_frechet_distance(rng.standard_normal((100, 8)),
                                                      rng.standard_normal((100, 8)))[0]
                     for _ in range(10)])
    large = np.mean([metrics.feature_frechet_distance(rng.standard_normal((1600, 8)),
                                                      rng.standard_normal((1600, 8)))[0]
                     for _ in range(10)])
    assert small > 0 and 6 < small / large < 30


def test_classifier_cache_is_written_and_retrained_when_corrupt(tmp_path, monkeypatch):
    monkeypatch.setenv("RDM_DYNAMICS_CACHE", str(tmp_path))
    calls = []

    def fast(kind="digits", size=8, epochs=None, seed=0):
        calls.append(kind)
        torch.manual_seed(seed)
        return metrics.DigitClassifier().eval()

    monkeypatch.setattr(metrics, "train_classifier", fast)
    first = metrics.load_classifier("digits", 8)
    path = metrics._cache_path("digits", 8)
    assert path.is_file() and len(calls) == 1
    again = metrics.load_classifier("digits", 8)
    assert len(calls) == 1  # from the cache
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    path.write_bytes(b"not a safetensors file")
    metrics.load_classifier("digits", 8)
    assert len(calls) == 2  # retrained
    path.unlink()
    metrics.load_classifier("digits", 8)
    assert len(calls) == 3 and path.is_file()


def test_judge_reports_fd_and_accuracy_beside_the_floor(tmp_path, monkeypatch):
    """With an untrained classifier the figures are meaningless but must be well formed; real
    data scored as samples reproduce the floor exactly."""
    monkeypatch.setenv("RDM_DYNAMICS_CACHE", str(tmp_path))
    monkeypatch.setattr(metrics, "train_classifier",
                        lambda kind="digits", size=8, **_: metrics.DigitClassifier().eval())
    judge = metrics.DigitJudge("digits", 8, bootstrap=5)
    floor = judge.floor()
    again = judge.evaluate(judge.held_out.images, judge.held_out.labels, prefix="real_")
    assert floor == again
    assert floor["real_n"] == 359 and 0 <= floor["real_accuracy"] <= 1
    noise = judge.evaluate(torch.rand(359, 1, 8, 8) * 2 - 1, np.zeros(359, dtype=int))
    assert noise["fd"] > floor["real_fd"]


@pytest.mark.parametrize("frames", [3])
def test_video_metrics_have_per_frame_and_temporal_figures(tmp_path, monkeypatch, frames):
    monkeypatch.setenv("RDM_DYNAMICS_CACHE", str(tmp_path))
    monkeypatch.setattr(metrics, "train_classifier",
                        lambda kind="digits", size=8, **_: metrics.DigitClassifier().eval())
    judge = metrics.DigitJudge("moving-digits", 12, bootstrap=0, frames=3)
    vids = judge.held_out.images[:50]
    out = judge.evaluate(vids, judge.held_out.labels[:50])
    nf = vids.shape[1]
    assert all(f"fd_frame{k}" in out and f"accuracy_frame{k}" in out for k in range(nf))
    assert 0 < out["label_consistency"] <= 1 and out["feature_motion"] > 0
    still = judge.evaluate(vids[:, :1].expand_as(vids).contiguous())
    assert still["feature_motion"] == 0 and still["label_consistency"] == 1
    save_figure(metrics.video_figure({**out, **judge.floor()}, nf), tmp_path / "video.png")
    assert (tmp_path / "video.png").stat().st_size > 0
