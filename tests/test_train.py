"""The training and sampling CLIs: exact resume, divergence, data parallelism, bad input."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import TINY, tiny_model

from rdm_dynamics import sample as sample_cli
from rdm_dynamics import train as train_cli
from rdm_dynamics.training.checkpoint import find_checkpoints, load_checkpoint
from rdm_dynamics.training.images import save_samples
from rdm_dynamics.training.loop import TrainingDiverged, train
from rdm_dynamics.training.settings import TrainConfig, resolve_config

TESTS = Path(__file__).resolve().parent
MODEL = {"model": "RDM-DiT-T/2", "model_options": TINY["RDM-DiT-T/2"]}
TINY_FLAGS = ["--model-option", "depth=1", "--model-option", "width=32", "--model-option",
              "heads=2"]


def config(out, **kw):
    base = dict(MODEL, steps=6, batch_size=16, warmup=0, log_every=1, ckpt_every=3,
                n_samples=4, sample_steps=2, progress=False, out=str(out), device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def losses(out):
    lines = [json.loads(s) for s in (Path(out) / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r]


def weights(out):
    return load_checkpoint(out).state_dict("model")


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_resumed_run_repeats_the_uninterrupted_losses_exactly(tmp_path, name):
    model = {"model": name, "model_options": TINY[name]}
    full = config(tmp_path / "full", **model)
    train(full)

    cut = config(tmp_path / "cut", **model)

    def kill(step, loss):
        if step == 5:  # after the checkpoint of step 3, mid-way to the next
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cut, on_step=kill)
    assert load_checkpoint(cut.out).step == 3
    train(cut, resume=True)
    assert losses(cut.out) == losses(full.out)  # exact float equality, steps 1..6 once each
    assert [s for s, _ in losses(cut.out)] == list(range(1, 7))
    a, b = weights(full.out), weights(cut.out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ema_a, ema_b = (load_checkpoint(o).state_dict("ema") for o in (full.out, cut.out))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_the_log_holds_lr_grad_norm_and_gate_statistics(tmp_path):
    cfg = config(tmp_path, steps=2, warmup=4)
    train(cfg)
    rec = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert rec["step"] == 2 and rec["lr"] == pytest.approx(1e-3 * 2 / 4)
    assert math.isfinite(rec["grad_norm"]) and rec["grad_norm"] > 0
    names = set(tiny_model().gate_values())
    assert names and set(rec["gates"]) == names
    assert all(len(v) == 4 for v in rec["gates"].values())  # mean, std, min, max
    assert (tmp_path / "samples" / "step-00000002.png").is_file()


def test_a_time_budget_stops_with_a_checkpoint_and_a_log_line(tmp_path):
    summary = train(config(tmp_path, steps=50, max_seconds=1e-9, log_every=10, ckpt_every=10))
    assert summary["step"] == 1 and load_checkpoint(tmp_path).step == 1
    assert [s for s, _ in losses(tmp_path)] == [1]


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = config(tmp_path, lr=1e30, steps=8, ckpt_every=1, grad_clip=1e30)
    with pytest.raises(TrainingDiverged, match="not finite|nan|inf") as err:
        train(cfg)
    good = load_checkpoint(tmp_path)
    assert str(good.path) in str(err.value)
    assert all(torch.isfinite(v).all() for v in good.tensors.values())
    assert good.step < 8


@pytest.mark.heavy
def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    """torchrun, 2 CPU processes (gloo), global batch 16: the replicas stay bitwise identical,
    and their weights match a single process on the same global batch up to float round-off."""
    args = ["--model", "RDM-DiT-T/2", *TINY_FLAGS, "--steps", "3", "--batch-size", "16",
            "--warmup", "0", "--log-every", "1", "--ckpt-every", "3", "--n-samples", "2",
            "--sample-steps", "1", "--no-progress", "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "rdm_dynamics.train", *args,
                           "--out", str(tmp_path / "ddp")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single = config(tmp_path / "one", steps=3, n_samples=2, sample_steps=1)
    train(single)
    ddp = load_checkpoint(tmp_path / "ddp")
    assert ddp.meta["world_size"] == 2 and ddp.meta["replica_max_param_diff"] == 0.0
    a, b = ddp.state_dict("model"), weights(single.out)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-6, diff
    for (s1, l1), (s2, l2) in zip(losses(tmp_path / "ddp"), losses(single.out), strict=True):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-6)


def test_training_on_a_folder_with_a_corrupt_file_reports_it_and_finishes(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(20):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{k}.png")
    (folder / "bad.png").write_bytes(b"\x89PNG broken")
    summary = train(config(tmp_path / "run", data=str(folder), image_size=8, steps=2,
                           batch_size=8))
    assert [p.split("/")[-1] for p, _ in summary["skipped"]] == ["bad.png"]
    assert "bad.png" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "run").meta["labelled"] is False


def run_main(fn, argv, capsys):
    rc = fn(argv)
    return rc, capsys.readouterr().err.strip()


@pytest.mark.parametrize("argv, message", [
    (["--steps", "abc"], "steps must be int"),
    (["--steps", "0"], "steps must be at least 1"),
    (["--lr", "-1"], "lr must be a positive"),
    (["--prediction", "x0"], "unknown prediction"),
    (["--data", "/no/such/data"], "unknown data"),
    (["--config", "/no/such.yaml"], "does not exist"),
    (["--batch-size", "5000"], "exceeds"),
    (["--bogus"], "unrecognized arguments"),
    (["--resume"], "no checkpoint"),
])
def test_bad_training_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, message):
    base = ["--out", str(tmp_path / "run"), *TINY_FLAGS, "--no-progress"]
    rc, err = run_main(train_cli.main, base + argv, capsys)
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err


def test_an_unknown_model_name_is_exit_code_2(tmp_path, capsys):
    pytest.importorskip("rdm_dynamics.models")
    rc, err = run_main(train_cli.main, ["--out", str(tmp_path), "--model", "RDM-Nope"], capsys)
    assert rc == 2 and "RDM-Nope" in err and len(err.splitlines()) == 1, err


def test_config_files_yaml_and_toml_with_flags_on_top(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("steps: 7\nlr: 0.01\nmodel-options: {width: 4}\n")
    (tmp_path / "b.toml").write_text('steps = 9\nsampler = "pf-ode"\n[model_options]\nwidth = 4\n')
    cfg, _ = resolve_config(["--config", str(tmp_path / "a.yaml"), "--lr", "0.02",
                                       "--out", str(tmp_path / "x")])
    assert (cfg.steps, cfg.lr, cfg.model_options) == (7, 0.02, {"width": 4})
    cfg, _ = resolve_config(["--config", str(tmp_path / "b.toml"),
                                       "--model-option", "depth=3", "--out", str(tmp_path / "y")])
    assert (cfg.steps, cfg.sampler, cfg.model_options) == (9, "pf-ode", {"width": 4, "depth": 3})
    (tmp_path / "c.yaml").write_text("stepz: 3\n")
    (tmp_path / "d.yaml").write_text("steps: [1\n")
    for name, message in (("c.yaml", "unknown setting"), ("d.yaml", "cannot parse")):
        rc, err = run_main(train_cli.main, ["--config", str(tmp_path / name)], capsys)
        assert rc == 2 and message in err and len(err.splitlines()) == 1


def test_resume_refuses_to_change_what_is_computed(tmp_path, capsys):
    train(config(tmp_path, steps=3))
    rc, err = run_main(train_cli.main, ["--out", str(tmp_path), "--resume", "--lr", "0.5"], capsys)
    assert rc == 2 and "cannot change lr" in err
    rc, err = run_main(train_cli.main, ["--out", str(tmp_path)], capsys)
    assert rc == 2 and "already holds a run" in err


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("image_run")
    train(config(out, steps=2))
    return out


@pytest.mark.parametrize("sampler", ["pf-ode", "ddpm", "euler-maruyama"])
def test_sample_cli_writes_a_png_grid(image_run, tmp_path, capsys, sampler):
    out = tmp_path / "grid.png"
    rc, err = run_main(sample_cli.main, ["--ckpt", str(image_run), "--n", "6", "--sampler",
                                         sampler, "--steps", "3", "--method", "euler",
                                         "--guidance", "2",
                                         "--out", str(out), "--npz", str(tmp_path / "s.npz")],
                       capsys)
    assert rc == 0, err
    assert Image.open(out).format == "PNG"
    saved = np.load(tmp_path / "s.npz")
    assert saved["samples"].shape == (6, 1, 8, 8) and saved["labels"].tolist() == [0, 1, 2, 3,
                                                                                    4, 5]


def test_sample_files_are_written_in_the_format_asked_or_refused(tmp_path):
    img, vid = torch.zeros(2, 1, 4, 4), torch.zeros(2, 3, 1, 4, 4)
    assert save_samples(img, tmp_path / "w-1.5").name == "w-1.5.png"
    assert save_samples(vid, tmp_path / "v").name == "v.gif"
    assert save_samples(img, tmp_path / "g.gif").name == "g.gif"
    assert save_samples(img, tmp_path / "j.jpg").name == "j.jpg"
    with pytest.raises(ValueError, match="videos are written as GIF"):
        save_samples(vid, tmp_path / "v.png")
    assert {p.name: Image.open(p).format for p in tmp_path.iterdir()} == {
        "w-1.5.png": "PNG", "v.gif": "GIF", "g.gif": "GIF", "j.jpg": "JPEG"}


def test_sample_cli_writes_a_gif_for_videos(tmp_path, capsys):
    run = tmp_path / "video_run"
    train(config(run, data="moving-digits", image_size=12, frames=3, steps=1, ckpt_every=1))
    rc, err = run_main(sample_cli.main, ["--ckpt", str(run), "--n", "4", "--sampler", "ddpm",
                                         "--steps", "2",
                                         "--out", str(tmp_path / "v.gif")], capsys)
    assert rc == 0, err
    gif = Image.open(tmp_path / "v.gif")
    assert gif.format == "GIF" and gif.n_frames == 3


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "--n must be at least 1"),
    (["--sampler", "heun"], "invalid choice"),
    (["--method", "nope"], "unknown --method"),
    (["--label", "12"], "--label must be a class"),
    (["--out", "/no/such/dir/x.png"], "folder does not exist"),
])
def test_bad_sampling_input_is_one_line_and_exit_code_2(image_run, capsys, argv, message):
    rc, err = run_main(sample_cli.main, ["--ckpt", str(image_run), *argv], capsys)
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err


def test_a_users_own_model_factory_trains_and_must_be_named_to_load(tmp_path, capsys):
    """--model-factory module:function (here tests/standin.py) replaces build_model; a checkpoint
    never imports it by itself: sampling needs the factory named again."""
    run = tmp_path / "own"
    train(config(run, model="tiny", model_factory="standin:build", model_options={"width": 8},
                 steps=2))
    rc, err = run_main(sample_cli.main, ["--ckpt", str(run), "--n", "2"], capsys)
    assert rc == 2 and "--model-factory standin:build" in err
    rc, err = run_main(sample_cli.main, ["--ckpt", str(run), "--n", "2", "--steps", "2",
                                         "--sampler", "ddpm", "--model-factory", "standin:build",
                                         "--out", str(tmp_path / "own.png")], capsys)
    assert rc == 0, err


def test_a_real_process_exits_2_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rdm_dynamics.sample", "--ckpt",
                           str(tmp_path / "nothing")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert find_checkpoints(tmp_path) == []
