"""Cohorts (training.cohort, train --cohort, study --cohort): runs of one recipe that differ in
seed and learning rate, trained as one batched model, each ending as its own run would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rdm_dynamics.cli import UsageError
from rdm_dynamics.training.checkpoint import latest_checkpoint, load_checkpoint
from rdm_dynamics.training.cohort import DIVERGED_FILE, train_cohort
from rdm_dynamics.training.loop import train
from rdm_dynamics.training.settings import TrainConfig, resolve_config

RECIPE = dict(model="RDM-MLP-T", model_options={"width": 16, "depth": 3}, data="digits-gmm",
              steps=12, batch_size=16, warmup=4, log_every=6, ckpt_every=6, sample_every=6,
              n_samples=2,
              sample_steps=2, progress=False, device="cpu",
              grad_clip=0.05)  # small enough that every member's clipping binds
MEMBERS = [(0, 1e-3), (1, 1e-3), (0, 1e-2)]  # two seeds at one lr, one seed at another


def cfg(folder: Path, seed: int, lr: float, **changes) -> TrainConfig:
    return TrainConfig(**{**RECIPE, **changes}, seed=seed, lr=lr, out=str(folder))


def weights(folder: Path, prefix: str = "model") -> dict[str, torch.Tensor]:
    return load_checkpoint(latest_checkpoint(folder)).state_dict(prefix)


def relative_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max() / (b[k].abs().max() + 1e-12)) for k in b)


@pytest.fixture(scope="module")
def cohort_and_singles(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    summaries = train_cohort([cfg(root / f"c{s}-{lr}", s, lr) for s, lr in MEMBERS])
    for s, lr in MEMBERS:
        train(cfg(root / f"s{s}-{lr}", s, lr))
    return root, summaries


def test_every_member_follows_its_own_run_to_rounding(cohort_and_singles):
    """Each member's weights and EMA after 12 steps are those of ``train`` on its configuration
    to 1e-4 relative (batched products round differently), while a run at another learning rate
    or seed is at least 1e-3 away: the tolerance tells members apart."""
    root, summaries = cohort_and_singles
    assert [s["status"] for s in summaries] == ["done"] * 3
    for s, lr in MEMBERS:
        mine = root / f"c{s}-{lr}"
        for prefix in ("model", "ema"):
            assert relative_difference(weights(mine, prefix),
                                       weights(root / f"s{s}-{lr}", prefix)) < 1e-4
    assert relative_difference(weights(root / "c0-0.01"), weights(root / "s0-0.001")) > 1e-3
    assert relative_difference(weights(root / "c1-0.001"), weights(root / "s0-0.001")) > 1e-3


def test_member_folders_are_ordinary_run_folders(cohort_and_singles):
    """Same log lines (steps, learning rates, losses to rounding) and checkpoint contents as the
    single run's folder: a member's optimizer state, generators and step are its own."""
    root, _ = cohort_and_singles
    for s, lr in MEMBERS:
        mine, single = root / f"c{s}-{lr}", root / f"s{s}-{lr}"
        a = [json.loads(x) for x in (mine / "log.jsonl").read_text().splitlines()]
        b = [json.loads(x) for x in (single / "log.jsonl").read_text().splitlines()]
        assert [(x["step"], x["lr"]) for x in a] == [(x["step"], x["lr"]) for x in b]
        for key in ("loss", "grad_norm"):
            assert all(abs(x[key] - y[key]) <= 1e-4 * abs(y[key])
                       for x, y in zip(a, b, strict=True)), key
        assert all(x["grad_norm"] > RECIPE["grad_clip"] for x in b)
        ca = load_checkpoint(latest_checkpoint(mine))
        cb = load_checkpoint(latest_checkpoint(single))
        assert ca.step == cb.step == 12
        assert ca.meta["rng"]["generators"] == cb.meta["rng"]["generators"]
        assert ca.meta["optimizer"]["param_groups"][0]["lr"] == \
            cb.meta["optimizer"]["param_groups"][0]["lr"]
        for k, v in cb.tensors.items():
            if k.startswith("optim."):
                assert torch.allclose(ca.tensors[k], v, rtol=1e-3, atol=1e-9), k
        assert sorted(p.name for p in (mine / "samples").iterdir()) == \
            sorted(p.name for p in (single / "samples").iterdir()) == \
            ["step-00000006.png", "step-00000012.png"]


def test_a_resumed_cohort_repeats_the_uninterrupted_one_exactly(cohort_and_singles, tmp_path):
    """A cohort trained to step 6, then resumed from its members' folders to step 12, ends with
    the uninterrupted cohort's weights bit for bit (CPU)."""
    root, _ = cohort_and_singles
    folders = [tmp_path / f"r{s}-{lr}" for s, lr in MEMBERS]
    train_cohort([cfg(f, s, lr, steps=6) for f, (s, lr) in zip(folders, MEMBERS, strict=True)])
    resumed = [resolve_config(["--resume", str(f), "--steps", "12"]) for f in folders]
    train_cohort([c for c, _ in resumed], [r for _, r in resumed])
    for f, (s, lr) in zip(folders, MEMBERS, strict=True):
        ours, theirs = weights(f, "ema"), weights(root / f"c{s}-{lr}", "ema")
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_member_that_diverges_stops_alone(tmp_path):
    """lr 1e30 without clipping: that member stops at its first non-finite figure, keeps its last
    good checkpoint and says why in diverged.json; the other member trains to the end."""
    members = [cfg(tmp_path / "ok", 0, 1e-3, grad_clip=1e30, ckpt_every=1, steps=6),
               cfg(tmp_path / "bad", 0, 1e30, grad_clip=1e30, ckpt_every=1, steps=6)]
    ok, bad = train_cohort(members)
    assert ok["status"] == "done" and ok["step"] == 6
    assert bad["status"] == "diverged" and bad["step"] < 6
    marker = json.loads((tmp_path / "bad" / DIVERGED_FILE).read_text())
    assert marker["step"] == bad["step"]
    assert "nan" in marker["message"] or "inf" in marker["message"]
    good = load_checkpoint(latest_checkpoint(tmp_path / "bad"))
    assert good.step < bad["step"]
    assert all(torch.isfinite(v).all() for v in good.tensors.values())
    assert load_checkpoint(latest_checkpoint(tmp_path / "ok")).step == 6


@pytest.mark.parametrize("changes, match", [
    ({"batch_size": 8}, "differs in batch_size"),
    ({"gate": "plain"}, "differs in gate"),
])
def test_runs_of_another_recipe_are_refused(tmp_path, changes, match):
    with pytest.raises(UsageError, match=match):
        train_cohort([cfg(tmp_path / "a", 0, 1e-3), cfg(tmp_path / "b", 1, 1e-3, **changes)])
    assert not (tmp_path / "a").exists()


def test_one_folder_twice_is_refused(tmp_path):
    with pytest.raises(UsageError, match="one folder"):
        train_cohort([cfg(tmp_path / "a", 0, 1e-3), cfg(tmp_path / "a", 1, 1e-3)])


def test_members_killed_while_checkpointing_go_on_from_their_common_step(tmp_path, capsys):
    """One member's step-12 checkpoint lost (a cohort killed while it wrote them): resumed, the
    cohort goes on from step 6, the newest step both have, and ends as the uninterrupted cohort
    did, bit for bit; a stale diverged.json is removed when its run trains again."""
    members = MEMBERS[:2]
    folders = [tmp_path / f"k{s}-{lr}" for s, lr in members]
    train_cohort([cfg(f, s, lr, steps=12) for f, (s, lr) in zip(folders, members, strict=True)])
    ema_before = [weights(f, "ema") for f in folders]
    for suffix in ("json", "safetensors"):
        (folders[1] / f"ckpt-00000012.{suffix}").unlink()
    (folders[0] / DIVERGED_FILE).write_text("{}")
    resumed = [resolve_config(["--resume", str(f)]) for f in folders]
    assert [load_checkpoint(p).step for _, p in resumed] == [12, 6]
    train_cohort([c for c, _ in resumed], [r for _, r in resumed])
    assert "stand at steps [6, 12]; every one goes on from step 6" in capsys.readouterr().err
    for f, before in zip(folders, ema_before, strict=True):
        after = weights(f, "ema")
        assert all(torch.equal(after[k], before[k]) for k in before)
    assert not (folders[0] / DIVERGED_FILE).exists()


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "rdm_dynamics.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_the_cohort_command(tmp_path):
    """train --cohort: new runs from configuration files, one line per run; bad input is one
    line and exit 2."""
    import yaml

    files = []
    for s in (0, 1):
        path = tmp_path / f"c{s}.yaml"
        path.write_text(yaml.safe_dump({**RECIPE, "steps": 2, "seed": s, "out": f"run{s}"}))
        files.append(path.name)
    done = _cli("--cohort", *files, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert [line.split(": trained to step 2 (loss ")[0] for line in lines] == ["run0", "run1"]
    assert load_checkpoint(latest_checkpoint(tmp_path / "run1")).step == 2
    for bad in (["--cohort"], ["--cohort", "--lr", "1"], ["--cohort", "missing.yaml"]):
        refused = _cli(*bad, cwd=tmp_path)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, bad
        assert "Traceback" not in refused.stderr
