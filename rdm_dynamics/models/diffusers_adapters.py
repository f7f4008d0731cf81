"""diffusers' backbones as this toolkit's models (DESIGN.md section 3d).

diffusers is optional (the ``diffusers`` extra, :data:`DIFFUSERS_RANGE`); without it every path
here raises :class:`DiffusersMissing`, a one-line ValueError saying what to install.  Nothing is
downloaded: ``HF_HUB_OFFLINE=1`` is set before diffusers is imported, and folders are read with
``from_pretrained(..., local_files_only=True, use_safetensors=True)``.

:class:`DiffusersBackbone` wraps a diffusers model as a toolkit backbone: ``net(x, t, y)`` with t
the toolkit's diffusion time in [0, 1] (fed to the model as the DDPM timestep k(t) = N t - 1, see
:class:`DDPMTime`), y a label or None (the null label ``num_classes``), and ``residual_units()``,
the model's units as the probes see them (:mod:`.unit_adapters`).  The units are found by
:func:`find_units`:

* ``DiTTransformer2DModel``, ``Transformer2DModel``: every block of ``transformer_blocks`` (a
  whole transformer block z -> z + attn + ff, tokens (B, N, D));
* ``UNet2DModel``: the resnets and attentions of its down, mid and up blocks whose output has the
  input's shape and whose shortcut is the identity.  A resnet that changes channels (the first
  of a level, and every resnet of an up block, whose input is the concatenation of the stream and
  a long skip) has a learned 1x1 shortcut projection: it is not a state -> state unit but a
  transition (like the downsamplers, upsamplers and long skips, which concatenate), so it is left
  out and, like them, carries errors and adjoints between units.

The order is the order of a traced forward pass, and every unit must run exactly once in it.

Named sizes (:data:`DIFFUSERS_CONFIGS`, random weights, for ``train --model``):
``diffusers-dit-{N,T}/{1,2}`` (``DiTTransformer2DModel`` with the width, depth and heads of
``RDM-DiT-{N,T}``: a diffusers block is one unit, where the toolkit's DiT counts attention and MLP
as two) and ``diffusers-unet-T`` (``UNet2DModel``, two levels, attention at the second).
``gate`` is the model's own structure (``adaln-zero`` for the DiT, ``plain`` for the U-Net) or
``rdm``: the same model with :func:`unit_adapters.add_rdm_gates` around every unit.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .dit import DIT_SIZES
from .unit_adapters import adapt_units, add_rdm_gates, contiguous_tangents, trace_order, unit_views

__all__ = ["DIFFUSERS_RANGE", "DiffusersMissing", "require_diffusers", "DiffusersBackbone",
           "DiffusersDiT", "DiffusersUNet", "DIFFUSERS_CONFIGS", "DIFFUSERS_BACKBONES",
           "SUPPORTED_CLASSES", "find_units", "DDPMTime"]

#: The diffusers versions this module is tested with (pyproject's ``diffusers`` extra says the
#: same; tests/test_diffusers.py checks the installed one against it).
DIFFUSERS_RANGE = ">=0.30,<1"
#: The diffusers model classes whose units are found and whose folders verify reads.
SUPPORTED_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel", "UNet2DModel")


class DiffusersMissing(ValueError):
    """diffusers is not installed (one line: what to install)."""


def require_diffusers():
    """The diffusers package, imported offline; DiffusersMissing if it is not installed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import diffusers
    except ImportError:
        raise DiffusersMissing(f"this needs diffusers{DIFFUSERS_RANGE}: pip install "
                               f"'diffusers{DIFFUSERS_RANGE}' (or the extra: pip install "
                               "'rdm_dynamics[diffusers]')") from None
    return diffusers


class DDPMTime:
    """diffusers' discrete DDPM time against the VP SDE of :mod:`rdm_dynamics.sde`.

    DDPM (``DDPMScheduler``, ``beta_schedule="linear"``): N steps, betas beta_k = beta_start +
    k (beta_end - beta_start) / (N - 1), k = 0..N-1, alphas_cumprod abar_k = prod_{j<=k} (1 -
    beta_j), and ``add_noise(x0, eps, k) = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps``.

    VP SDE: beta(t) = beta_min + t (beta_max - beta_min) on t in [0, 1], x_t = a(t) x0 + s(t) eps,
    a(t)^2 = exp(-int_0^t beta) = abar(t), s(t)^2 = 1 - abar(t).

    The mapping: beta_min = N beta_start, beta_max = N beta_end, and timestep k <-> t_k = (k + 1)
    / N (so k(t) = N t - 1, a real number between grid points).  Then log abar_k = sum_{j<=k}
    log(1 - beta_j) and log abar(t_k) = -sum_{j<=k} int_{j/N}^{(j+1)/N} beta differ by at most

        D_k = sum_{j<=k} beta_j^2 / (2 (1 - beta_j))  +  (k + 1) (beta_max - beta_min) / (2 N^2)

    (the first sum bounds |log(1 - b) + b|, the second the midpoint rule on the shifted grid):
    :meth:`log_alpha_bound`; for the defaults (1000 steps, 1e-4 to 0.02) D_{N-1} = 0.08 against
    |log abar| = 10.  Only the linear schedule maps onto the linear VP SDE; ``epsilon`` and
    ``v_prediction`` are the toolkit's ``eps`` and ``v`` (the same v = a eps - s x0).
    """

    PREDICTIONS = {"epsilon": "eps", "v_prediction": "v"}
    SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")  # the same betas and alphas_cumprod

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02, prediction_type: str = "epsilon"):
        self.N, self.beta_start, self.beta_end = int(num_train_timesteps), beta_start, beta_end
        self.prediction_type = prediction_type

    @classmethod
    def from_scheduler_config(cls, config: dict) -> DDPMTime:
        """The mapping of a scheduler's ``scheduler_config.json``; ValueError (one line) for a
        scheduler, beta schedule or prediction type it does not cover."""
        name = config.get("_class_name", "DDPMScheduler")
        problems = []
        if name not in cls.SCHEDULERS:
            problems.append(f"scheduler {name!r} (mapped: {', '.join(cls.SCHEDULERS)})")
        if config.get("beta_schedule", "linear") != "linear" or config.get("trained_betas"):
            problems.append(f"beta_schedule {config.get('beta_schedule')!r} (mapped: linear, "
                            "onto the VP SDE's linear beta(t))")
        if config.get("rescale_betas_zero_snr"):
            problems.append("rescale_betas_zero_snr (no VP SDE has zero terminal SNR)")
        pred = config.get("prediction_type", "epsilon")
        if pred not in cls.PREDICTIONS:
            problems.append(f"prediction_type {pred!r} (mapped: {', '.join(cls.PREDICTIONS)})")
        if problems:
            raise ValueError("the scheduler does not map onto the VP SDE: " + "; ".join(problems))
        return cls(int(config.get("num_train_timesteps", 1000)),
                   float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02)),
                   pred)

    @property
    def sde_options(self) -> dict:
        return {"beta_min": self.N * self.beta_start, "beta_max": self.N * self.beta_end}

    @property
    def prediction(self) -> str:
        return self.PREDICTIONS[self.prediction_type]

    def time(self, k: torch.Tensor) -> torch.Tensor:
        """t_k = (k + 1) / N."""
        return (k.double() + 1) / self.N

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """k(t) = N t - 1 (real-valued; the model's timestep embedding takes reals)."""
        return t * self.N - 1

    def log_alpha_bound(self) -> torch.Tensor:
        """D_k of the class docstring, k = 0..N-1 (float64)."""
        b = torch.linspace(self.beta_start, self.beta_end, self.N, dtype=torch.float64)
        k = torch.arange(1, self.N + 1, dtype=torch.float64)
        spread = self.N * (self.beta_end - self.beta_start)
        return torch.cumsum(b**2 / (2 * (1 - b)), 0) + k * spread / (2 * self.N**2)


def find_units(model: nn.Module) -> list[nn.Module]:
    """The residual-unit candidates of a supported diffusers model (module docstring), in
    declaration order (the forward order is traced by :class:`DiffusersBackbone`)."""
    name = type(model).__name__
    if name in ("DiTTransformer2DModel", "Transformer2DModel"):
        return list(model.transformer_blocks)
    if name != "UNet2DModel":
        raise ValueError(f"no residual units known for {name} (supported: "
                         f"{', '.join(SUPPORTED_CLASSES)})")
    units = []
    for block in (*model.down_blocks, model.mid_block, *model.up_blocks):
        if block is None:
            continue
        for resnet in getattr(block, "resnets", []):
            if getattr(resnet, "conv_shortcut", None) is None and \
                    resnet.in_channels == resnet.out_channels:
                units.append(resnet)
        units.extend(a for a in (getattr(block, "attentions", None) or []) if a is not None)
    return units


def native_gate(model: nn.Module) -> str:
    """The toolkit's name of a diffusers model's own unit structure: ``adaln-zero`` for blocks
    with adaLN-Zero (DiT), else ``plain`` (pre-norm units z + F(z))."""
    return "adaln-zero" if getattr(model.config, "norm_type", None) == "ada_norm_zero" \
        else "plain"


class DiffusersBackbone(nn.Module):
    """A diffusers model as a toolkit backbone (module docstring).

    Args:
        model: a ``DiTTransformer2DModel``, ``Transformer2DModel`` or ``UNet2DModel``.
        num_classes: its labels 0..num_classes-1 and the null label num_classes (None:
            unconditional).
        time: the DDPM time the model's timestep input means.
        gate: ``native`` (the model as it is: ``config["gate"]`` is :func:`native_gate`) or
            ``rdm`` (an rdm gate around every unit, alpha starting at ``rdm_alpha_init``).
    """

    def __init__(self, model: nn.Module, *, num_classes: int | None, time: DDPMTime,
                 gate: str = "native", rdm_alpha_init: str | float = "rdm"):
        super().__init__()
        self.model, self.num_classes, self.time = model, num_classes, time
        self.in_channels = int(model.config.in_channels)
        self.input_size = int(model.config.sample_size)
        for m in model.modules():  # label dropout is the objective's (reproducible) business
            if type(m).__name__ == "LabelEmbedding":
                m.dropout_prob = 0.0
            if isinstance(m, nn.GroupNorm):  # forward-mode AD through strided states (C8)
                m.register_forward_pre_hook(contiguous_tangents)
        dtype = next(model.parameters()).dtype
        x = torch.zeros(1, self.in_channels, self.input_size, self.input_size, dtype=dtype)
        units, shapes = trace_order(self, find_units(model), x,
                                    torch.full((1,), 0.5, dtype=dtype), None)
        if not units:
            raise ValueError(f"{type(model).__name__} has no residual units")
        self._units = units
        adapt_units(units, self)
        if gate == "rdm":
            add_rdm_gates(units, shapes, rdm_alpha_init)
        self.config = {"gate": native_gate(model) if gate == "native" else gate,
                       "input_size": self.input_size, "in_channels": self.in_channels,
                       "num_classes": num_classes, "frames": None}

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample, (C, H, W)."""
        return (self.in_channels, self.input_size, self.input_size)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        kwargs = {}
        if self.num_classes is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            kwargs["class_labels"] = y
        k = self.time.timestep(t.to(x.device)).to(x.dtype).expand(x.shape[0])
        out = self.model(x, timestep=k, return_dict=False, **kwargs)[0]
        return out[:, : self.in_channels]  # a learned-variance head's second half is not eps

    def residual_units(self) -> list[nn.Module]:
        """The units' views, in forward order (:mod:`.unit_adapters`)."""
        return unit_views(self._units)

    def gate_values(self, t: float = 0.5, y: int | None = None) -> dict[str, torch.Tensor]:
        """The rdm gates' alpha and beta by unit (empty for the native model)."""
        out = {}
        for unit in self._units:
            gate = getattr(unit, "rdm_gate", None)
            if gate is not None:
                name = unit.__dict__["forward"].view.name
                out[f"{name}.alpha"] = gate.alpha.detach()
                out[f"{name}.beta"] = gate.beta.detach()
        return out


def _gate_mode(gate: str, native: str, family: str) -> str:
    if gate not in (native, "rdm"):
        raise ValueError(f"{family} takes gate {native} (its own units) or rdm (Neural-RDM gates "
                         f"around them), got {gate!r}")
    return "native" if gate == native else "rdm"


class DiffusersDiT(DiffusersBackbone):
    """``DiTTransformer2DModel`` with random weights, built with build_model's keywords;
    ``dit_init`` zero-initialises every block's adaLN-Zero regressor and the head's modulation and
    projection, as DiT (and this toolkit's DiT) does: each block starts as the identity and the
    prediction at 0.  ``shared_embedder`` ties every block's time/label embedder (``norm1.emb``,
    a ``CombinedTimestepLabelEmbeddings``: sinusoid -> MLP of t, plus a label table) to block 0's,
    the one the head already reads, so the conditioning c(t, y) is computed by one embedder as in
    this toolkit's DiT; each block keeps its own adaLN-Zero regressor c -> 6 D.  The checkpoint
    then holds block 0's embedder only (:func:`_tie_embedders`).  ``dit_embedder_init`` gives
    every embedder DiT's (and this toolkit's) initialisation: time-MLP weights and the label table
    N(0, 0.02^2), time-MLP biases 0 (diffusers keeps PyTorch's defaults: the label table N(0, 1),
    the MLP uniform +/- 1/sqrt(fan_in))."""

    def __init__(self, *, input_size: int = 8, in_channels: int = 1, num_classes: int = 10,
                 frames: int | None = None, class_dropout_prob: float = 0.0,
                 gate: str = "adaln-zero", patch_size: int = 2, depth: int = 6, width: int = 128,
                 heads: int = 4, num_train_timesteps: int = 1000,
                 rdm_alpha_init: str | float = "rdm", dit_init: bool = False,
                 shared_embedder: bool = False, dit_embedder_init: bool = False):
        if frames is not None:
            raise ValueError("diffusers backbones take images, not videos (frames)")
        mode = _gate_mode(gate, "adaln-zero", "diffusers-dit")
        diffusers = require_diffusers()
        model = diffusers.DiTTransformer2DModel(
            num_attention_heads=heads, attention_head_dim=width // heads,
            in_channels=in_channels, out_channels=in_channels, num_layers=depth,
            sample_size=input_size, patch_size=patch_size, num_embeds_ada_norm=num_classes)
        if dit_init:  # DiT's recipe (diffusers' constructor keeps PyTorch's defaults)
            zero = [b.norm1.linear for b in model.transformer_blocks]
            for layer in (*zero, model.proj_out_1, model.proj_out_2):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        if dit_embedder_init:
            for block in model.transformer_blocks:
                emb = block.norm1.emb
                for layer in (emb.timestep_embedder.linear_1, emb.timestep_embedder.linear_2):
                    nn.init.normal_(layer.weight, std=0.02)
                    nn.init.zeros_(layer.bias)
                nn.init.normal_(emb.class_embedder.embedding_table.weight, std=0.02)
        super().__init__(model, num_classes=num_classes, time=DDPMTime(num_train_timesteps),
                         gate=mode, rdm_alpha_init=rdm_alpha_init)
        if shared_embedder:
            _tie_embedders(self)


_EMB = "model.transformer_blocks.{}.norm1.emb."


def _tie_embedders(net: DiffusersDiT) -> None:
    """Every block's ``norm1.emb`` becomes block 0's module (one set of parameters: ``parameters``
    and the optimizer see it once).  The state dict keeps block 0's copy only (safetensors
    refuses tensors that share memory), and loading fills the other blocks' keys from it."""
    blocks = net.model.transformer_blocks
    for block in blocks[1:]:
        block.norm1.emb = blocks[0].norm1.emb
    first, others = _EMB.format(0), [_EMB.format(i) for i in range(1, len(blocks))]

    def drop(module, state, prefix, local_metadata):
        for key in [k for k in state if any(k.startswith(prefix + o) for o in others)]:
            del state[key]

    def fill(module, state, prefix, *args):
        for key in [k for k in state if k.startswith(prefix + first)]:
            for other in others:
                state.setdefault(key.replace(prefix + first, prefix + other, 1), state[key])

    net.register_state_dict_post_hook(drop)
    net.register_load_state_dict_pre_hook(fill)


class DiffusersUNet(DiffusersBackbone):
    """``UNet2DModel`` with random weights, built with build_model's keywords (a label table of
    num_classes + 1 rows: the last is the null label)."""

    def __init__(self, *, input_size: int = 8, in_channels: int = 1, num_classes: int = 10,
                 frames: int | None = None, class_dropout_prob: float = 0.0, gate: str = "plain",
                 width: int = 32, levels: int = 2, layers_per_block: int = 1,
                 norm_groups: int = 8, head_dim: int = 8, num_train_timesteps: int = 1000,
                 rdm_alpha_init: str | float = "rdm"):
        if frames is not None:
            raise ValueError("diffusers backbones take images, not videos (frames)")
        mode = _gate_mode(gate, "plain", "diffusers-unet")
        diffusers = require_diffusers()
        down = ("DownBlock2D",) + ("AttnDownBlock2D",) * (levels - 1)
        up = ("AttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
        model = diffusers.UNet2DModel(
            sample_size=input_size, in_channels=in_channels, out_channels=in_channels,
            block_out_channels=tuple(width * 2**i for i in range(levels)),
            down_block_types=down, up_block_types=up, layers_per_block=layers_per_block,
            norm_num_groups=norm_groups, attention_head_dim=head_dim,
            num_class_embeds=num_classes + 1)
        super().__init__(model, num_classes=num_classes, time=DDPMTime(num_train_timesteps),
                         gate=mode, rdm_alpha_init=rdm_alpha_init)


DIFFUSERS_BACKBONES = {"diffusers-dit": DiffusersDiT, "diffusers-unet": DiffusersUNet}

DIFFUSERS_CONFIGS = {
    **{f"diffusers-dit-{size}/{p}": {"backbone": "diffusers-dit", "patch_size": p,
                                     **DIT_SIZES[size]}
       for size in ("N", "T") for p in (1, 2)},
    "diffusers-unet-T": {"backbone": "diffusers-unet", "width": 32, "levels": 2,
                         "layers_per_block": 1, "norm_groups": 8, "head_dim": 8},
}


# ------------------------------------------------------------------------------------------------
# A diffusers save_pretrained folder
# ------------------------------------------------------------------------------------------------

MODEL_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
#: Where a pipeline keeps its denoiser (model_index.json beside them).
PIPELINE_PARTS = ("transformer", "unet")


def _json(path) -> dict:
    import json

    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name} cannot be read as JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return value


def model_folder(path) -> object | None:
    """The folder holding a diffusers model's ``config.json`` (``path`` itself, or the
    ``transformer``/``unet`` part of a pipeline folder), or None if ``path`` looks like neither."""
    from pathlib import Path

    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "config.json").is_file():
        return path
    if (path / "model_index.json").is_file():
        return next((path / p for p in PIPELINE_PARTS if (path / p / "config.json").is_file()),
                    path)
    return None


def scheduler_time(folder) -> tuple[DDPMTime, str]:
    """The DDPM time of the scheduler saved with the model (``scheduler_config.json`` in the
    folder, or in the pipeline's ``scheduler/``), and where it came from; diffusers' DDPM
    defaults (1000 linear steps, 1e-4 to 0.02, epsilon) when there is none."""
    for candidate in (folder / "scheduler_config.json",
                      folder.parent / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            return DDPMTime.from_scheduler_config(_json(candidate)), str(candidate)
    return DDPMTime(), "DDPMScheduler defaults (no scheduler_config.json found)"


def _num_classes(name: str, config: dict) -> int | None:
    if name == "UNet2DModel":
        return config.get("num_class_embeds")
    if name == "DiTTransformer2DModel" or config.get("norm_type") == "ada_norm_zero":
        return config.get("num_embeds_ada_norm")
    return None


def load_folder(path) -> tuple[DiffusersBackbone, DDPMTime, str]:
    """A diffusers ``save_pretrained`` folder as a backbone (float32, eval mode), with its DDPM
    time and where that came from.  ``_class_name`` must be one of SUPPORTED_CLASSES (the class
    is taken from that fixed list, never imported by the name in the file) and the weights
    safetensors; loaded offline by the class's own ``from_pretrained``.  ValueError (one line)
    for anything else."""
    folder = model_folder(path)
    if folder is None or not (folder / "config.json").is_file():
        raise ValueError(f"{path} is not a diffusers model folder (no config.json)")
    config = _json(folder / "config.json")
    name = config.get("_class_name")
    if name not in SUPPORTED_CLASSES:
        raise ValueError(f"{folder / 'config.json'}: _class_name {name!r} is not supported "
                         f"(supported: {', '.join(SUPPORTED_CLASSES)})")
    if not (folder / MODEL_FILES[1]).is_file():
        raise ValueError(f"{folder} has no {MODEL_FILES[1]} (only safetensors weights are read)")
    time, source = scheduler_time(folder)
    diffusers = require_diffusers()
    cls = {n: getattr(diffusers, n) for n in SUPPORTED_CLASSES}[name]
    try:
        model = cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{folder}: diffusers cannot load this {name}: {first}") from None
    net = DiffusersBackbone(model.float().eval(), num_classes=_num_classes(name, config),
                            time=time)
    net.config["name"] = f"diffusers:{name}"
    return net.eval(), time, source
