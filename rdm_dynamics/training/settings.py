"""The settings of a training run, each declared once: :class:`TrainConfig`.

A setting is one field of the dataclass, declared with :func:`setting`: its type is the field's
annotation (``int``, ``float``, ``bool``, ``str``, ``dict``, or one of them ``| None``), and the
declaration carries its default, its help text, its simple constraints and whether ``--resume``
may change it.  Everything else is derived from that declaration (:data:`SETTINGS`):

* the command-line flags (:func:`add_arguments`): ``--name-with-dashes`` for every setting,
  ``--flag/--no-flag`` for booleans, a JSON object for mappings, and ``--model-option KEY=VALUE``
  (repeatable) for the one mapping declared ``items=True``;
* the reading of a YAML or TOML file (:func:`load_config_file`): a flat mapping of the same names,
  with '-' or '_';
* the configuration stored in every checkpoint (:meth:`TrainConfig.to_json`) and read back
  (:meth:`TrainConfig.from_json`), so an old checkpoint gets the current defaults for what it
  lacks;
* the constraints (:func:`check`): ``minimum <= value <= maximum``, ``above < value < below``,
  finiteness, a set of allowed values; one message shape for each;
* what ``--resume`` may change (:func:`resolve_config`): how long to run and what to write, the
  settings declared ``resumable=True``; everything that decides what is computed is fixed by the
  checkpoint.

Precedence: defaults < config file < flags; with ``--resume`` the checkpoint's configuration
replaces the defaults.  Names (sde, prediction, sampler, model, gate, data) and the SDE that
``sde_options`` build are checked by ``training.validation.validate_config`` (the one validation
of a run, whether its settings come from here or from a checkpoint).  Every file is read within
``rdm_dynamics.limits``' bounds.  Every error is a
:class:`~rdm_dynamics.cli.UsageError` of one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import MAX_SEED, Parser, UsageError
from ..limits import FileLimitError, cut, loads_json, short
from ..models import MODEL_CONFIGS
from ..models.depth_init import INITS
from ..models.dit import describe_size
from ..models.gates import GATES
from ..sde import EPS, SDES
from .checkpoint import CheckpointError, find_checkpoints, load_checkpoint
from .diffusion import PREDICTIONS, SAMPLER, SAMPLERS, STEPS

__all__ = ["TrainConfig", "Setting", "SETTINGS", "setting", "check", "coerce", "coerce_as",
           "load_config_file", "add_arguments", "build_parser", "resolve_config",
           "newest_intact_checkpoint", "FLAG_ONLY"]

_KINDS = (bool, int, float, str, dict)


@dataclass(frozen=True)
class Setting:
    """What is declared about one setting (its name and type come from the dataclass field)."""

    name: str
    kind: type  # bool, int, float, str or dict
    optional: bool  # None is a value (the default of the optional settings)
    default: object
    help: str
    minimum: float | None = None  # value >= minimum
    maximum: float | None = None  # value <= maximum
    above: float | None = None  # value > above
    below: float | None = None  # value < below
    finite: bool = False
    choices: tuple | None = None
    resumable: bool = False  # --resume may change it
    items: bool = False  # a mapping set one KEY=VALUE per flag
    flag: str = ""  # the command-line flag

    def requirement(self) -> str | None:
        """The constraint in words ("at least 1", "lie in [0, 1)"), None without one."""
        if self.choices is not None:
            return "be " + " or ".join(str(c) for c in self.choices)
        low = ("[", self.minimum) if self.minimum is not None else \
            ("(", self.above) if self.above is not None else None
        high = (self.maximum, "]") if self.maximum is not None else \
            (self.below, ")") if self.below is not None else None
        def num(v):  # integers exactly, floats short
            return str(v) if isinstance(v, int) else f"{v:g}"

        if low and high:
            return f"lie in {low[0]}{num(low[1])}, {num(high[0])}{high[1]}"
        if low == ("[", 0):
            return "be non-negative"
        if low == ("(", 0):
            return "be a positive number"
        if low:
            return f"be {'at least' if low[0] == '[' else 'greater than'} {num(low[1])}"
        if high:
            return f"be {'at most' if high[1] == ']' else 'less than'} {num(high[0])}"
        return "be a finite number" if self.finite else None

    def accepts(self, value) -> bool:
        """Whether ``value`` (of the setting's type) meets the constraints; NaN meets none."""
        if value is None:
            return self.optional
        if self.choices is not None:
            return value in self.choices
        if self.kind not in (int, float):
            return True
        return ((not self.finite or math.isfinite(value))
                and (self.minimum is None or value >= self.minimum)
                and (self.maximum is None or value <= self.maximum)
                and (self.above is None or value > self.above)
                and (self.below is None or value < self.below))


def setting(default, help: str, *, minimum: float | None = None, maximum: float | None = None,
            above: float | None = None, below: float | None = None, finite: bool = False,
            choices: tuple | None = None, resumable: bool = False, items: bool = False,
            flag: str | None = None):
    """A dataclass field declaring one setting: its default, help and constraints (the type is
    the field's annotation).  ``resumable``: ``--resume`` may change it.  ``items``: a mapping
    given on the command line one ``KEY=VALUE`` per ``flag``."""
    declared = dict(help=help, minimum=minimum, maximum=maximum, above=above, below=below,
                    finite=finite, choices=choices, resumable=resumable, items=items,
                    flag=flag or "")
    meta = {"setting": declared}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


def _or(names) -> str:
    """``a, b or c``: a list of names in a help text, from the table that defines them."""
    names = list(names)
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


@dataclass
class TrainConfig:
    """Everything a run depends on.  Stored in every checkpoint; ``--resume`` reuses it."""

    # model
    model: str = setting("RDM-DiT-T/2", "named configuration of rdm_dynamics.models: "
                         + ", ".join(MODEL_CONFIGS) + f" (RDM-DiT-T/2: {describe_size('T')}, "
                         f"patch 2; RDM-DiT-N/2: {describe_size('N')}, the benchmark's)")
    gate: str = setting("rdm", "residual gate: " + _or(GATES))
    model_options: dict = setting({}, "architecture override passed to build_model "
                                  "(repeatable)", items=True, flag="--model-option")
    model_factory: str | None = setting(None, "module:function with build_model's signature, "
                                        "for your own model (imported only when given here on "
                                        "the command line or in the Python API, never from a "
                                        "config file or a checkpoint; default: none)")
    init: str = setting("iid", "initial weights: iid (each unit drawn independently) or smooth "
                        "(one smooth function of the unit's depth tau = i/L, the same at every "
                        "depth; rdm_dynamics.models.depth_init)", choices=INITS)
    init_modes: int = setting(3, "smooth init: cosine modes across depth (1: every unit of a "
                              "role starts equal)", minimum=1)
    # data
    data: str = setting("digits", "digits, moving-digits, digits-gmm (a Gaussian mixture fitted "
                        "to the digits: known law, fresh images every step), a folder of "
                        "PNG/JPEG images or a .npy/.npz file")
    law_components: int = setting(1, "digits-gmm: Gaussian components per digit class",
                                  minimum=1)
    law_covariance: str = setting("lowrank", "digits-gmm: covariance of each component, full "
                                  "or lowrank (rank law_rank plus diagonal)")
    law_rank: int = setting(8, "digits-gmm: rank of the low-rank covariances", minimum=1)
    law_min_var: float = setting(0.01, "digits-gmm: pixel variance floor added to every "
                                 "covariance", above=0, finite=True)
    law_seed: int = setting(0, "digits-gmm: seed of the mixture fit (EM with several "
                            "components)", minimum=0)
    image_size: int | None = setting(None, "resize to this size (default: digits 8, "
                                     "moving-digits canvas 16, folders 32)", minimum=1,
                                     maximum=1024)
    frames: int | None = setting(None, "moving-digits video length (default 8)", minimum=1,
                                 maximum=256)
    channels: int = setting(1, "image folders: 1 (grey) or 3 (RGB)", choices=(1, 3))
    # diffusion
    sde: str = setting("vp", "forward SDE of rdm_dynamics.sde: " + _or(SDES))
    sde_options: dict = setting({}, "JSON object of SDE arguments, e.g. '{\"beta_max\": 20}'")
    prediction: str = setting("eps", "network target: " + _or(PREDICTIONS))
    t_min: float = setting(EPS, "training times are uniform on [t_min, 1]; the samplers stop "
                           "there", above=0, below=1)
    label_dropout: float = setting(0.1, "probability of the null label (classifier-free "
                                   "guidance training)", minimum=0, maximum=1)
    # optimisation
    steps: int = setting(2000, "total optimizer steps", minimum=1, resumable=True)
    max_seconds: float = setting(0.0, "stop with a checkpoint once training has run this long "
                                 "(0: no limit)", minimum=0, resumable=True)
    batch_size: int = setting(64, "global batch size, split over the processes", minimum=1)
    lr: float = setting(1e-3, "AdamW learning rate (after a linear warm-up)", above=0,
                        finite=True)
    warmup: int = setting(100, "warm-up steps", minimum=0)
    weight_decay: float = setting(0.0, "AdamW weight decay", minimum=0)
    grad_clip: float = setting(1.0, "clip the gradient norm to this", above=0)
    ema_decay: float = setting(0.999, "EMA decay of the weights used for sampling", minimum=0,
                               below=1)
    seed: int = setting(0, "seed of every random draw", minimum=0, maximum=MAX_SEED)
    # hardware
    device: str = setting("auto", "auto, cpu or cuda[:N] (torchrun: cuda means each rank's "
                          "local GPU)", resumable=True)
    bf16: bool = setting(True, "bfloat16 autocast on CUDA (ignored on the CPU)")
    compile: bool = setting(False, "torch.compile the model", resumable=True)
    # output
    out: str = setting("runs/rdm", "run folder: log.jsonl, samples/, checkpoints",
                       resumable=True)
    log_every: int = setting(10, "log every N steps", minimum=1, resumable=True)
    ckpt_every: int = setting(500, "checkpoint every N steps (and at the end)", minimum=1,
                              resumable=True)
    keep: int = setting(2, "checkpoints kept", minimum=1, resumable=True)
    sample_every: int = setting(0, "sample grid every N steps (0: only at the end)", minimum=0,
                                resumable=True)
    # the grids are a quick look during training: ddpm (fixed steps, cheap) at guidance 2
    # (clearly class-conditional digits); `sample` defaults to pf-ode (dopri5, adaptive) at
    # guidance 1 (the model's own conditional law), the setting the measurements use
    n_samples: int = setting(64, "samples per grid", minimum=1, maximum=4096, resumable=True)
    sampler: str = setting("ddpm", "sampler of the grids: " + _or(SAMPLERS) + " (ddpm: fixed "
                           f"steps, cheap during training; `sample` defaults to {SAMPLER})",
                           resumable=True)
    sample_steps: int = setting(STEPS, "sampler steps for the grids", minimum=1, maximum=100000,
                                resumable=True)
    guidance: float = setting(2.0, "classifier-free guidance scale of the grids (2: clearly "
                              "class-conditional; `sample` defaults to 1, the model's own "
                              "conditional law)", minimum=0, finite=True, resumable=True)
    progress: bool = setting(True, "tqdm progress bar", resumable=True)

    def to_json(self) -> dict:
        """The configuration as stored in a checkpoint (JSON values)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, stored: dict) -> TrainConfig:
        """A configuration from a stored mapping (a checkpoint's ``train_config``): each known
        key read as its setting's type, the declared defaults for the missing ones, unknown keys
        (settings of other versions) ignored.  UsageError if ``stored`` is not a mapping."""
        if not isinstance(stored, dict):
            raise UsageError(f"the stored train_config is not a mapping but "
                             f"{type(stored).__name__}")
        return cls(**{k: coerce(k, v) for k, v in stored.items() if k in SETTINGS})


def _settings() -> dict[str, Setting]:
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for f in dataclasses.fields(TrainConfig):
        hint = kind = hints[f.name]
        optional = type(None) in typing.get_args(hint)  # X | None
        if optional:
            rest = [a for a in typing.get_args(hint) if a is not type(None)]
            kind = rest[0] if len(rest) == 1 else hint
        kind = typing.get_origin(kind) or kind  # dict[str, ...] -> dict
        if kind not in _KINDS:
            raise TypeError(f"setting {f.name}: unsupported type {hint}")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        declared = dict(f.metadata["setting"])
        declared["flag"] = declared["flag"] or "--" + f.name.replace("_", "-")
        out[f.name] = Setting(name=f.name, kind=kind, optional=optional, default=default,
                              **declared)
    return out


#: Every setting, by name, in declaration order.
SETTINGS: dict[str, Setting] = _settings()


# ------------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------------

def coerce(name: str, value):
    """One value (from a file, a flag or a checkpoint) as its setting's type; UsageError if it
    is not one.  Strings are read too: booleans as true/false/1/0/yes/no, mappings as JSON."""
    s = SETTINGS[name]
    if value is None:
        if s.optional:
            return None
        raise UsageError(f"{name} cannot be empty")
    return coerce_as(s.kind, name, value)


def coerce_as(kind: type, name: str, value):
    """``value`` as ``kind`` (bool, int, float, dict or str), read as ``coerce`` reads a
    setting's value; UsageError naming ``name`` if it is not one."""
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is dict:
            if isinstance(value, str):  # from the command line: a JSON object
                value = loads_json(value, name)
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        return str(value)
    except FileLimitError as exc:
        raise UsageError(str(exc)) from None
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be {kind.__name__}, got {short(value)}") from None


def check(cfg: TrainConfig) -> None:
    """Every declared constraint, in declaration order; UsageError naming the first broken."""
    for name, s in SETTINGS.items():
        value = getattr(cfg, name)
        if not s.accepts(value):
            raise UsageError(f"{name} must {s.requirement()}, got {cut(str(value))}")


#: Settings a file may not set, and why: a file the user opens never causes an import.
FLAG_ONLY = {"model_factory": "a model factory is code to import, so it is taken only from the "
                              "command line (--model-factory) or the Python API"}


def read_mapping_file(path: str | Path, what: str = "config file") -> dict:
    """The mapping in a .yaml/.yml or .toml file, as parsed (nothing else is read or run);
    UsageError (one line) if the file is missing, unreadable, not UTF-8 or holds no mapping."""
    from ..limits import MAX_SETTINGS_BYTES, load_toml, load_yaml, read_text

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise UsageError(f"{what} {str(path)!r} must end in .yaml, .yml or .toml")
    try:
        text = read_text(path, MAX_SETTINGS_BYTES, what)
    except FileLimitError as exc:
        raise UsageError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {str(path)!r} is not UTF-8 text (byte {exc.start})") \
            from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None
    where = f"{what} {str(path)!r}"
    try:
        loaded = load_yaml(text, where) if suffix != ".toml" else load_toml(text, where)
    except FileLimitError as exc:
        raise UsageError(f"{where}: {exc}" if str(path) not in str(exc) else str(exc)) from None
    except Exception as exc:  # yaml.YAMLError, tomllib.TOMLDecodeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot parse {where}: {first[:200]}") from None
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise UsageError(f"{what} {str(path)!r} must hold a mapping of settings")
    return loaded


def load_config_file(path: str | Path) -> dict:
    """A flat mapping of TrainConfig keys ('-' or '_') from a .yaml/.yml or .toml file, each
    value read as its setting's type."""
    return settings_from_mapping(read_mapping_file(path), f"{str(Path(path))!r}")


def settings_from_mapping(loaded: dict, where: str) -> dict:
    """A mapping of TrainConfig keys ('-' or '_') read as their settings' types; UsageError for
    an unknown key or a value of the wrong type."""
    out = {}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        if name not in SETTINGS:
            raise UsageError(f"unknown setting {short(key)} in {where}")
        if name in FLAG_ONLY:
            raise UsageError(f"{key} in {where}: {FLAG_ONLY[name]}")
        out[name] = coerce(name, value)
    return out


# ------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (``dest`` the setting's name, default None: not given)."""
    for name, s in SETTINGS.items():
        if s.items:
            parser.add_argument(s.flag, dest=name, action="append", default=None,
                                metavar="KEY=VALUE", help=s.help)
            continue
        text = s.help if s.default is None else f"{s.help} (default {s.default})"
        if s.kind is bool:
            parser.add_argument(s.flag, dest=name, default=None,
                                action=argparse.BooleanOptionalAction, help=text)
        else:
            parser.add_argument(s.flag, dest=name, default=None, metavar=name.upper(), help=text)


def build_parser(prog: str | None = None, description: str | None = None) -> Parser:
    """--config, --resume and the flags of every setting."""
    p = Parser(prog=prog, description=description)
    p.add_argument("--config", default=None, help="YAML or TOML file of settings (a flat "
                   "mapping of the names below, with - or _)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN",
                   help="continue the run in RUN (or --out) from its newest intact checkpoint; "
                        "it keeps writing there, wherever the run was first trained")
    add_arguments(p)
    return p


def _item(s: Setting, text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE read as JSON when it parses (numbers, true, lists), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"{s.flag} must look like KEY=VALUE, got {short(text)}")
    try:
        return key.strip(), loads_json(value, s.flag)
    except FileLimitError as exc:
        raise UsageError(str(exc)) from None
    except ValueError:
        return key.strip(), value


def _toolkit_files(out: Path) -> list[str]:
    """What a run writes that a new run in ``out`` would overwrite or mix with."""
    found = [p.name for p in (out / "log.jsonl", out / "samples") if p.exists()]
    found += [p.name for p in sorted(out.glob("ckpt-*"))[:1]] if out.is_dir() else []
    return found


def _check_out_folder(out: Path, flag: str = "--out") -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {str(out)!r} is a file, not a folder")


def newest_intact_checkpoint(folder: Path, warn=None, flag: str = "--resume"):
    """(path, checkpoint, its TrainConfig) of the newest checkpoint in ``folder`` that loads
    and holds a training configuration; ``warn(message)`` for each newer one that does not.
    UsageError if none does."""
    found = find_checkpoints(folder)
    if not found:
        raise UsageError(f"{flag}: no checkpoint in {str(folder)!r}")
    skipped = []
    for path in reversed(found):
        try:
            ckpt = load_checkpoint(path)
            if "train_config" not in ckpt.meta:
                raise CheckpointError(f"{str(path)!r} holds no training configuration")
            cfg = TrainConfig.from_json(ckpt.meta["train_config"])
        except (CheckpointError, UsageError) as exc:
            skipped.append((path, exc))
            continue
        for bad, exc in skipped if warn is not None else ():
            warn(f"the checkpoint {bad.name} is unreadable ({exc}); resuming from the newest "
                 f"intact one, {path.name}")
        return path, ckpt, cfg
    reasons = [str(exc) for _, exc in skipped]
    raise UsageError(f"{flag}: no intact checkpoint in {str(folder)!r} ({reasons[0]})")


def _warn(message: str) -> None:
    import os
    import sys

    if os.environ.get("RANK", "0") == "0":
        print(f"warning: {message}", file=sys.stderr)


def resolve_config(argv, prog: str | None = None,
                   description: str | None = None) -> tuple[TrainConfig, Path | bool]:
    """(configuration, resume) from command-line arguments: defaults < config file < flags; with
    --resume, the checkpoint's configuration with only the resumable settings changed, and
    ``resume`` the path of the checkpoint to resume from (False for a new run).

    A resumed run writes where its checkpoint was found (``out`` is that folder, whatever the
    checkpoint recorded: a run folder may be moved), falls back with a warning to the newest
    intact checkpoint when newer ones are corrupt, and imports the checkpoint's model factory
    only when the command line names it.  A new run refuses a folder that already holds a run's
    files.  The constraints are not checked here (:func:`check`, in ``training.loop.setup``)."""
    args = build_parser(prog, description).parse_args(argv)
    given = load_config_file(args.config) if args.config else {}
    for name, s in SETTINGS.items():
        value = getattr(args, name)
        if value is None:
            continue
        if s.items:
            given[name] = {**given.get(name, {}), **dict(_item(s, v) for v in value)}
        else:
            given[name] = coerce(name, value)
    if args.resume is None:
        cfg = TrainConfig(**given)
        out = Path(cfg.out)
        _check_out_folder(out)
        if find_checkpoints(out):
            raise UsageError(f"{cfg.out!r} already holds a run: pass --resume to continue it or "
                             "choose another --out")
        clash = _toolkit_files(out)
        if clash:
            raise UsageError(f"{cfg.out!r} already holds {', '.join(clash)} but no checkpoint: "
                             "choose another --out (nothing there is overwritten)")
        return cfg, False
    if args.resume and "out" in given and Path(given["out"]) != Path(args.resume):
        raise UsageError(f"--resume {args.resume!r} and --out {given['out']!r} name two "
                         "folders: give one")
    out = Path(args.resume or given.get("out", SETTINGS["out"].default))
    _check_out_folder(out, "--resume" if args.resume else "--out")
    found, _, base = newest_intact_checkpoint(out, warn=_warn)
    given["out"] = str(out)  # a resumed run writes where its checkpoint was found
    if base.model_factory and given.get("model_factory") != base.model_factory:
        raise UsageError(f"this run's model was built by {base.model_factory!r}; a checkpoint "
                         "never chooses code to import: name it to resume "
                         f"(--model-factory {base.model_factory})")
    changed = sorted(k for k, v in given.items()
                     if not SETTINGS[k].resumable and v != getattr(base, k))
    if changed:
        raise UsageError(f"--resume cannot change {', '.join(changed)} (the checkpoint's "
                         "run was trained with other values)")
    return dataclasses.replace(base, **given), found
