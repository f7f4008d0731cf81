"""Depth-smooth initialisation (models.depth_init): the 2N model at tau_(2i) starts with the N
model's weights at tau_i, every unit keeps its default law's variance, i.i.d. stays bit for bit."""

from __future__ import annotations

import pytest
import torch

from rdm_dynamics.models import GATE_KINDS, build_model, initialize
from rdm_dynamics.models.depth_init import _random_tensors, default_variance, unit_groups
from rdm_dynamics.training.loop import build_network
from rdm_dynamics.training.settings import TrainConfig

BACKBONES = {  # name -> (depth option, value at N)
    "RDM-DiT-T/2": ("depth", 2),
    "RDM-UNet-T": ("blocks_per_level", 1),
}


def _pair(name, gate, n_factor=2, frames=None, seed=0, modes=3):
    option, base = BACKBONES[name]
    models = []
    for depth in (base, base * n_factor):
        torch.manual_seed(123 + depth)  # a different global state per depth: must not matter
        net = build_model(name, gate=gate, frames=frames, **{option: depth})
        models.append(initialize(net, "smooth", seed, modes))
    return models


def _branch_state(unit):
    return dict(unit.branch.named_parameters())


@pytest.mark.parametrize("frames", [None, 2])
@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("gate", GATE_KINDS)
def test_2n_model_at_even_units_equals_n_model(name, gate, frames):
    small, large = _pair(name, gate, frames=frames)
    g_small, g_large = unit_groups(small), unit_groups(large)
    assert g_small.keys() == g_large.keys()
    compared = 0
    for key, units in g_small.items():
        big = g_large[key]
        step = len(big) // len(units)
        assert step in (1, 2) and len(big) == step * len(units)
        for j, unit in enumerate(units):
            a, b = _branch_state(unit), _branch_state(big[step * j])
            assert a.keys() == b.keys()
            for k in a:
                assert torch.equal(a[k], b[k]), (key, j, k)
                compared += 1
    assert compared > 0
    # parameters outside the units agree too (same names, same draws)
    unit_params = {id(p) for u in small.residual_units() for p in u.parameters()}
    big_named = dict(large.named_parameters())
    for n, p in small.named_parameters():
        if id(p) not in unit_params and "gate" not in n and n in big_named:
            if p.shape == big_named[n].shape:
                assert torch.equal(p, big_named[n]), n


def test_units_vary_smoothly_and_differ_within_a_group():
    _, large = _pair("RDM-DiT-T/2", "rdm", n_factor=8)  # 16 blocks
    units = unit_groups(large)["blocks.*.mlp[Mlp]"]
    w = torch.stack([u.branch.fc1.weight.detach() for u in units])
    steps = (w[1:] - w[:-1]).flatten(1).norm(dim=1) / w[0].norm()
    assert steps.max() < 0.35                      # neighbours are close ...
    assert (w[-1] - w[0]).norm() / w[0].norm() > 0.5   # ... the ends are not the same unit


def test_one_mode_makes_every_unit_of_a_role_equal():
    (net,) = [initialize(build_model("RDM-DiT-T/2", depth=4), "smooth", 0, modes=1)]
    units = unit_groups(net)["blocks.*.attn[Attention]"]
    for u in units[1:]:
        assert torch.equal(u.branch.qkv.weight, units[0].branch.qkv.weight)


def test_seed_changes_the_function():
    a = initialize(build_model("RDM-DiT-T/2", depth=2), "smooth", 0)
    b = initialize(build_model("RDM-DiT-T/2", depth=2), "smooth", 1)
    assert not torch.equal(a.blocks[0].mlp.branch.fc1.weight, b.blocks[0].mlp.branch.fc1.weight)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_each_tensor_keeps_the_default_variance(name):
    """The variance table agrees with the backbone's own initialisation (5 standard errors of a
    sample variance), and a smooth tensor has the table's variance."""
    option, _ = BACKBONES[name]
    torch.manual_seed(0)
    default = build_model(name, gate="rdm", **{option: 2})
    smooth = initialize(build_model(name, gate="rdm", **{option: 2}), "smooth", 0)
    smooth_params = dict(smooth.named_parameters())
    checked = 0
    for mod, pname, qualified, p in _random_tensors(default):
        v = default_variance(mod, pname, p, qualified)
        for values in (p.detach().double(), smooth_params[qualified].detach().double()):
            n = values.numel()
            if n < 200:
                continue
            m2 = values.square().mean().item()
            se = v * (2.0 / n) ** 0.5 * 1.3  # uniform laws have a smaller fourth moment
            assert abs(m2 - v) < 5 * se, (qualified, m2, v)
            checked += 1
    assert checked > 10


def test_iid_is_the_backbone_s_own_initialisation_bit_for_bit():
    torch.manual_seed(5)
    a = build_model("RDM-UNet-T", gate="rdm")
    torch.manual_seed(5)
    b = initialize(build_model("RDM-UNet-T", gate="rdm"), "iid", 5)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), n


def test_training_builds_the_smooth_model():
    class Data:
        sample_shape, num_classes = (1, 8, 8), 10

    cfg = TrainConfig(model="RDM-DiT-T/2", init="smooth", model_options={"depth": 2})
    net = build_network(cfg, Data())
    ref = initialize(build_model("RDM-DiT-T/2", depth=2, class_dropout_prob=0.0), "smooth",
                     cfg.seed)
    assert torch.equal(net.blocks[1].mlp.branch.fc2.weight, ref.blocks[1].mlp.branch.fc2.weight)
    iid = build_network(TrainConfig(model="RDM-DiT-T/2", model_options={"depth": 2}), Data())
    assert not torch.equal(iid.blocks[1].mlp.branch.fc2.weight, net.blocks[1].mlp.branch.fc2.weight)


def test_unknown_init_and_modes_are_refused():
    net = build_model("RDM-DiT-T/2", depth=2)
    with pytest.raises(ValueError, match="init must be one of"):
        initialize(net, "fancy", 0)
    with pytest.raises(ValueError, match="modes"):
        initialize(net, "smooth", 0, modes=0)
