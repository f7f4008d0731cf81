"""diffusers' backbones (DESIGN.md section 3d, issue 22): the DDPM time against the VP SDE, unit
discovery, verify --ckpt on save_pretrained folders of each supported class, the rdm gates around
an existing model's units, train/verify/sample on a diffusers backbone, bad folders."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from rdm_dynamics.checks import run_claim  # noqa: E402
from rdm_dynamics.checks import trained_sensitivity as C9  # noqa: E402
from rdm_dynamics.checks.trained_subject import checkpoint_config  # noqa: E402
from rdm_dynamics.models import build_model  # noqa: E402
from rdm_dynamics.models.diffusers_adapters import (  # noqa: E402
    DIFFUSERS_RANGE,
    DDPMTime,
    DiffusersBackbone,
    find_units,
)
from rdm_dynamics.probe import check_model  # noqa: E402
from rdm_dynamics.sde import VPSDE  # noqa: E402
from rdm_dynamics.verify import main as verify  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v)[:3])


def test_the_installed_diffusers_is_in_the_stated_range_and_pyproject_says_the_same():
    low, high = re.fullmatch(r">=([\d.]+),<([\d.]+)", DIFFUSERS_RANGE).groups()
    assert version_tuple(low) <= version_tuple(diffusers.__version__) < version_tuple(high)
    text = (ROOT / "pyproject.toml").read_text()
    assert f'"diffusers{DIFFUSERS_RANGE}"' in text
    assert re.search(r'dev = \[[^\]]*"rdm_dynamics\[diffusers\]"', text, re.S)


# ------------------------------------------------------------------------------------------------
# Time: diffusers' discrete DDPM against the VP SDE
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [{}, {"num_train_timesteps": 200, "beta_start": 5e-4,
                                         "beta_end": 0.05}])
def test_alphas_cumprod_and_add_noise_match_the_vp_sde_within_the_stated_bound(config):
    scheduler = diffusers.DDPMScheduler(**config)
    time = DDPMTime.from_scheduler_config(dict(scheduler.config))
    sde = VPSDE(**time.sde_options)
    k = torch.arange(time.N)
    t = time.time(k)
    assert torch.allclose(time.timestep(t), k.double())
    log_ddpm = scheduler.alphas_cumprod.double().log()
    gap = (log_ddpm - 2 * sde.log_mean_coef(t)).abs()
    rounding = (k + 1) * 2.0**-23  # diffusers' cumprod runs in float32
    bound = time.log_alpha_bound() + rounding
    assert (gap <= bound).all()
    assert float(bound[-1]) < 0.03 * float(-log_ddpm[-1])  # a small share of the noise level
    # add_noise: the coefficients differ by at most what the log bound allows
    x0 = torch.randn(time.N, 3, dtype=torch.float64)
    eps = torch.randn(time.N, 3, dtype=torch.float64)
    ref = scheduler.add_noise(x0, eps, k)
    ours = sde.perturb(x0, t, eps)
    abar = torch.exp(2 * sde.log_mean_coef(t))
    d_mean = abar.sqrt() * (torch.exp(bound / 2) - 1)  # |sqrt(abar e^d) - sqrt(abar)|
    d_std = abar * (torch.exp(bound) - 1) / (1 - abar).sqrt()  # |du| / sqrt(u), u = 1 - abar
    allowed = d_mean[:, None] * x0.abs() + d_std[:, None] * eps.abs() + 1e-7
    assert ((ref - ours).abs() <= allowed).all()


def test_a_mis_scaled_sde_breaks_the_bound():
    """Negative control: the bound is tight enough to catch a 5% error in beta_max."""
    scheduler = diffusers.DDPMScheduler()
    time = DDPMTime()
    opts = time.sde_options
    sde = VPSDE(opts["beta_min"], 1.05 * opts["beta_max"])
    t = time.time(torch.arange(time.N))
    gap = (scheduler.alphas_cumprod.double().log() - 2 * sde.log_mean_coef(t)).abs()
    assert (gap > time.log_alpha_bound()).any()


@pytest.mark.parametrize("config, word", [
    ({"_class_name": "EulerDiscreteScheduler"}, "EulerDiscreteScheduler"),
    ({"beta_schedule": "scaled_linear"}, "scaled_linear"),
    ({"prediction_type": "sample"}, "sample"),
    ({"rescale_betas_zero_snr": True}, "zero"),
])
def test_a_scheduler_the_mapping_does_not_cover_is_refused(config, word):
    with pytest.raises(ValueError, match=word):
        DDPMTime.from_scheduler_config(config)
    assert DDPMTime.from_scheduler_config({"prediction_type": "v_prediction"}).prediction == "v"


# ------------------------------------------------------------------------------------------------
# Units
# ------------------------------------------------------------------------------------------------

def small_unet(**kw):
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=8,
        attention_head_dim=8, **kw)


def small_dit():
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=1, num_layers=3,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10)


def small_transformer2d():
    return diffusers.Transformer2DModel(num_attention_heads=2, attention_head_dim=8,
                                        in_channels=8, num_layers=2, norm_num_groups=4,
                                        sample_size=8)


def test_unet_units_are_the_state_to_state_resnets_and_the_attentions():
    torch.manual_seed(0)
    unet = small_unet()
    units = find_units(unet)
    resnets = [m for m in unet.modules() if type(m).__name__ == "ResnetBlock2D"]
    kept = [r for r in resnets if r in units]
    # level 1's first resnet (16 -> 32) and every up-block resnet (stream + skip concatenated)
    # have a 1x1 shortcut projection: transitions, not units
    assert all(r.conv_shortcut is None for r in kept)
    assert all(r.conv_shortcut is not None for r in resnets if r not in kept)
    attentions = [m for m in unet.modules() if type(m).__name__ == "Attention"]
    assert len(kept) == 3 and len(attentions) == 4  # down 1, mid 1, up 2
    assert set(units) == set(kept) | set(attentions) and len(units) == 7
    net = DiffusersBackbone(unet, num_classes=None, time=DDPMTime())
    assert len(net.residual_units()) == len(units)
    assert net.config["gate"] == "plain"
    assert DiffusersBackbone(small_dit(), num_classes=10, time=DDPMTime()).config["gate"] == \
        "adaln-zero"


# ------------------------------------------------------------------------------------------------
# verify --ckpt on save_pretrained folders
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("build", [small_dit, small_transformer2d, small_unet])
def test_verify_reads_each_supported_class_from_its_folder(tmp_path, build, capsys):
    torch.manual_seed(0)
    build().save_pretrained(tmp_path / "model")
    code = verify(["--ckpt", str(tmp_path / "model"), "--quick", "--jobs", "1", "--no-figures",
                   "--out", str(tmp_path / "report")])
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    status = {c["id"]: c["status"] for c in report["checks"]}
    assert status["trained-propagation"] in ("pass", "fail")  # judged, not crashed
    assert status["trained-sensitivity"] in ("pass", "fail")
    assert status["denoising-risk"] == "n/a"  # a folder holds no data law
    assert code == (0 if report["passed"] else 1)
    c9 = next(c for c in report["checks"] if c["id"] == "trained-sensitivity")
    assert c9["metrics"]["adjoint_agreement_error"] <= 1e-8


def test_the_adjoint_check_fails_on_a_diffusers_model_whose_unit_step_is_wrong(tmp_path):
    """C9's negative control on a diffusers folder: a unit's Jacobian left out of its step."""
    torch.manual_seed(0)
    small_unet().save_pretrained(tmp_path / "m")
    config = checkpoint_config(str(tmp_path / "m"), quick=True)
    assert run_claim(C9, config).passed
    measured = C9.measure(config, skip_vjp=(1,))
    assert measured.metrics["adjoint_agreement_error"] > C9.AGREEMENT_MAX


def bad_folder(tmp_path, config=None, weights=True, scheduler=None):
    folder = tmp_path / "bad"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config if isinstance(config, str)
                                            else json.dumps(config))
    if weights:
        (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 16)
    if scheduler is not None:
        (folder / "scheduler_config.json").write_text(json.dumps(scheduler))
    return folder


@pytest.mark.parametrize("kw, message", [
    (dict(config={"_class_name": "StableDiffusionSafetyChecker"}), "not supported"),
    (dict(config={"_class_name": "os:system"}), "not supported"),
    (dict(config="{not json"), "JSON"),
    (dict(config={"_class_name": "UNet2DModel"}, weights=False), "safetensors"),
    (dict(config={"_class_name": "UNet2DModel"}), "cannot load"),
    (dict(config={"_class_name": "UNet2DModel"},
          scheduler={"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2"}),
     "does not map"),
])
def test_a_bad_model_folder_is_one_line_and_exit_2(tmp_path, capsys, kw, message):
    folder = bad_folder(tmp_path, **kw)
    code = verify(["--ckpt", str(folder), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert "Traceback" not in err


def test_without_diffusers_the_diffusers_paths_say_what_to_install(tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    small_dit().save_pretrained(tmp_path / "m")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    code = verify(["--ckpt", str(tmp_path / "m"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "pip install" in err
    with pytest.raises(ValueError, match="pip install"):
        build_model("diffusers-dit-N/2", gate="adaln-zero")


# ------------------------------------------------------------------------------------------------
# rdm gates around an existing model's units
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("build", [small_dit, small_unet])
def test_rdm_gates_at_alpha_1_beta_0_compute_the_unconverted_model(build):
    torch.manual_seed(0)
    model = build().double().eval()
    y = torch.randint(10, (3,)) if type(model).__name__.startswith("DiT") else None
    classes = 10 if y is not None else None
    plain = DiffusersBackbone(model, num_classes=classes, time=DDPMTime()).double()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    with torch.no_grad():
        reference = plain(x, t, y)
    import copy

    gated = DiffusersBackbone(copy.deepcopy(model), num_classes=classes, time=DDPMTime(),
                              gate="rdm", rdm_alpha_init=1.0).double()
    with torch.no_grad():
        same = gated(x, t, y)
        for unit in gated._units:
            # control: a nonzero beta changes the output (not a constant one: LayerNorm over the
            # channels would remove it)
            unit.rdm_gate.beta.copy_(1e-3 * torch.randn_like(unit.rdm_gate.beta))
        shifted = gated(x, t, y)
    scale = reference.abs().max()
    assert (same - reference).abs().max() <= 1e-12 * scale
    assert (shifted - reference).abs().max() > 1e-6 * scale


def test_rdm_gates_start_at_the_ode_consistent_step():
    net = build_model("diffusers-dit-N/2", gate="rdm", input_size=8, in_channels=1)
    alphas = [v for k, v in net.gate_values().items() if k.endswith("alpha")]
    assert len(alphas) == 4 and all(torch.allclose(a, torch.full_like(a, 1 / 4)) for a in alphas)
    with pytest.raises(ValueError, match="adaln-zero"):
        build_model("diffusers-dit-N/2", gate="rezero")
    dit = build_model("diffusers-dit-N/2", gate="adaln-zero", dit_init=True)  # DiT's recipe
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert dit(x, torch.rand(2), torch.arange(2)).abs().max() == 0
        assert build_model("diffusers-dit-N/2", gate="adaln-zero")(
            x, torch.rand(2), torch.arange(2)).abs().max() > 0


def test_a_shared_embedder_is_one_embedder_that_every_block_trains(tmp_path):
    """shared_embedder: one embedder's parameters (the toolkit DiT's count), one copy in the
    checkpoint, and its gradient is the sum of the four blocks' (checked against the untied model
    with four equal embedders); a training step moves it and keeps it shared."""
    from safetensors.torch import load_file, save_file

    def dit(**kw):
        return build_model("diffusers-dit-N/2", gate="adaln-zero", **kw)

    def count(m):
        return sum(p.numel() for p in m.parameters())

    untied, tied = dit(), dit(shared_embedder=True)
    blocks = tied.model.transformer_blocks
    assert all(b.norm1.emb is blocks[0].norm1.emb for b in blocks)
    assert count(untied) - count(tied) == 3 * count(blocks[0].norm1.emb)
    assert count(tied) == count(build_model("RDM-DiT-N/2", gate="adaln-zero"))
    state = tied.state_dict()
    first = [k for k in state if "transformer_blocks.0.norm1.emb." in k]
    assert first and not any(".norm1.emb." in k and k not in first for k in state)
    assert sum(".norm1.emb." in k for k in untied.state_dict()) == 4 * len(first)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    again = dit(shared_embedder=True)
    again.load_state_dict(load_file(tmp_path / "w.safetensors"), strict=True)
    four = dit()
    four.load_state_dict(state | {k.replace("blocks.0.", f"blocks.{i}.", 1): state[k]
                                  for k in first for i in range(1, 4)}, strict=True)
    x, t, y = torch.randn(4, 1, 8, 8), torch.rand(4), torch.arange(4)
    for m in (tied, four, again):
        m.zero_grad()
        (m(x, t, y) ** 2).mean().backward()

    def grad(m, i):
        return m.model.transformer_blocks[i].norm1.emb.timestep_embedder.linear_1.weight.grad

    summed = sum(grad(four, i) for i in range(4))
    assert torch.allclose(grad(tied, 0), summed, atol=1e-6) and summed.abs().max() > 0
    assert not torch.allclose(grad(four, 0), summed, atol=1e-6)  # the other blocks contribute
    assert torch.equal(grad(tied, 0), grad(again, 0))
    table = blocks[2].norm1.emb.class_embedder.embedding_table.weight
    before = table.detach().clone()
    torch.optim.AdamW(tied.parameters(), lr=1e-3).step()
    assert not torch.equal(table, before)
    assert table is blocks[0].norm1.emb.class_embedder.embedding_table.weight
    ours = dit(dit_embedder_init=True)
    stds = [float(m.model.transformer_blocks[3].norm1.emb.class_embedder.embedding_table.weight
                  .detach().std()) for m in (ours, untied)]
    assert abs(stds[0] - 0.02) < 0.003 and stds[1] > 0.5  # DiT's N(0, 0.02^2), diffusers' N(0, 1)

# ------------------------------------------------------------------------------------------------
# train, verify (C10), sample on a diffusers backbone; the in-memory API
# ------------------------------------------------------------------------------------------------

def test_train_verify_and_sample_a_diffusers_unet_with_rdm_gates(tmp_path):
    from rdm_dynamics.sample import main as sample
    from rdm_dynamics.training.checkpoint import load_checkpoint
    from rdm_dynamics.training.known_law import LAW_PREFIX
    from rdm_dynamics.training.loop import train
    from rdm_dynamics.training.settings import TrainConfig

    out = tmp_path / "run"
    cfg = TrainConfig(model="diffusers-unet-T", gate="rdm", data="digits-gmm", steps=4,
                      batch_size=8, warmup=0, lr=1e-3, log_every=1, n_samples=2,
                      sample_steps=1, progress=False, out=str(out), device="cpu")
    train(cfg)
    ckpt = load_checkpoint(str(out))
    assert ckpt.path.suffix == ".json" and ckpt.state_dict(LAW_PREFIX)  # the law is stored
    assert not list(out.glob("*.pt")) and not list(out.glob("*.bin"))  # no pickle
    alphas = [v for k, v in ckpt.state_dict("ema").items() if k.endswith("rdm_gate.alpha")]
    assert alphas and any((a - 1 / len(alphas)).abs().max() > 0 for a in alphas)  # trained
    code = verify(["--ckpt", str(out), "--only", "C10", "--quick", "--jobs", "1",
                   "--no-figures", "--out", str(tmp_path / "r")])
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["checks"][0]["status"] in ("pass", "fail")  # C10 ran on the known law
    assert code == (0 if report["passed"] else 1)
    assert report["gate"] == "rdm"
    assert sample(["--ckpt", str(out), "--n", "2", "--steps", "2",
                   "--out", str(tmp_path / "s.png")]) == 0


def test_check_model_takes_any_module_with_its_units():
    from torch import nn

    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.f = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d))

        def forward(self, z, scale=1.0):
            return z + scale * self.f(z)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(65, 16)
            self.blocks = nn.ModuleList(Block(16) for _ in range(3))
            self.out = nn.Linear(16, 64)

        def forward(self, x, t, y=None):
            h = self.inp(torch.cat([x.flatten(1), t[:, None].to(x.dtype)], 1))
            for b in self.blocks:
                h = b(h, scale=0.5)
            return self.out(h).view_as(x)

    torch.manual_seed(0)
    net = Net()
    report = check_model(net, list(net.blocks), sample_shape=(1, 8, 8))
    c8, c9 = report["checks"]
    assert c9["status"] == "pass" and c9["metrics"]["chain_adjoint_error"] <= 1e-8
    # a residual this close to 0 is the statement holding best: C8's band is one-sided
    assert 0 <= c8["metrics"]["linear_response_residual"] < 0.01
    assert c8["status"] == "pass", c8["failed"]
    assert c8["expected"]["linear_response_residual"][0] is None
    assert report["depth"] == 3 and set(report) >= {"passed", "checks", "seed", "versions"}
    with pytest.raises(ValueError, match="not a residual unit"):
        check_model(net, [net.inp], sample_shape=(1, 8, 8))


@pytest.mark.slow
def test_the_study_runs_on_a_diffusers_backbone(tmp_path):
    from rdm_dynamics.study import main as study

    spec = tmp_path / "study.toml"
    spec.write_text('''
[train]
model = "diffusers-dit-N/2"
model_options = { width = 32, heads = 2 }
data = "digits-gmm"
steps = 2
batch_size = 8
warmup = 0
log_every = 1
ckpt_every = 2
n_samples = 2
sample_steps = 1
device = "cpu"

[[grid]]
gate = ["rdm"]
depth = [2, 4]
init = ["iid"]
seed = [0]

[measure]
quick = true
fd_samples = 8
sample_steps = 2
''')
    code = study(["--file", str(spec), "--out", str(tmp_path / "s"), "--no-figures"])
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert code in (0, 1) and {c["id"] for c in report["checks"]} >= {"depth-consistency",
                                                                      "depth-scaling"}


def test_smooth_init_of_a_diffusers_backbone_says_to_use_iid(tmp_path, capsys):
    """diffusers' layers keep PyTorch's random biases, for which --init smooth has no law: one
    line naming the tensor and the way out, exit 2, nothing written."""
    from rdm_dynamics.train import main as train_main

    code = train_main(["--model", "diffusers-dit-N/2", "--data", "digits-gmm", "--steps", "1",
                       "--init", "smooth", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--init iid" in err, err
    assert not (tmp_path / "run").exists()
