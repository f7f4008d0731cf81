"""Hostile files against the four commands (train, sample, verify, study), table-driven: the
classes of issue 23.

1. a checkpoint's stored configuration, data law and weights are validated as the command line is;
2. resource bombs in small files (YAML aliases, deep nesting, oversized files, image and zip
   decompression bombs, long bad values) are refused in under 5 s and 500 MB;
3. a run folder has one writer (a held lock is named, exit 2);
4. a study refuses runs whose stored settings are not its plan's, and files it did not write;
5. the smaller ones: --depth with --ckpt, NaN weights, a model whose samples are not finite.

Every case runs the real command in this process, in a workspace of its own, and asserts (as
``test_bad_input`` does, whose harness pieces it uses) the exit code, one line on stderr (a
warning line where the case says so), no traceback, no file of the user's changed; a case marked
``bomb`` also asserts the time (< 5 s of this process's CPU time, which other processes on the
machine do not inflate) and the peak memory (< 500 MB above the resident size before the
command, measured by resetting the process's high-water mark, /proc/self/clear_refs).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from test_bad_input import (
    SAMPLE,
    TINY,
    Fixtures,
    a_file,
    both,
    edit_json,
    tiny_config,
    trained,  # noqa: F401  (the shared tiny run, a module fixture)
    tree,
    with_run,
)

from rdm_dynamics import sample as sample_cli
from rdm_dynamics import study as study_cli
from rdm_dynamics import train as train_cli
from rdm_dynamics import verify as verify_cli
from rdm_dynamics.locks import RUN_LOCK, acquire
from rdm_dynamics.training.checkpoint import FORMAT
from rdm_dynamics.training.loop import train

COMMANDS = {"verify": verify_cli.main, "train": train_cli.main, "sample": sample_cli.main,
            "study": study_cli.main}
SECONDS, MEGABYTES = 5.0, 500
CKPT = "run/ckpt-00000002"


@dataclass
class Case:
    command: str
    argv: list
    code: int
    words: str
    prepare: object = None
    writes: tuple = ()
    warnings: int = 0
    bomb: bool = False  # bounded in time and memory
    env: dict = field(default_factory=dict)
    max_line: int = 600  # characters of the error line


# ------------------------------------------------------------------------------------------------
# Fixtures: a digits-gmm run, a one-run study with its run trained, hostile files
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gmm(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gmm") / "run"
    train(tiny_config(out, data="digits-gmm"))
    return out


STUDY = """
[train]
model = "RDM-DiT-T/2"
model_options = { width = 16, heads = 2 }
data = "digits"
steps = 2
batch_size = 8
warmup = 0
ckpt_every = 1
n_samples = 2
sample_steps = 2
lr = 0.001

[[grid]]
gate = ["rdm"]
depth = [1]
seed = [0]

[measure]
checks = false
fd_samples = 0
"""


@pytest.fixture(scope="module")
def studied(tmp_path_factory) -> Path:
    """A study folder whose one run is trained (as the study would) but not yet measured."""
    from rdm_dynamics.depth_study import load_study, plan

    root = tmp_path_factory.mktemp("studied")
    (root / "study.toml").write_text(STUDY)
    (spec,) = plan(load_study(str(root / "study.toml")), root / "s", {"device": "cpu"})
    train(spec.config)
    return root


def with_gmm(ws, fx):
    shutil.copytree(fx["gmm"], ws / "run")


def with_study(ws, fx):
    shutil.copytree(fx["studied"], ws, dirs_exist_ok=True)


def edit_tensors(path, change):
    """Rewrite a checkpoint's safetensors with ``change(tensors)`` (the step kept)."""
    def prepare(ws, fx):
        p = ws / path
        tensors = load_file(str(p))
        change(tensors)
        save_file(tensors, str(p), metadata={"format": FORMAT, "step": p.stem[-8:].lstrip("0")})
    return prepare


def set_tensor(name, value):
    def change(t):
        t[name] = value(t[name]) if callable(value) else value
    return change


def negative_first(w):
    """Weights that still sum to 1, the first negative."""
    w = w.clone()
    w[1] += 2 * w[0]
    w[0] = -w[0]
    return w


def drop_law(t):
    for k in [k for k in t if k.startswith("law.")]:
        del t[k]


def train_config(key, value):
    def change(meta):
        meta["train_config"][key] = value
    return change


def model_config(key, value):
    def change(meta):
        meta["model_config"][key] = value
    return change


def study_ckpt(change):
    """Edit every checkpoint JSON of the studied run."""
    def prepare(ws, fx):
        for p in (ws / "s" / "runs").rglob("ckpt-*.json"):
            meta = json.loads(p.read_text())
            change(meta)
            p.write_text(json.dumps(meta))
    return prepare


def deep_json(depth=100_000) -> bytes:
    return b"[" * depth + b"]" * depth


def bomb_json(path):
    return a_file(path, deep_json())


def laughs(key: bytes = b"steps", indent: bytes = b"") -> bytes:
    """A YAML "billion laughs": nine levels of nine aliases, 9^9 leaves in about 400 bytes,
    all under one valid key (``key``), so that nothing else refuses the file first."""
    levels = [b"&l0 [x, x, x, x, x, x, x, x, x]"] + [
        b"&l%d [" % i + b", ".join([b"*l%d" % (i - 1)] * 9) + b"]" for i in range(1, 9)]
    return indent + key + b": [" + b", ".join(levels) + b"]\n"


LAUGHS = laughs()
STUDY_LAUGHS = b"train:\n" + laughs(b"steps", b"  ") + b"grid:\n  - depth: [1]\n"
DEEP_YAML = b"steps: " + b"[" * 100_000 + b"]" * 100_000 + b"\n"
DEEP_TOML = b"steps = " + b"[" * 50_000 + b"]" * 50_000 + b"\n"
BIG_YAML = b"steps:\n" + b"- 1\n" * 600_000
LONG_VALUE = b"lr: " + b"x" * 500_000 + b"\n"


def png_bomb(w=12000, h=12000) -> bytes:
    """A real PNG of w x h black pixels: about 140 KB that decode to w h bytes."""
    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    c = zlib.compressobj(9)
    row = b"\0" * (w + 1)
    idat = b"".join(c.compress(row) for _ in range(h)) + c.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def npz_bomb() -> bytes:
    """An .npz of 200 KB whose images.npy member inflates to 200 MB."""
    buf, hdr = io.BytesIO(), io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": "|u1", "fortran_order": False,
                                               "shape": (200_000, 32, 32)})
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z, z.open("images.npy", "w") as f:
        f.write(hdr.getvalue())
        for _ in range(200):
            f.write(b"\0" * 1_024_000)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bombs")
    (root / "bomb.png").write_bytes(png_bomb())
    (root / "huge.png").write_bytes(png_bomb(20000, 20000))
    (root / "bomb.npz").write_bytes(npz_bomb())
    return root


def bomb_file(name, target):
    def prepare(ws, fx):
        (ws / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fx["bombs"] / name, ws / target)
    return prepare


def hold_lock(folder):
    """Hold ``folder``'s run lock (another open file description: the same as another process)
    for the rest of the case."""
    def prepare(ws, fx):
        (ws / folder).mkdir(parents=True, exist_ok=True)
        HELD.append(acquire(ws / folder / RUN_LOCK))
    return prepare


HELD: list = []

# ------------------------------------------------------------------------------------------------
# The cases
# ------------------------------------------------------------------------------------------------

V = ["--out", "o", "--quick", "--no-figures", "--jobs", "1"]
NAN = float("nan")

CHECKPOINT_SETTINGS = [  # class 1: a checkpoint's configuration, law and weights
    Case("verify", ["--ckpt", "run", *V], 2, "unknown prediction 'x0'",
         both(with_run, edit_json(f"{CKPT}.json", train_config("prediction", "x0")))),
    Case("verify", ["--ckpt", "run", *V], 2, "t_min must lie in (0, 1), got 5.0",
         both(with_run, edit_json(f"{CKPT}.json", train_config("t_min", 5.0)))),
    Case("verify", ["--ckpt", "run", *V], 2, "g(t) = nan",
         both(with_run, edit_json(f"{CKPT}.json", train_config("sde_options",
                                                               {"beta_max": -5})))),
    Case("verify", ["--ckpt", "run", *V], 2, "bad sde_options for vp",
         both(with_run, edit_json(f"{CKPT}.json", train_config("sde_options", {"nope": 1})))),
    Case("verify", ["--ckpt", "run", *V], 2, "bad sde_options for ve: float division by zero",
         both(with_run, edit_json(f"{CKPT}.json", train_config("sde", "ve")),
              edit_json(f"{CKPT}.json", train_config("sde_options", {"sigma_min": 0})))),
    Case("verify", ["--ckpt", "run", *V], 2, "T must be finite",
         both(with_run, edit_json(f"{CKPT}.json", train_config("sde_options", {"T": 1e-4})))),
    Case("verify", ["--ckpt", "run", *V], 2, "unknown sampler",
         both(with_run, edit_json(f"{CKPT}.json", train_config("sampler", "heun")))),
    Case("verify", ["--ckpt", "run", *V], 2, "lr must be float",
         both(with_run, edit_json(f"{CKPT}.json", train_config("lr", "abc")))),
    Case("verify", ["--ckpt", "run", *V], 2, "batch_size must be at least 1",
         both(with_run, edit_json(f"{CKPT}.json", train_config("batch_size", -3)))),
    Case("verify", ["--ckpt", "run", *V], 2, "holds no data law",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors", drop_law))),
    Case("verify", ["--ckpt", "run", *V], 2, "law.shape [1, 9, 9]",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors",
                                     set_tensor("law.shape", torch.tensor([1, 9, 9]))))),
    Case("verify", ["--ckpt", "run", *V], 2, "law.weights holds NaN",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors", set_tensor(
             "law.weights", lambda w: torch.where(torch.arange(len(w)) == 0, NAN, w))))),
    Case("verify", ["--ckpt", "run", *V], 2, "law.weights holds NaN or infinite",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors",
                                     set_tensor("law.weights", lambda w: w + float("inf"))))),
    Case("verify", ["--ckpt", "run", *V], 2, "law.weights must be positive and sum to 1",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors",
                                     set_tensor("law.weights", lambda w: w * 2)))),
    Case("verify", ["--ckpt", "run", *V], 2, "law.weights must be positive",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors",
                                     set_tensor("law.weights", negative_first)))),
    Case("verify", ["--ckpt", "run", *V], 2, "is not positive definite",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors",
                                     set_tensor("law.covs", lambda c: -c)))),
    Case("verify", ["--ckpt", "run", *V], 2, "law.covs must be symmetric",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors", set_tensor(
             "law.covs", lambda c: c + torch.triu(torch.ones_like(c), 1))))),
    Case("verify", ["--ckpt", "run", *V], 2, "law.classes must lie in 0..9",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors",
                                     set_tensor("law.classes", lambda k: k + 11)))),
    Case("verify", ["--ckpt", "run", *V], 2, "disagree on the number of components",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors",
                                     set_tensor("law.means", lambda m: m[:-1])))),
    Case("verify", ["--ckpt", "run", *V], 2, "law.means must have 2 dimension",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors",
                                     set_tensor("law.means", lambda m: m[0])))),
    Case("verify", ["--ckpt", "run", *V], 2, "law.weights is missing",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors",
                                     lambda t: t.pop("law.weights")))),
    Case("verify", ["--ckpt", "run", *V], 2, "stores a data law (law.*) but its data is",
         both(with_run, edit_tensors(f"{CKPT}.safetensors",
                                     set_tensor("law.weights", torch.ones(1))))),
    Case("verify", ["--ckpt", "run", *V], 2, "holds no data law",
         both(with_run, edit_json(f"{CKPT}.json", train_config("data", "digits-gmm")))),
    Case("verify", ["--ckpt", "run", *V], 2, "law.covs holds NaN or infinite",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors",
                                     set_tensor("law.covs", lambda c: c / 0.0)))),
    Case("verify", ["--ckpt", "run", *V], 2, "law.shape and law.classes must be integers",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors",
                                     set_tensor("law.shape", lambda k: k.double())))),
    Case("verify", ["--ckpt", "run", *V], 2, "unknown law tensor(s) law.extra",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors",
                                     set_tensor("law.extra", torch.zeros(1))))),
    Case("verify", ["--ckpt", "run", *V], 2, "law.weights must be positive and sum to 1",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors",
                                     set_tensor("law.weights", lambda w: w * 0)))),
    Case("verify", ["--ckpt", "run", *V], 2, "EMA weights are not finite",
         both(with_run, edit_tensors(f"{CKPT}.safetensors", set_tensor(
             "ema.final.linear.weight", lambda w: w * NAN)))),
    Case("verify", ["--ckpt", "run", *V], 2, "model_config depth = 100000 does not fit",
         both(with_run, edit_json(f"{CKPT}.json", model_config("depth", 100_000))), bomb=True),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.png"], 2,
         "model_config width = 10000000 does not fit",
         both(with_run, edit_json(f"{CKPT}.json", model_config("width", 10**7))), bomb=True),
    Case("verify", ["--ckpt", "run", *V], 2, "model_config mlp_ratio = inf does not fit",
         both(with_run, edit_json(f"{CKPT}.json", model_config("mlp_ratio", float("inf"))))),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.png"], 2, "ema weights are not finite",
         both(with_run, edit_tensors(f"{CKPT}.safetensors", set_tensor(
             "ema.final.linear.weight", lambda w: w * NAN)))),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--weights", "model", "--out", "x.png"], 2,
         "model weights are not finite",
         both(with_run, edit_tensors(f"{CKPT}.safetensors", set_tensor(
             "model.patch_embed.weight", lambda w: w + float("inf"))))),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.png"], 2, "law.weights holds NaN",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors",
                                     set_tensor("law.weights", lambda w: w * NAN)))),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.png"], 2, "holds no data law",
         both(with_gmm, edit_tensors(f"{CKPT}.safetensors", drop_law))),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.png"], 2, "t_min must lie in",
         both(with_run, edit_json(f"{CKPT}.json", train_config("t_min", 5.0)))),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.png"], 2, "g(t) = nan",
         both(with_run, edit_json(f"{CKPT}.json", train_config("sde_options",
                                                               {"beta_max": -5})))),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.png"], 2, "unknown prediction",
         both(with_run, edit_json(f"{CKPT}.json", train_config("prediction", "x0")))),
    Case("train", ["--resume", "run", "--steps", "3"], 2, "unknown prediction 'x0'",
         both(with_run, edit_json(f"{CKPT}.json", train_config("prediction", "x0")))),
    Case("train", ["--resume", "run", "--steps", "3"], 2, "g(t) = nan",
         both(with_run, edit_json(f"{CKPT}.json", train_config("sde_options",
                                                               {"beta_max": -5})))),
    Case("train", ["--resume", "run", "--steps", "3"], 2, "t_min must lie in",
         both(with_run, edit_json(f"{CKPT}.json", train_config("t_min", 5.0)))),
    Case("train", ["--out", "o", *TINY, "--sde-options", '{"beta_max": -5}'], 2, "g(t) = nan"),
]

BOMBS = [  # class 2: bounded in size, nesting, pixels and inflation; short error lines
    Case("train", ["--out", "o", "--config", "c.yaml", *TINY], 2, "aliases",
         a_file("c.yaml", LAUGHS), bomb=True),
    Case("train", ["--out", "o", "--config", "c.yaml", *TINY], 2, "nests deeper than 64",
         a_file("c.yaml", DEEP_YAML), bomb=True),
    Case("train", ["--out", "o", "--config", "c.toml", *TINY], 2, "nests deeper than 64",
         a_file("c.toml", DEEP_TOML), bomb=True),
    Case("train", ["--out", "o", "--config", "c.yaml", *TINY], 2, "larger than 1048576 bytes",
         a_file("c.yaml", BIG_YAML), bomb=True),
    Case("train", ["--out", "o", "--config", "c.yaml", *TINY], 2, "(500002 characters)",
         a_file("c.yaml", LONG_VALUE), bomb=True, max_line=200),
    Case("train", ["--out", "o", *TINY, "--sde-options", deep_json(50_000).decode()], 2,
         "nests deeper than 64", bomb=True),
    Case("train", ["--out", "o", *TINY, "--model-option", "depth=" + deep_json(50_000).decode()],
         2, "nests deeper than 64", bomb=True),
    Case("train", ["--out", "o", *TINY, "--lr", "9" * 100_000], 2, "lr must be a positive",
         bomb=True, max_line=200),
    Case("train", ["--out", "o", *TINY, "--data", "imgs"], 2, "no readable PNG/JPEG",
         bomb_file("bomb.png", "imgs/bomb.png"), warnings=1, bomb=True),
    Case("train", ["--out", "o", *TINY, "--data", "imgs"], 2, "no readable PNG/JPEG",
         bomb_file("huge.png", "imgs/huge.png"), warnings=1, bomb=True),
    Case("train", ["--out", "o", *TINY, "--data", "bomb.npz"], 2, "decompression bomb",
         bomb_file("bomb.npz", "bomb.npz"), bomb=True),
    Case("train", ["--resume", "run", "--steps", "3"], 2, "no intact checkpoint",
         both(with_run, bomb_json(f"{CKPT}.json"), bomb_json("run/ckpt-00000001.json")),
         bomb=True),
    Case("verify", ["--ckpt", "run", *V], 2, "nests deeper than 64",
         both(with_run, bomb_json(f"{CKPT}.json")), bomb=True),
    Case("verify", ["--ckpt", f"{CKPT}.json", *V], 2, "nests deeper than 64",
         both(with_run, bomb_json(f"{CKPT}.json")), bomb=True),
    Case("verify", ["--out", "o", "--only", "C1", "--depth", "16"], 2,
         "report.json that verify did not write", bomb_json("o/report.json"), bomb=True),
    Case("verify", ["--out", "o", "--only", "C1", "--depth", "16", "--json", "r.json"], 2,
         "is not a verify report", bomb_json("r.json"), bomb=True),
    Case("sample", ["--ckpt", f"{CKPT}.json", *SAMPLE, "--out", "x.png"], 2,
         "nests deeper than 64", both(with_run, bomb_json(f"{CKPT}.json")), bomb=True),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.png"], 2, "no intact checkpoint",
         both(with_run, bomb_json(f"{CKPT}.json"), bomb_json("run/ckpt-00000001.json")),
         bomb=True),
    Case("study", ["--file", "s.yaml", "--out", "o"], 2, "aliases",
         a_file("s.yaml", STUDY_LAUGHS), bomb=True),
    Case("study", ["--file", "s.toml", "--out", "o"], 2, "nests deeper than 64",
         a_file("s.toml", DEEP_TOML), bomb=True),
    Case("study", ["--file", "s.yaml", "--out", "o"], 2, "larger than 1048576 bytes",
         a_file("s.yaml", BIG_YAML), bomb=True),
    Case("study", ["--file", "s.yaml", "--out", "o"], 2, "nests deeper than 64",
         a_file("s.yaml", DEEP_YAML), bomb=True),
    Case("study", ["--file", "s.yaml", "--out", "o"], 2, "aliases",
         a_file("s.yaml", b"base: &b {lr: 0.1}\ntrain:\n  <<: *b\n"), bomb=True),
    Case("study", ["--file", "study.toml", "--out", "s"], 2, "report.json that study did not "
         "write", both(with_study, bomb_json("s/report.json")), bomb=True),
    Case("study", ["--file", "study.toml", "--out", "s", "--json", "r.json"], 2,
         "is not a study report", both(with_study, bomb_json("r.json")), bomb=True),
    Case("study", ["--file", "study.toml", "--out", "s", "--set", "lr=" + "x" * 100_000], 2,
         "(100002 characters)", with_study, bomb=True, max_line=200),
]

LOCKS_AND_PLANS = [  # classes 3 and 4: one writer per run folder; a study's own runs and files
    Case("train", ["--resume", "run", "--steps", "3"], 2, f"is in use by process {os.getpid()}@",
         both(with_run, hold_lock("run"))),
    Case("train", ["--out", "new", *TINY], 2, f"is in use by process {os.getpid()}@",
         hold_lock("new")),
    Case("study", ["--file", "study.toml", "--out", "s"], 2, "lr 0.5 (the plan: 0.001)",
         both(with_study, study_ckpt(train_config("lr", 0.5)))),
    Case("study", ["--file", "study.toml", "--out", "s"], 2, "batch_size 4 (the plan: 8)",
         both(with_study, study_ckpt(train_config("batch_size", 4)))),
    Case("study", ["--file", "study.toml", "--out", "s"], 2, "prediction 'v' (the plan: 'eps')",
         both(with_study, study_ckpt(train_config("prediction", "v")))),
    Case("study", ["--file", "study.toml", "--out", "s"], 2, "stores settings that are not",
         both(with_study, study_ckpt(train_config("sde_options", {"beta_max": 5})))),
    Case("study", ["--file", "study.toml", "--out", "s", "--json", "mine.json"], 2,
         "is not a study report", both(with_study, a_file("mine.json", b'{"my": "data"}'))),
    Case("study", ["--file", "study.toml", "--out", "s", "--json", "."], 2, "is a folder",
         with_study),
    Case("study", ["--file", "study.toml", "--out", "s", "--json", "no/such.json"], 2,
         "does not exist", with_study),
    Case("study", ["--file", "study.toml", "--out", "s"], 2, "holds a runs.csv that no study",
         both(with_study, a_file("s/runs.csv", b"my,table\n"))),
    Case("study", ["--file", "study.toml", "--out", "s"], 2,
         "holds a depth-scaling.png that study did not draw",
         both(with_study, a_file("s/depth-scaling.png", b"\x89PNG my own figure"))),
    Case("study", ["--file", "study.toml", "--out", "."], 2,
         "report.json that study did not write", both(with_study, a_file("report.json",
                                                                         b"[1, 2]"))),
]

SMALLER = [  # class 5
    Case("verify", ["--ckpt", "run", "--depth", "2", *V], 2, "cannot be given with --ckpt",
         with_run),
    Case("verify", ["--ckpt", "run", "--depth", "256", *V], 2, "--depth cannot be given",
         with_run),
    Case("verify", ["--ckpt", "run", "--dtype", "float32", *V], 2, "--dtype cannot be given",
         with_run),
    Case("verify", ["--ckpt", "run", "--schedule", "plain", *V], 2, "--schedule cannot be",
         with_run),
    Case("verify", ["--ckpt", "run", *V], 2, "the model is unusable with it",
         both(with_run, edit_tensors(f"{CKPT}.safetensors", set_tensor(
             "ema.final.linear.bias", lambda b: b + 1e36)))),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.png"], 2,
         "the model is unusable with it",
         both(with_run, edit_tensors(f"{CKPT}.safetensors", set_tensor(
             "ema.final.linear.bias", lambda b: b + 1e36)))),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.png", "--sampler", "pf-ode"], 2,
         "the model is unusable with it",
         both(with_run, edit_tensors(f"{CKPT}.safetensors", set_tensor(
             "ema.final.linear.bias", lambda b: b + 1e36)))),
]

OK = [  # hostile files that a command gets past, as promised
    Case("train", ["--resume", "run", "--steps", "3", "--no-progress"], 0,
         "resuming from the newest intact one, ckpt-00000001.json",
         both(with_run, bomb_json(f"{CKPT}.json")), writes=("run",), warnings=1, bomb=True),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.png"], 0, "ckpt-00000001.json",
         both(with_run, bomb_json(f"{CKPT}.json")), writes=("x.png",), warnings=1, bomb=True),
    Case("train", ["--out", "o", *TINY, "--data", "imgs", "--image-size", "8", "--batch-size",
                   "1"], 0,
         "skipping unreadable image 'imgs/bomb.png'",
         both(bomb_file("bomb.png", "imgs/bomb.png"),
              lambda ws, fx: shutil.copy(fx["bombs"] / "ok.png", ws / "imgs" / "ok.png")),
         writes=("o",), warnings=1, bomb=True),
    Case("train", ["--resume", "run", "--steps", "3", "--no-progress"], 0, "",
         both(with_run, a_file(f"run/{RUN_LOCK}", b"12345@elsewhere\n")),
         writes=("run",)),  # a lock file left by a killed run is taken at once
]

ALL = CHECKPOINT_SETTINGS + BOMBS + LOCKS_AND_PLANS + SMALLER + OK


def case_id(case: Case) -> str:
    text = " ".join(a for a in case.argv if a not in TINY + SAMPLE + V)
    return f"{case.command}:{text[:50]}"


@pytest.fixture
def ok_png(bombs):
    from PIL import Image

    Image.new("L", (8, 8), 128).save(bombs / "ok.png")


def peak_rss_reset() -> bool:
    """Reset this process's resident high-water mark (Linux); whether it could be."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@pytest.mark.parametrize("case", ALL, ids=[f"{i}-{case_id(c)}" for i, c in enumerate(ALL)])
def test_each_hostile_file_is_one_line_an_exit_code_bounded_and_no_lost_file(
        case, request, tmp_path, monkeypatch, capsys, ok_png):
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    monkeypatch.syspath_prepend(str(ws))
    monkeypatch.setenv("RDM_MARK", str(tmp_path / "imported"))
    threads = torch.get_num_threads()
    fx = Fixtures(request)
    fx["bombs"] = request.getfixturevalue("bombs")
    try:
        if case.prepare is not None:
            case.prepare(ws, fx)
        before = tree(ws)
        capsys.readouterr()
        measured = peak_rss_reset()
        rss = status_kb("VmRSS")
        began = time.process_time()
        code = COMMANDS[case.command](case.argv)
        seconds = time.process_time() - began
        peak_mb = (status_kb("VmHWM") - rss) / 1024
    finally:
        while HELD:
            HELD.pop().release()
        torch.set_num_threads(threads)  # a study sets its share of the cores
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == case.code, err[:2000]
    assert "Traceback" not in err and "Traceback" not in out
    if case.code != 0:
        lines = [x for x in lines if not x.startswith("study")]  # the study's progress lines
        assert len(lines) == 1 + case.warnings, err[:2000]
        assert lines[-1].startswith(f"python -m rdm_dynamics.{case.command}: error: "), err
        assert len(lines[-1]) <= case.max_line, lines[-1][:300]
    else:
        assert len(lines) <= case.warnings, err[:2000]
    assert case.words in err, err[:2000]
    assert not (tmp_path / "imported").exists()
    after = tree(ws)
    kept = {k: v for k, v in before.items() if not k.startswith(case.writes or ("\0",))}
    assert {k: after.get(k) for k in kept} == kept, "a user's file changed"
    if case.code != 0:
        assert after == before, "a refused command wrote something"
    if case.bomb:
        assert seconds < SECONDS or case.code == 0, f"{seconds:.1f} s"
        assert not measured or peak_mb < MEGABYTES, f"{peak_mb:.0f} MB"


def test_the_bounds_are_measured_here():
    """The memory bound is asserted only where the high-water mark can be reset: here it can."""
    assert peak_rss_reset()


def test_the_count():
    assert len(ALL) >= 70


def test_a_cached_subject_is_never_one_of_another_or_older_file(trained, tmp_path,  # noqa: F811
                                                                 monkeypatch):
    """verify --ckpt caches the loaded model per process: keyed by the file itself, so two
    folders named alike (or a file rewritten) never share a subject."""
    from rdm_dynamics.checks.trained_subject import CheckpointConfig, load_subject

    for name, t_min in (("a", 0.001), ("b", 0.002)):
        shutil.copytree(trained, tmp_path / name / "run")
        edit_json(f"{name}/{CKPT}.json", train_config("t_min", t_min))(tmp_path, {})
    seen = []
    for name in ("a", "b", "a"):
        monkeypatch.chdir(tmp_path / name)
        seen.append(load_subject(CheckpointConfig("run")).t_min)
    assert seen == [0.001, 0.002, 0.001]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(alphabet='[]{}"\\ab,:'),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(alphabet='[]{}"\\k', max_size=3), inner, max_size=3),
    max_leaves=30)


@given(JSON_VALUES)
def test_the_depth_read_from_json_text_is_the_depth_of_the_parsed_value(value):
    """Brackets inside strings (escaped quotes and backslashes included) do not count."""
    from rdm_dynamics.limits import json_text_depth, nesting_depth

    text = json.dumps(value)
    assert json_text_depth(text) == nesting_depth(value)
    assert json_text_depth(json.dumps(value, indent=2)) == nesting_depth(value)


def test_wide_and_deep_json_at_the_size_limit_is_bounded():
    """The widest JSON the size limit lets through (millions of empty containers) parses in
    bounded time and memory; one level past the nesting limit is refused."""
    from rdm_dynamics.limits import MAX_JSON_BYTES, MAX_NESTING, FileLimitError, loads_json

    wide = "[" + "[]," * (MAX_JSON_BYTES // 3 - 1) + "0]"
    measured = peak_rss_reset()
    rss, began = status_kb("VmRSS"), time.process_time()
    assert len(loads_json(wide)) == MAX_JSON_BYTES // 3
    seconds, peak_mb = time.process_time() - began, (status_kb("VmHWM") - rss) / 1024
    assert seconds < SECONDS and (not measured or peak_mb < MEGABYTES), (seconds, peak_mb)
    assert loads_json("[" * MAX_NESTING + "]" * MAX_NESTING)
    with pytest.raises(FileLimitError):
        loads_json("[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1))
