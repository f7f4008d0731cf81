"""The Neural-RDM backbones: every backbone with every gate, on images and videos.

Small configurations only; every test is deterministic (fixed seeds).
"""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rdm_dynamics.models import (
    GATE_KINDS,
    MODEL_CONFIGS,
    ModelLoadError,
    build_model,
    load_model,
    model_builder,
)
from rdm_dynamics.models.layers import frames_to_sequences, sequences_to_frames

SMALL = {  # the smallest useful shape of each backbone
    "RDM-DiT-T/2": {"depth": 2, "width": 32, "heads": 2},
    "RDM-UNet-T": {"width": 16, "heads": 2},
    "RDM-MLP-T": {"depth": 3, "width": 16},
}
BACKBONES = list(SMALL)


def small(name, gate="rdm", frames=None, **kwargs):
    torch.manual_seed(0)
    return build_model(name, gate=gate, frames=frames, **{**SMALL[name], **kwargs})


def perturb(model, scale=0.1, seed=1):
    """Add noise to every parameter, so no zero-initialised map (head, gates, modulation)
    hides a branch from the output or the gradient."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def inputs(model, batch=2, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *model.sample_shape), generator=g)
    t = torch.rand(batch, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return x, t, y


def unit_io(model, x, t, y):
    """(unit name, input, output) of every residual unit in the order the forward pass runs."""
    seen = []
    hooks = [u.register_forward_hook(lambda m, args, out: seen.append((m.name, args[0], out)))
             for u in model.residual_units()]
    try:
        model(x, t, y)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("frames", [None, 3], ids=["image", "video"])
@pytest.mark.parametrize("gate", GATE_KINDS)
@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_and_gate_runs_forward_and_backward(name, gate, frames):
    model = perturb(small(name, gate, frames)).train()
    x, t, y = inputs(model)
    out = model(x, t, y)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


@pytest.mark.parametrize("frames", [None, 2], ids=["image", "video"])
@pytest.mark.parametrize("gate, options", [("rezero", {}), ("adaln-zero", {}),
                                           ("rdm", {"rdm_alpha_init": 0.0}),
                                           ("rdm", {"rdm_alpha_init": 0.0,
                                                    "rdm_time_conditioned": True})],
                         ids=["rezero", "adaln-zero", "rdm-alpha0", "rdm-alpha0-timecond"])
@pytest.mark.parametrize("name", BACKBONES)
def test_zero_initialised_gates_make_every_unit_the_identity(name, gate, options, frames):
    model = small(name, gate, frames, **options)
    seen = unit_io(model, *inputs(model))
    assert len(seen) == len(model.residual_units())
    for unit, z_in, z_out in seen:
        assert torch.equal(z_in, z_out), unit


@pytest.mark.parametrize("gate", ["plain", "post-ln", "rdm"])
@pytest.mark.parametrize("name", BACKBONES)
def test_other_gates_are_not_the_identity_at_init(name, gate):
    """Negative control of the identity test: it fails for gates that are not zero at init."""
    seen = unit_io(small(name, gate), *inputs(small(name, gate)))
    assert all(not torch.equal(z_in, z_out) for _, z_in, z_out in seen)


@pytest.mark.parametrize("name", BACKBONES)
def test_rdm_gates_start_at_the_ode_consistent_step(name):
    for spec, expected in [("rdm", lambda L: 1 / L), ("euler", lambda L: 1 / L),
                           ("inv-sqrt", lambda L: 1 / math.sqrt(L)), ("plain", lambda L: 1.0),
                           (0.25, lambda L: 0.25)]:
        model = small(name, "rdm", rdm_alpha_init=spec, rdm_beta_init=0.5)
        L = len(model.residual_units())
        values = model.gate_values()
        for unit in model.residual_units():
            assert torch.allclose(values[f"{unit.name}.alpha"], torch.tensor(expected(L))), spec
            assert torch.all(values[f"{unit.name}.beta"] == 0.5)


@pytest.mark.parametrize("frames", [None, 2], ids=["image", "video"])
@pytest.mark.parametrize("name", BACKBONES)
def test_residual_units_are_listed_in_forward_order(name, frames):
    model = small(name, "plain", frames)
    units = model.residual_units()
    called = [unit for unit, _, _ in unit_io(model, *inputs(model))]
    assert called == [u.name for u in units]
    assert len(set(called)) == len(called)
    if name.startswith("RDM-DiT"):
        assert len(units) == 2 * SMALL[name]["depth"]
        assert [u.name for u in units[:2]] == ["blocks.0.attn", "blocks.0.mlp"]


@pytest.mark.parametrize("name", BACKBONES)
def test_gate_values_report_the_current_gates(name):
    expected_at_init = {"plain": 1.0, "post-ln": 1.0, "rezero": 0.0, "adaln-zero": 0.0}
    for gate, value in expected_at_init.items():
        model = small(name, gate)
        values = model.gate_values()
        for unit in model.residual_units():
            assert torch.all(values[f"{unit.name}.alpha"] == value), (gate, unit.name)
    rezero = small(name, "rezero")
    first = rezero.residual_units()[0]
    with torch.no_grad():
        first.gate.alpha.fill_(0.3)
    assert float(rezero.gate_values()[f"{first.name}.alpha"]) == pytest.approx(0.3)

    # Conditioned gates depend on where they are read: adaln-zero on (t, y), rdm on t.
    for gate, options, args_a, args_b in [("adaln-zero", {}, (0.1, 3), (0.9, 3)),
                                          ("adaln-zero", {}, (0.5, 1), (0.5, 2)),
                                          ("rdm", {"rdm_time_conditioned": True}, (0.1, None),
                                           (0.9, None))]:
        model = perturb(small(name, gate, **options))
        a, b = model.gate_values(*args_a), model.gate_values(*args_b)
        key = f"{model.residual_units()[0].name}.alpha"
        assert not torch.allclose(a[key], b[key]), (gate, args_a, args_b)
    unconditioned = perturb(small(name, "rdm"))
    a, b = unconditioned.gate_values(0.1), unconditioned.gate_values(0.9)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("frames", [None, 2], ids=["image", "video"])
@pytest.mark.parametrize("name", BACKBONES)
def test_config_rebuilds_the_same_model(name, frames):
    model = perturb(small(name, "rdm", frames, rdm_alpha_init=0.5,
                          rdm_time_conditioned=True)).eval()
    config = json.loads(json.dumps(model.config))
    assert config == model.config
    rebuilt = build_model(**config).eval()
    assert rebuilt.config == model.config
    state = model.state_dict()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape
                                                                     for k, v in state.items()}
    rebuilt.load_state_dict(state)
    x, t, y = inputs(model)
    assert torch.equal(rebuilt(x, t, y), model(x, t, y))


def test_every_named_configuration_builds():
    for name, config in MODEL_CONFIGS.items():
        with torch.device("meta"):
            model = build_model(name, input_size=32, in_channels=4, num_classes=1000)
        assert model.config["name"] == name
        assert len(model.residual_units()) > 0
        if config["backbone"] == "dit":
            assert len(model.residual_units()) == 2 * config["depth"]
            assert name.endswith(f"/{config['patch_size']}")


@pytest.mark.parametrize("name", BACKBONES)
def test_class_dropout_happens_only_in_training(name):
    model = perturb(small(name, "rdm", class_dropout_prob=1.0))
    x, t, y = inputs(model)
    model.train()
    assert torch.equal(model(x, t, y), model(x, t, None))  # every label dropped to null
    model.eval()
    assert not torch.allclose(model(x, t, y), model(x, t, None))  # labels kept
    never = perturb(small(name, "rdm", class_dropout_prob=0.0)).train()
    assert torch.equal(never(x, t, y), never.eval()(x, t, y))


def test_label_dropout_rate():
    """Fraction of dropped labels among n = 20000 at p = 0.3: within 5 standard errors
    (false-alarm rate below 1e-6)."""
    model = small("RDM-DiT-T/2", class_dropout_prob=0.3).train()
    torch.manual_seed(3)
    y = torch.zeros(20_000, dtype=torch.long)
    dropped = (model.cond.label.drop(y) == 10).double().mean().item()
    se = math.sqrt(0.3 * 0.7 / y.numel())
    assert abs(dropped - 0.3) < 5 * se


def test_spatial_blocks_keep_frames_apart_and_temporal_blocks_mix_them():
    """Latte's factorisation: with one (spatial) block a frame's output depends on that frame
    only; with a second (temporal) block it depends on the other frames."""
    for depth, mixes in [(1, False), (2, True)]:
        model = perturb(small("RDM-DiT-T/2", "rdm", 3, depth=depth)).eval()
        x, t, y = inputs(model)
        x2 = x.clone()
        x2[:, 0] += 1.0
        changed = (model(x2, t, y) - model(x, t, y)).abs().amax(dim=(2, 3, 4))
        assert changed[:, 0].min() > 0
        assert bool((changed[:, 1:] > 0).all()) == mixes


def test_unpatchify_inverts_patch_layout():
    model = small("RDM-DiT-T/2")
    x = torch.randn(3, *model.sample_shape)
    B, C, H, _ = x.shape
    p, g = model.patch_size, model.grid
    tokens = x.view(B, C, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(B, g * g, p * p * C)
    assert torch.equal(model.unpatchify(tokens), x)


def test_frame_sequences_round_trip():
    x = torch.randn(2 * 3, 5, 4)
    seq = frames_to_sequences(x, 3)
    assert seq.shape == (2 * 5, 3, 4)
    assert torch.equal(seq[1 * 5 + 2], x.view(2, 3, 5, 4)[1, :, 2])  # video 1, position 2
    assert torch.equal(sequences_to_frames(seq, 5), x)


@settings(max_examples=12, deadline=None)
@given(patch=st.sampled_from([1, 2, 4]), grid=st.integers(1, 3), batch=st.integers(1, 3),
       frames=st.sampled_from([None, 1, 2]), channels=st.integers(1, 3))
def test_dit_output_has_the_input_shape(patch, grid, batch, frames, channels):
    model = build_model("RDM-DiT-T/2", patch_size=patch, input_size=patch * grid,
                        in_channels=channels, frames=frames, depth=2, width=16, heads=2)
    x = torch.randn(batch, *model.sample_shape)
    assert model(x, torch.rand(batch), None).shape == x.shape


@pytest.mark.parametrize("name", BACKBONES)
def test_bfloat16_autocast_runs(name):
    model = perturb(small(name, "rdm", 2))
    x, t, y = inputs(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, y)
    assert out.shape == x.shape and torch.isfinite(out.float()).all()


def test_forward_compiles_as_one_graph():
    """No graph break, so no python-side data-dependent control flow, in either backbone."""
    for name, options in [("RDM-DiT-T/2", {"depth": 2}),
                          ("RDM-UNet-T", {"channel_mult": [1], "attention_levels": [0]})]:
        model = perturb(small(name, "rdm", 2, **options)).train()
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        x, t, y = inputs(model)
        compiled(x, t, y).square().mean().backward()


@pytest.mark.parametrize("bad, match", [
    ({"name": "RDM-DiT-Q/2"}, "unknown model"),
    ({"name": "RDM-DiT-T/2", "gate": "gated"}, "unknown gate"),
    ({"name": "RDM-DiT-T/2", "depht": 3}, "unknown option"),
    ({"name": "RDM-DiT-T/2", "input_size": 7}, "not divisible"),
    ({"name": "RDM-UNet-T", "input_size": 6, "channel_mult": [1, 2, 2]}, "not divisible"),
    ({"name": "RDM-UNet-T", "attention_levels": [5]}, "attention_levels"),
    ({"name": "RDM-DiT-T/2", "rdm_alpha_init": "fast"}, "unknown schedule"),
    ({"name": "RDM-DiT-T/2", "class_dropout_prob": 1.5}, "class_dropout_prob"),
    ({"name": "RDM-DiT-T/2", "heads": 5}, "divisible"),
])
def test_bad_options_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        build_model(**bad)


def test_wrong_input_shape_is_a_clear_error():
    model = small("RDM-DiT-T/2", frames=2)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 2, 1, 8, 8\)"):
        model(torch.randn(2, 1, 8, 8), torch.rand(2), None)


class FakeCheckpoint:
    """Anything with ``meta`` and ``state_dict(prefix)`` is a checkpoint to load_model."""

    def __init__(self, model, train_config=None):
        self.meta = {"model_config": model.config, "train_config": train_config or {}}
        self.tensors = {f"ema.{k}": v.clone() for k, v in model.state_dict().items()}

    def state_dict(self, prefix):
        p = prefix + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}


def test_load_model_rebuilds_a_model_from_its_config_and_weights():
    model = perturb(small("RDM-DiT-T/2"))
    net = load_model(FakeCheckpoint(model), "ema")
    assert not net.training and net.config == model.config
    x, t, y = inputs(model)
    torch.testing.assert_close(net(x, t, y), model.eval()(x, t, y), rtol=0, atol=0)
    with pytest.raises(ModelLoadError, match="the model weights do not fit"):
        load_model(FakeCheckpoint(model), "model")  # no model.* tensors saved
    with pytest.raises(ModelLoadError, match="weights must be"):
        load_model(FakeCheckpoint(model), "best")


def test_a_checkpoint_never_chooses_the_code_to_import():
    ckpt = FakeCheckpoint(small("RDM-DiT-T/2"), {"model_factory": "somewhere:build"})
    with pytest.raises(ModelLoadError, match="--model-factory somewhere:build"):
        load_model(ckpt)
    assert model_builder(None) is build_model
    for factory, match in (("nocolon", "must look like"), ("no_such_module:f", "cannot import")):
        with pytest.raises(ModelLoadError, match=match):
            model_builder(factory)
