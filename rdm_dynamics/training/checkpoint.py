"""Training checkpoints as safetensors plus JSON: nothing is ever unpickled.

A checkpoint of step N in a run folder is two files:

* ``ckpt-{N:08d}.safetensors``: every tensor: the model weights (``model.*``), the EMA weights
  (``ema.*``) and the optimizer's tensor state (``optim.<param>.<name>``, e.g. Adam's moments
  and step counts), with the step in the file's metadata;
* ``ckpt-{N:08d}.json``: everything else: the step, the training and model configurations, the
  optimizer's hyper-parameters and non-tensor state, and the random number generator states
  (base64 of their byte tensors).

Both are written atomically (temporary file, fsync, rename), tensors first, so the JSON file marks
a complete checkpoint: a run killed mid-write leaves the previous checkpoint intact, and the
latest checkpoint is the highest step whose JSON and tensors both exist and agree on the step.
Tensor state is kept out of the JSON because optimizer moments are as large as the model and JSON
floats would be slow and large; every number still round-trips exactly (safetensors stores the
raw bytes, JSON writes floats with repr).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..files import atomic_write_bytes, atomic_write_json
from ..limits import load_json

__all__ = ["CheckpointError", "Checkpoint", "save_checkpoint", "load_checkpoint",
           "find_checkpoints", "latest_checkpoint", "rng_state", "set_rng_state",
           "optimizer_state", "load_optimizer_state", "FORMAT", "CHECKPOINT_FILE",
           "checkpoint_steps"]

FORMAT = "rdm_dynamics.checkpoint/1"
_NAME = re.compile(r"^ckpt-(\d{8})\.json$")
#: The names of a checkpoint's two files and of the run's log (for files.remove_stale_temporaries).
CHECKPOINT_FILE = r"(ckpt-\d{8}\.(json|safetensors)|log\.jsonl)"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupt or of another format."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``tensors`` by prefixed name, ``meta`` the JSON object."""

    path: Path  # the JSON file
    tensors: dict[str, torch.Tensor]
    meta: dict

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors saved under ``prefix.`` with the prefix stripped (``model``, ``ema``)."""
        p = prefix + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}


# ------------------------------------------------------------------------------------------------
# Random number generators and the optimizer, as tensors + JSON
# ------------------------------------------------------------------------------------------------

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict:
    """The global torch (CPU and CUDA) RNG states and those of named generators, as JSON."""
    state = {"torch": _b64(torch.get_rng_state()),
             "generators": {k: _b64(g.get_state()) for k, g in (generators or {}).items()}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only where CUDA is in use)."""
    torch.set_rng_state(_unb64(state["torch"]))
    for k, g in (generators or {}).items():
        if k not in state["generators"]:
            raise CheckpointError(f"the checkpoint holds no state for generator {k!r}")
        g.set_state(_unb64(state["generators"][k]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([_unb64(s) for s in cuda])


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state_dict into tensors (``optim.<param>.<name>``) and JSON."""
    sd = opt.state_dict()
    tensors, layout = {}, {}
    for pid, entries in sd["state"].items():
        record = {}
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{name}"] = value
                record[name] = {"tensor": True}
            else:
                record[name] = {"value": value}
        layout[str(pid)] = record
    return tensors, {"param_groups": sd["param_groups"], "state": layout}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         meta: dict) -> None:
    """Rebuild the state_dict that :func:`optimizer_state` split and load it into ``opt``."""
    state = {}
    for pid, record in meta["state"].items():
        entries = {}
        for name, spec in record.items():
            if spec.get("tensor"):
                key = f"optim.{pid}.{name}"
                if key not in tensors:
                    raise CheckpointError(f"optimizer tensor {key} is missing")
                entries[name] = tensors[key]
            else:
                entries[name] = spec["value"]
        state[int(pid)] = entries
    # load_state_dict matches parameters by position only: check the per-parameter tensors'
    # shapes, or a checkpoint of another architecture would load and fail at the next step
    saved_ids = [i for g in meta["param_groups"] for i in g["params"]]
    params = [p for g in opt.param_groups for p in g["params"]]
    if len(saved_ids) != len(params):
        raise CheckpointError(f"the optimizer state has {len(saved_ids)} parameters, the model "
                              f"{len(params)}")
    for i, p in zip(saved_ids, params, strict=True):
        for name, value in state.get(i, {}).items():
            if torch.is_tensor(value) and value.ndim > 0 and value.shape != p.shape:
                raise CheckpointError(f"optimizer state {name} of parameter {i} has shape "
                                      f"{tuple(value.shape)}, the model {tuple(p.shape)}")
    try:
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"the optimizer state does not fit this model: {exc}") from None


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------

def _tensor_path(json_path: Path) -> Path:
    return json_path.with_suffix(".safetensors")


def save_checkpoint(folder: str | Path, step: int, modules: dict[str, nn.Module],
                    optimizer: torch.optim.Optimizer | None = None, meta: dict | None = None,
                    keep: int | None = None) -> Path:
    """Write the checkpoint of ``step`` (module docstring); returns the JSON path.

    ``modules`` maps prefixes (``model``, ``ema``) to modules whose state_dicts are saved.
    ``meta`` is merged into the JSON (the caller's configuration, RNG states, ...).  With ``keep``
    only the newest ``keep`` checkpoints stay.
    """
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"{prefix}.{k}": v.detach().cpu().contiguous()
               for prefix, module in modules.items() for k, v in module.state_dict().items()}
    record = {"format": FORMAT, "step": int(step), **(meta or {})}
    if optimizer is not None:
        opt_tensors, record["optimizer"] = optimizer_state(optimizer)
        tensors.update({k: v.detach().cpu().contiguous() for k, v in opt_tensors.items()})
    json_path = folder / f"ckpt-{step:08d}.json"
    atomic_write_bytes(_tensor_path(json_path),
                       save(tensors, metadata={"format": FORMAT, "step": str(step)}))
    atomic_write_json(json_path, record)
    if keep is not None and keep > 0:
        for old in find_checkpoints(folder)[:-keep]:
            _tensor_path(old).unlink(missing_ok=True)
            old.unlink(missing_ok=True)
    return json_path


def find_checkpoints(folder: str | Path) -> list[Path]:
    """The JSON files of the checkpoints in ``folder`` with their tensors present, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name) and _tensor_path(p).is_file()]
    return sorted(found)


def checkpoint_steps(folder: str | Path) -> dict[int, Path]:
    """{step: JSON path} of the checkpoints in ``folder``, read from their names."""
    return {int(_NAME.match(p.name).group(1)): p for p in find_checkpoints(folder)}


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = find_checkpoints(folder)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint from its JSON or safetensors file, or the latest one in a run folder.

    Only JSON and safetensors are read (no pickle).  Raises CheckpointError with the reason if the
    files are missing, unreadable or do not belong together.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no checkpoint in {str(path)!r}")
        path = found
    json_path = path.with_suffix(".json")
    tensor_path = _tensor_path(json_path)
    for p in (json_path, tensor_path):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {str(p)!r} does not exist")
    try:  # bounded in size and nesting (limits.py): a bomb is a corrupt checkpoint
        meta = load_json(json_path, "checkpoint file")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {str(json_path)!r}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(json_path)!r} is not an rdm_dynamics checkpoint "
                              f"(format {FORMAT})")
    try:
        with safe_open(str(tensor_path), framework="pt") as f:
            saved_step = (f.metadata() or {}).get("step")
        tensors = load_file(str(tensor_path), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read {str(tensor_path)!r}: {exc}") from None
    if saved_step != str(meta.get("step")):
        raise CheckpointError(f"{str(tensor_path)!r} holds step {saved_step} but "
                              f"{str(json_path)!r} step {meta.get('step')}")
    return Checkpoint(json_path, tensors, meta)
