"""Bad input, faults, interrupts and stale state against verify, train and sample, table-driven.

Every case of a table runs the real command (``main(argv)`` in this process, or a subprocess
where the process matters: Ctrl-C, imports) in a workspace of its own and asserts the exit code,
that stderr is one line (a warning line where the case says so), that no traceback escaped, and
that no file of the user's changed (the workspace tree is hashed before and after; a case lists
the files the command may write).  The trained runs are tiny (one block of width 32, two steps)
and shared by the module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from rdm_dynamics import sample as sample_cli
from rdm_dynamics import train as train_cli
from rdm_dynamics import verify as verify_cli
from rdm_dynamics.training.checkpoint import find_checkpoints, load_checkpoint
from rdm_dynamics.training.loop import train
from rdm_dynamics.training.settings import TrainConfig

TINY = ["--model-option", "depth=1", "--model-option", "width=32", "--model-option", "heads=2",
        "--no-progress", "--device", "cpu", "--steps", "2", "--batch-size", "8",
        "--n-samples", "2", "--sample-steps", "2", "--warmup", "0"]
SAMPLE = ["--n", "2", "--steps", "2", "--sampler", "ddpm", "--no-progress"]
UNWRITABLE = "/proc/rdm-robust-test"  # /proc refuses new entries, even to root
COMMANDS = {"verify": verify_cli.main, "train": train_cli.main, "sample": sample_cli.main}
# a module that leaves a mark when imported: no file the user opens may import it
EVIL = "import pathlib, os\npathlib.Path(os.environ['RDM_MARK']).write_text('imported')\n" \
       "def build(*a, **k):\n    raise SystemExit('built')\n"


def tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root (folders as 'dir')."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else \
            hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def tiny_config(out: Path, **kw) -> TrainConfig:
    base = dict(model="RDM-DiT-T/2", model_options={"depth": 1, "width": 32, "heads": 2},
                steps=2, batch_size=8, warmup=0, ckpt_every=1, keep=3, n_samples=2,
                sample_steps=2, progress=False, out=str(out), device="cpu")
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run with checkpoints at steps 1 and 2 (copied into each case's workspace)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train(tiny_config(out))
    return out


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> Path:
    """A verify report folder (C1 at a small depth, with its figure)."""
    out = tmp_path_factory.mktemp("reported") / "report"
    assert verify_cli.main(["--only", "C1", "--depth", "16", "--quick", "--out", str(out)]) == 0
    return out


# ------------------------------------------------------------------------------------------------
# Workspace preparations: each takes the workspace (the current folder) and the shared fixtures
# ------------------------------------------------------------------------------------------------

def with_run(ws, fx):
    shutil.copytree(fx["trained"], ws / "run")


def with_report(ws, fx):
    shutil.copytree(fx["reported"], ws / "report")


def a_file(name, data=b"user's bytes"):
    def prepare(ws, fx):
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        (ws / name).write_bytes(data)
    return prepare


def both(*steps):
    def prepare(ws, fx):
        for step in steps:
            step(ws, fx)
    return prepare


def edit_json(path, change):
    """Rewrite a checkpoint JSON of the copied run with ``change(meta)``."""
    def prepare(ws, fx):
        p = ws / path
        meta = json.loads(p.read_text())
        change(meta)
        p.write_text(json.dumps(meta))
    return prepare


def set_key(key, value):
    def change(meta):
        meta[key] = value
    return change


def set_factory(meta):
    meta["train_config"]["model_factory"] = "evil:build"


def truncate(path):
    def prepare(ws, fx):
        p = ws / path
        p.write_bytes(p.read_bytes()[:100])
    return prepare


def evil_module(ws, fx):
    (ws / "evil.py").write_text(EVIL)


def readonly_dir(ws, fx):
    (ws / "locked").mkdir()
    os.chmod(ws / "locked", 0o500)


# ------------------------------------------------------------------------------------------------
# The cases
# ------------------------------------------------------------------------------------------------

@dataclass
class Case:
    command: str
    argv: list
    code: int
    words: str  # in stderr's error line
    prepare: object = None
    writes: tuple = ()  # files the command may create or change (relative to the workspace)
    warnings: int = 0  # warning/note lines allowed before the last line
    env: dict = field(default_factory=dict)
    check: object = None  # check(workspace) after the run


VERIFY = [
    Case("verify", ["--depth", "2"], 2, "the smallest that works is 32"),
    Case("verify", ["--depth", "1", "--only", "C1"], 2, "the smallest that works is 4"),
    Case("verify", ["--depth", "34"], 2, "too few to fit an order"),
    Case("verify", ["--depth", str(2**40)], 2, "is above 65536"),
    Case("verify", ["--depth", "1e3"], 2, "--depth must be an integer"),
    Case("verify", ["--seed", str(2**70)], 2, "--seed must be at most"),
    Case("verify", ["--seed", "-1"], 2, "--seed must be at least 0"),
    Case("verify", ["--threads", "100000"], 2, "--threads must be at most"),
    Case("verify", ["--only", ","], 2, "names no check"),
    Case("verify", ["--only", "C99"], 2, "unknown check"),
    Case("verify", ["--dtype", "bfloat16"], 2, "unknown --dtype"),
    Case("verify", ["--schedule", "wild"], 2, "unknown schedule"),
    Case("verify", ["--device", "cuda:7"], 2, "--device"),
    Case("verify", ["--out", "a_file"], 2, "is a file", a_file("a_file")),
    Case("verify", ["--out", "a_file/sub"], 2, "cannot be written", a_file("a_file")),
    Case("verify", ["--out", UNWRITABLE], 2, "cannot be written"),
    Case("verify", ["--out", "o", "--json", "mine.json"], 2, "is not a verify report",
         a_file("mine.json", b'{"my": "data"}')),
    Case("verify", ["--out", "o", "--json", "."], 2, "is a folder"),
    Case("verify", ["--out", "o", "--json", "no/such/r.json"], 2, "does not exist"),
    Case("verify", ["--out", "."], 2, "report.json that verify did not write",
         a_file("report.json", b"[1, 2]")),
    Case("verify", ["--out", "o", "--only", "C2", "--quick"], 2,
         "holds a pf-ode.png that verify did not draw", a_file("o/pf-ode.png", b"my picture")),
    Case("verify", ["--out", "report", "--only", "C1", "--depth", "2"], 2, "too small",
         with_report),
]

TRAIN = [
    Case("train", ["--out", "a_file", *TINY], 2, "is a file, not a folder", a_file("a_file")),
    Case("train", ["--out", "a_file/run", *TINY], 2, "a_file", a_file("a_file")),
    Case("train", ["--out", UNWRITABLE, *TINY], 2, "cannot be written"),
    Case("train", ["--out", "mine", *TINY], 2, "holds log.jsonl but no checkpoint",
         a_file("mine/log.jsonl", b'{"step": 1, "loss": 0.5}\n')),
    Case("train", ["--out", "mine", *TINY], 2, "holds samples", a_file("mine/samples/x.png")),
    Case("train", ["--out", "run", *TINY], 2, "already holds a run", with_run),
    Case("train", ["--out", "o", "--config", "c.yaml", *TINY], 2, "not UTF-8",
         a_file("c.yaml", b"steps: 2\nlr: \xff\xfe\n")),
    Case("train", ["--out", "o", "--config", "c.yaml", *TINY], 2, "must hold a mapping",
         a_file("c.yaml", b"- 1\n- 2\n")),
    Case("train", ["--out", "o", "--config", "c.yaml", *TINY], 2, "taken only from the command",
         both(evil_module, a_file("c.yaml", b"model_factory: evil:build\n"))),
    Case("train", ["--out", "o", "--config", "c.json", *TINY], 2, "must end in .yaml",
         a_file("c.json", b"{}")),
    Case("train", ["--out", "o", "--config", ".", *TINY], 2, "does not exist"),
    Case("train", ["--out", "o", *TINY, "--image-size", "100000"], 2,
         "image_size must lie in [1, 1024]"),
    Case("train", ["--out", "o", *TINY, "--frames", "100000"], 2, "frames must lie in"),
    Case("train", ["--out", "o", *TINY, "--seed", str(2**70)], 2, "seed must lie in"),
    Case("train", ["--out", "o", *TINY, "--guidance", "-1"], 2, "guidance must be non-negative"),
    Case("train", ["--out", "o", *TINY, "--lr", "nan"], 2, "lr must be a positive"),
    Case("train", ["--out", "o", *TINY, "--sde-options", "[1]"], 2, "sde_options must be dict"),
    Case("train", ["--out", "o", *TINY, "--data", "bad.npz"], 2, "cannot read array file",
         a_file("bad.npz", b"PK\x03\x04 not really a zip")),
    Case("train", ["--out", "o", *TINY, "--data", "bad.npy"], 2, "bad.npy",
         a_file("bad.npy", b"\x93NUMPY garbage")),
    Case("train", ["--out", "o", *TINY, "--data", "empty"], 2, "empty",
         lambda ws, fx: (ws / "empty").mkdir()),
    Case("train", ["--out", "o", *TINY], 2, "not divisible by the 3 processes",
         env={"WORLD_SIZE": "3", "RANK": "0"}),
    Case("train", ["--resume", "nowhere"], 2, "no checkpoint in 'nowhere'"),
    Case("train", ["--resume", "run", "--out", "elsewhere"], 2, "name two folders", with_run),
    Case("train", ["--resume", "run", "--lr", "0.5"], 2, "cannot change lr", with_run),
    Case("train", ["--resume", "run"], 2, "name it to resume (--model-factory evil:build)",
         both(with_run, evil_module, edit_json("run/ckpt-00000002.json", set_factory),
              edit_json("run/ckpt-00000001.json", set_factory))),
    Case("train", ["--resume", "run"], 2, "no intact checkpoint",
         both(with_run, edit_json("run/ckpt-00000002.json", set_key("train_config", [1, 2])),
              truncate("run/ckpt-00000001.safetensors"))),
]

SAMPLE_CASES = [
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "mine.png"], 2, "exists",
         both(with_run, a_file("mine.png"))),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "."], 2, "is a folder", with_run),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", f"{UNWRITABLE}/x.png"], 2,
         "folder does not exist", with_run),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "locked/x.png"], 2, "cannot be written",
         both(with_run, readonly_dir)) if os.geteuid() != 0 else
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.bmp"], 2, "not .bmp", with_run),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.mp4"], 2, "images are written as",
         with_run),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.png", "--npz", "."], 2,
         "must end in .npz", with_run),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.png", "--npz", "d.npz"], 2,
         "is a folder", both(with_run, lambda ws, fx: (ws / "d.npz").mkdir())),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.png", "--npz", "mine.npz"], 2,
         "exists", both(with_run, a_file("mine.npz"))),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.png", "--npz",
                    f"{UNWRITABLE}/s.npz"], 2, "folder does not exist", with_run),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--seed", str(2**70)], 2,
         "--seed must be at most", with_run),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--guidance", "-1"], 2,
         "--guidance must be at least 0", with_run),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--guidance", "nan"], 2, "finite", with_run),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--rtol", "0"], 2, "--rtol must be positive",
         with_run),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--n", str(10**12)], 2, "--n must be at most",
         with_run),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--batch-size", "0"], 2, "at least 1", with_run),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--label", "-1"], 2, "at least 0", with_run),
    Case("sample", ["--ckpt", "run", *SAMPLE, "--label", "10"], 2, "--label must be a class",
         with_run),
    Case("sample", ["--ckpt", "run/ckpt-00000002.json", *SAMPLE], 2, "not a mapping",
         both(with_run, edit_json("run/ckpt-00000002.json", set_key("train_config", "x")))),
    Case("sample", ["--ckpt", "run/ckpt-00000002.safetensors", *SAMPLE], 2, "cannot read",
         both(with_run, truncate("run/ckpt-00000002.safetensors"))),
    Case("sample", ["--ckpt", "run/ckpt-00000002.json", *SAMPLE], 2, "cannot read",
         both(with_run, a_file("run/ckpt-00000002.json", b"{\xff"))),
    Case("sample", ["--ckpt", "run", *SAMPLE], 2, "--model-factory evil:build",
         both(with_run, evil_module, edit_json("run/ckpt-00000002.json", set_factory))),
    Case("sample", ["--ckpt", "nowhere", *SAMPLE], 2, "does not exist"),
    Case("sample", ["--ckpt", "a_file", *SAMPLE], 2, "a_file", a_file("a_file")),
]

# Cases that succeed: what they write is listed, and checked
OK_CASES = [
    # a run folder is movable: resume writes only where it found the checkpoint
    Case("train", ["--resume", "moved", "--steps", "3", "--no-progress"], 0, "",
         lambda ws, fx: shutil.copytree(fx["trained"], ws / "moved"), writes=("moved",),
         check=lambda ws: load_checkpoint(ws / "moved").step == 3),
    # the newest checkpoint is corrupt: fall back, with a warning, to the newest intact one
    Case("train", ["--resume", "run", "--steps", "3", "--no-progress"], 0,
         "resuming from the newest intact one, ckpt-00000001.json",
         both(with_run, truncate("run/ckpt-00000002.safetensors")), writes=("run",),
         warnings=1, check=lambda ws: load_checkpoint(ws / "run").step == 3),
    # hidden temporary files of killed checkpoint writes are removed, nothing else is
    Case("train", ["--resume", "run", "--steps", "3", "--no-progress"], 0, "",
         both(with_run, a_file("run/.ckpt-00000003.safetensors.abcd_123.tmp"),
              a_file("run/.mine.tmp")), writes=("run",),
         check=lambda ws: not (ws / "run/.ckpt-00000003.safetensors.abcd_123.tmp").exists()
         and (ws / "run/.mine.tmp").exists()),
    # the default output goes into the run folder, beside (never over) an earlier one
    Case("sample", ["--ckpt", "run", *SAMPLE], 0, "", both(
        with_run, a_file("run/samples/sample-step00000002-ddpm-seed0.png")),
         writes=("run/samples/sample-step00000002-ddpm-seed0-2.png",),
         check=lambda ws: (ws / "run/samples/sample-step00000002-ddpm-seed0-2.png").is_file()),
    # the format asked for is the format written
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.jpg"], 0, "", with_run,
         writes=("x.jpg",), check=lambda ws: Image.open(ws / "x.jpg").format == "JPEG"),
    # the newest checkpoint of the folder is corrupt: sample the newest intact one
    Case("sample", ["--ckpt", "run", *SAMPLE, "--out", "x.png"], 0, "ckpt-00000001.json",
         both(with_run, truncate("run/ckpt-00000002.safetensors")), writes=("x.png",),
         warnings=1),
    # an unconditional guidance scale is explained, not silently ignored... and guidance 0 works
    Case("sample", ["--ckpt", "run", *SAMPLE, "--guidance", "0", "--out", "g.png"], 0, "",
         with_run, writes=("g.png",)),
]

OK_CASES.append(Case("train", ["--out", "new", *TINY], 0, "", writes=("new",),
                     check=lambda ws: (ws / "new/samples/step-00000002.png").is_file()))

ALL = VERIFY + TRAIN + SAMPLE_CASES + OK_CASES


def case_id(case: Case) -> str:
    return f"{case.command}:{' '.join(a for a in case.argv if a not in TINY + SAMPLE)[:60]}"


class Fixtures(dict):
    """The shared runs, built only when a case asks for them."""

    def __init__(self, request):
        super().__init__()
        self.request = request

    def __missing__(self, name):
        self[name] = self.request.getfixturevalue(name)
        return self[name]


@pytest.mark.parametrize("case", ALL, ids=[f"{i}-{case_id(c)}" for i, c in enumerate(ALL)])
def test_each_case_is_one_line_an_exit_code_and_no_lost_file(case, request, tmp_path,
                                                             monkeypatch, capsys):
    ws = tmp_path / "ws"
    ws.mkdir()
    mark = tmp_path / "imported"
    monkeypatch.chdir(ws)
    monkeypatch.syspath_prepend(str(ws))
    monkeypatch.setenv("RDM_MARK", str(mark))
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    fx = Fixtures(request)
    if case.prepare is not None:
        case.prepare(ws, fx)
    before, shared = tree(ws), {name: tree(path) for name, path in fx.items()}
    code = COMMANDS[case.command](case.argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == case.code, err
    assert "Traceback" not in err and "Traceback" not in out
    if case.code != 0:
        assert len(lines) == 1 + case.warnings, err
        assert lines[-1].startswith(f"python -m rdm_dynamics.{case.command}: error: "), err
    else:
        assert len(lines) <= case.warnings, err
    assert case.words in err, err
    assert not mark.exists(), "a file the user opened caused an import"
    after = tree(ws)
    kept = {k: v for k, v in before.items() if not k.startswith(case.writes or ("\0",))}
    assert {k: after.get(k) for k in kept} == kept, "a user's file changed"
    if case.code != 0:
        assert after == before, "a refused command wrote something"
    assert {name: tree(fx[name]) for name in shared} == shared, \
        "wrote outside the folder it was given"
    if case.check is not None:
        assert case.check(ws)


# ------------------------------------------------------------------------------------------------
# Faults inside the toolkit, interrupts and stale state
# ------------------------------------------------------------------------------------------------

def test_a_crash_inside_a_check_is_a_toolkit_error_not_a_failed_claim(tmp_path, monkeypatch,
                                                                     capsys):
    from rdm_dynamics.checks import registry

    module = registry()["depth-limit"]

    def crash(config):
        raise MemoryError("planted")

    monkeypatch.setattr(module, "measure", crash)
    code = verify_cli.main(["--only", "C1", "--depth", "8", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and "crashed" in err[0] and "planted" in err[0]
    report = json.loads((tmp_path / "report.json").read_text())
    check = report["checks"][0]
    assert report["status"] == "error" and report["passed"] is False
    assert check["status"] == "error" and check["error"] == "MemoryError: planted"
    assert check["expected"] == {} and check["metrics"] == {}  # no rule was applied
    assert "Traceback" in check["traceback"]


def test_ctrl_c_in_verify_is_one_line_exit_130_and_keeps_the_previous_report(reported, tmp_path,
                                                                             monkeypatch, capsys):
    from rdm_dynamics.checks import registry

    out = tmp_path / "report"
    shutil.copytree(reported, out)
    before = tree(out)

    def interrupt(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(registry()["depth-limit"], "measure", interrupt)
    code = verify_cli.main(["--only", "C1", "--depth", "8", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(err) == 1 and "left as it was" in err[0], err
    assert tree(out) == before


def test_no_figures_into_a_folder_of_an_earlier_run_leaves_no_stale_figure(reported, tmp_path,
                                                                          capsys):
    out = tmp_path / "report"
    shutil.copytree(reported, out)
    (out / "mine.png").write_bytes(b"the user's")
    assert (out / "depth-limit.png").is_file()
    code = verify_cli.main(["--only", "C1", "--depth", "16", "--quick", "--no-figures",
                            "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["figures"] == [] and not (out / "depth-limit.png").exists()
    assert (out / "mine.png").read_bytes() == b"the user's"
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == str(out / "report.json")  # a path on a line of its own
    assert max(map(len, printed[:-1])) <= 100, printed


def test_ctrl_c_in_train_names_the_checkpoint_a_resume_starts_from(trained, tmp_path,
                                                                   monkeypatch, capsys):
    from rdm_dynamics.training import loop

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    real = loop.train_step

    def step(run_, net, k, *a):
        if k == 3:
            raise KeyboardInterrupt
        return real(run_, net, k, *a)

    monkeypatch.setattr(loop, "train_step", step)
    code = train_cli.main(["--resume", str(run), "--steps", "9", "--ckpt-every", "1",
                           "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(err) == 1, err
    assert f"--resume {run} will start from {run / 'ckpt-00000003.json'}" in err[0], err
    assert load_checkpoint(run).step == 3


def test_the_other_ranks_of_a_job_say_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert train_cli.main(["--out", str(tmp_path / "o"), *TINY, "--batch-size", "5"]) == 2
    assert capsys.readouterr().err == ""


def run_process(args, cwd, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})}, **kw)


@pytest.mark.heavy
def test_real_processes_ctrl_c_and_no_import_from_a_checkpoint(trained, tmp_path):
    """Ctrl-C (SIGINT) as a terminal sends it, and an evil factory named in a checkpoint, in
    real processes: one line each, exit 130 / 2, nothing imported."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (tmp_path / "evil.py").write_text(EVIL)
    mark = tmp_path / "imported"
    evil = tmp_path / "evil_run"
    shutil.copytree(trained, evil)
    for ckpt in find_checkpoints(evil):
        meta = json.loads(ckpt.read_text())
        meta["train_config"]["model_factory"] = "evil:build"
        ckpt.write_text(json.dumps(meta))
    env = {"PYTHONPATH": str(tmp_path), "RDM_MARK": str(mark)}
    refused = run_process(["rdm_dynamics.train", "--resume", str(evil)], tmp_path, env)
    long_run = run_process(["rdm_dynamics.train", "--resume", str(run), "--steps", "100000",
                            "--ckpt-every", "1", "--no-progress"], tmp_path, env)
    try:
        while load_step(run) < 3 and long_run.poll() is None:  # training, a step at a time
            time.sleep(0.2)
        assert long_run.poll() is None and load_step(run) >= 3, "the resumed run did not train"
        long_run.send_signal(signal.SIGINT)
        _, err = long_run.communicate(timeout=60)
    finally:
        long_run.kill()
    lines = err.strip().splitlines()
    assert long_run.returncode == 130 and len(lines) == 1 and "will start from" in lines[0], err
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and not mark.exists()


def load_step(run: Path) -> int:
    found = find_checkpoints(run)
    return int(found[-1].stem.split("-")[1]) if found else 0


# ------------------------------------------------------------------------------------------------
# Help texts
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module", [verify_cli, sample_cli, None], ids=["verify", "sample",
                                                                         "train"])
def test_every_flag_of_every_command_has_a_help_text(module):
    from rdm_dynamics.models import MODEL_CONFIGS
    from rdm_dynamics.training.settings import build_parser

    parser = module.build_parser() if module is not None else build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
        assert action.help.count("default") <= 1 or "(default" not in action.help[:-20], \
            action.help
    if module is None:
        text = next(a.help for a in parser._actions if "--model" in a.option_strings)
        assert all(name in text for name in MODEL_CONFIGS), text


def test_the_count():
    """The note's count: every case of the tables above is a case tried."""
    assert len(ALL) >= 75


def test_a_long_verify_run_prints_its_estimate_first(tmp_path, monkeypatch, capsys):
    from rdm_dynamics.checks import registry

    checks = registry()
    serial = verify_cli.estimated_seconds(4096, False, checks, len(checks))
    assert serial > verify_cli.ANNOUNCE_SECONDS
    # two workers: the longest-first schedule of the checks' COSTs, between 1/2 and 1 of serial
    assert serial / 2 <= verify_cli.estimated_seconds(4096, False, checks, len(checks), 2) < serial
    monkeypatch.setattr(verify_cli, "ANNOUNCE_SECONDS", 0.0)
    assert verify_cli.main(["--only", "C1", "--depth", "16", "--quick", "--no-figures",
                            "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "depth 16: estimated" in err[0], err


def test_grids_caption_every_cell_with_its_class_and_the_summary_names_the_grid(tmp_path,
                                                                                capsys):
    out = tmp_path / "run"
    assert train_cli.main(["--out", str(out), *TINY]) == 0
    grid = out / "samples" / "step-00000002.png"
    assert f"samples {grid}" in capsys.readouterr().out
    img = Image.open(grid).convert("L")
    low, high = img.crop((0, 0, img.width, 12)).getextrema()
    assert low == 0 and high > 200  # a black caption strip with white digits above the row
