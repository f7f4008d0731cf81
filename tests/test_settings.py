"""The training settings: one declaration per setting, from which the flags, the config file,
the stored configuration, the constraints and what --resume may change are all derived."""

import dataclasses
import json
import math

import pytest
import torch
import yaml

from rdm_dynamics import train as train_cli
from rdm_dynamics.cli import UsageError
from rdm_dynamics.training.checkpoint import save_checkpoint
from rdm_dynamics.training.settings import (
    SETTINGS,
    TrainConfig,
    build_parser,
    check,
    coerce,
    load_config_file,
    resolve_config,
)

TINY_FLAGS = ["--model-option", "depth=1", "--model-option", "width=32", "--model-option",
              "heads=2", "--no-progress", "--device", "cpu"]


def other_value(s):
    """A valid value of setting ``s`` different from its default."""
    if s.kind is bool:
        return not s.default
    if s.kind is dict:
        return {"a": 1}
    if s.kind is str:
        return "other"
    if s.choices is not None:
        return next(c for c in s.choices if c != s.default)
    if s.default is None:
        return 4
    value = s.default + 1 if s.kind is int else 0.5
    assert s.accepts(value) and value != s.default, s.name
    return value


def as_flags(s, value):
    """The command-line arguments that set ``s`` to ``value``."""
    if s.kind is bool:
        return [s.flag if value else "--no-" + s.flag[2:]]
    if s.items:
        return [a for k, v in value.items() for a in (s.flag, f"{k}={json.dumps(v)}")]
    if s.kind is dict:
        return [s.flag, json.dumps(value)]
    return [s.flag, str(value)]


def test_every_setting_has_one_flag_with_the_declared_help():
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    assert set(SETTINGS) == {f.name for f in dataclasses.fields(TrainConfig)}
    for name, s in SETTINGS.items():
        action = actions[name]
        assert s.flag in action.option_strings and s.help and s.help in action.help, name
        assert s.kind in (bool, int, float, str, dict)
    flags = [f for a in parser._actions for f in a.option_strings]
    assert len(flags) == len(set(flags))


def test_the_defaults_meet_the_declared_constraints():
    check(TrainConfig())
    for name, s in SETTINGS.items():
        assert getattr(TrainConfig(), name) == s.default


def bad_values(s):
    """Values of ``s``'s type that break each of its declared constraints."""
    if s.choices is not None:
        yield "-".join(map(str, s.choices)) if s.kind is str else max(s.choices) + 1
    for bound, step in ((s.minimum, -1), (s.maximum, 1)):
        if bound is not None:
            yield s.kind(bound + step)
    for bound in (s.above, s.below):
        if bound is not None:
            yield s.kind(bound)
    if s.finite:
        yield math.inf
    if s.kind is float and s.requirement():
        yield math.nan


@pytest.mark.parametrize("name", [n for n, s in SETTINGS.items() if s.requirement()])
def test_every_declared_constraint_is_checked_with_its_words(name):
    s = SETTINGS[name]
    values = list(bad_values(s))
    assert values
    for value in values:
        with pytest.raises(UsageError) as err:
            check(TrainConfig(**{name: value}))
        assert str(err.value) == f"{name} must {s.requirement()}, got {value}"


def test_the_constraint_words():
    assert SETTINGS["steps"].requirement() == "be at least 1"
    assert SETTINGS["seed"].requirement() == "lie in [0, 4294967295]"
    assert SETTINGS["lr"].requirement() == "be a positive number"
    assert SETTINGS["ema_decay"].requirement() == "lie in [0, 1)"
    assert SETTINGS["t_min"].requirement() == "lie in (0, 1)"
    assert SETTINGS["label_dropout"].requirement() == "lie in [0, 1]"
    assert SETTINGS["channels"].requirement() == "be 1 or 3"
    assert SETTINGS["guidance"].requirement() == "be non-negative"
    assert SETTINGS["warmup"].requirement() == "be non-negative"
    assert SETTINGS["sde"].requirement() is None  # names are checked by their constructors


def changed_config():
    return TrainConfig(**{name: other_value(s) for name, s in SETTINGS.items()})


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_a_config_file_round_trips_through_the_declaration(tmp_path, suffix):
    cfg = dataclasses.replace(changed_config(), model_factory=None)  # flag-only (FLAG_ONLY)
    stored = {k.replace("_", "-"): v for k, v in cfg.to_json().items() if v is not None}
    path = tmp_path / f"run{suffix}"
    if suffix == ".yaml":
        path.write_text(yaml.safe_dump(stored))
    else:
        import tomllib

        def toml(v):
            return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

        scalars = [f"{k} = {toml(v)}" for k, v in stored.items() if not isinstance(v, dict)]
        tables = [f"[{k}]\n" + "\n".join(f"{a} = {toml(b)}" for a, b in v.items())
                  for k, v in stored.items() if isinstance(v, dict)]
        path.write_text("\n".join(scalars) + "\n" + "\n".join(tables) + "\n")
        assert tomllib.loads(path.read_text())
    assert TrainConfig(**load_config_file(path)) == cfg


def test_the_flags_round_trip_through_the_declaration(tmp_path):
    cfg = dataclasses.replace(changed_config(), out=str(tmp_path / "run"))
    argv = [a for name, s in SETTINGS.items() for a in as_flags(s, getattr(cfg, name))]
    assert resolve_config(argv) == (cfg, False)


def test_the_stored_config_round_trips_and_tolerates_other_versions():
    cfg = changed_config()
    assert TrainConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    # an older checkpoint lacks new settings (declared defaults), a newer one has unknown keys
    assert TrainConfig.from_json({"steps": 5, "retired_setting": 1}) == TrainConfig(steps=5)
    with pytest.raises(UsageError, match="steps must be int"):
        TrainConfig.from_json({"steps": "five"})


def test_values_are_read_as_their_declared_type():
    assert coerce("steps", 3.0) == 3 and coerce("steps", "7") == 7
    assert coerce("bf16", "no") is False and coerce("lr", "1e-4") == 1e-4
    assert coerce("sde_options", '{"beta_max": 10}') == {"beta_max": 10}
    assert coerce("image_size", None) is None
    for name, value, words in (("steps", 2.5, "steps must be int"),
                               ("bf16", "maybe", "bf16 must be bool"),
                               ("lr", True, "lr must be float"),
                               ("sde_options", "[1]", "sde_options must be dict"),
                               ("steps", None, "steps cannot be empty")):
        with pytest.raises(UsageError, match=words):
            coerce(name, value)


@pytest.mark.parametrize("name", [n for n in SETTINGS if n != "out"])
def test_resume_changes_exactly_the_settings_declared_resumable(tmp_path, name):
    """A checkpoint's run continued with one setting changed: allowed iff it is resumable."""
    out = tmp_path / "run"
    saved = TrainConfig(out=str(out))
    save_checkpoint(out, 1, {"model": torch.nn.Linear(1, 1)},
                    meta={"train_config": saved.to_json()})
    s = SETTINGS[name]
    value = other_value(s)
    argv = ["--out", str(out), "--resume", *as_flags(s, value)]
    if s.resumable:
        cfg, resume = resolve_config(argv)
        assert resume and getattr(cfg, name) == value
        assert dataclasses.replace(cfg, **{name: getattr(saved, name)}) == saved
    else:
        with pytest.raises(UsageError, match=f"--resume cannot change {name} "):
            resolve_config(argv)
    if getattr(saved, name) is None:
        return  # None has no flag
    # giving the checkpoint's own value is not a change
    assert resolve_config(["--out", str(out), "--resume",
                           *as_flags(s, getattr(saved, name))])[0] == saved


@pytest.mark.parametrize("config, argv, words", [
    ("sde: nope\n", [], "unknown SDE 'nope'"),
    ("sde_options: {beta: 3}\n", [], "bad sde_options for vp: "),
    (None, ["--sampler", "heun"], "unknown sampler 'heun'"),
    (None, ["--gate", "nope"], "nope"),
    (None, ["--prediction", "x0"], "unknown prediction 'x0'"),
    (None, ["--channels", "2"], "channels must be 1 or 3, got 2"),
    (None, ["--t-min", "1"], "t_min must lie in (0, 1), got 1.0"),
    (None, ["--device", "tpu"], "unknown device 'tpu'"),
    (None, ["--model-factory", "no_such_module:build"], "cannot import model factory"),
    (None, ["--model-option", "nope=1"], "unknown option(s) nope"),
])
def test_a_bad_value_is_one_usage_line_exit_2_and_writes_nothing(tmp_path, capsys, config,
                                                                  argv, words):
    out = tmp_path / "run"
    if config is not None:
        (tmp_path / "c.yaml").write_text(config)
        argv = ["--config", str(tmp_path / "c.yaml"), *argv]
    rc = train_cli.main(["--out", str(out), *TINY_FLAGS, *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and words in err, err
    assert err.startswith("python -m rdm_dynamics.train: error: ")
    assert not out.exists()
