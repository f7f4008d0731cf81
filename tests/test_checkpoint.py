"""Checkpoints: exact round trips through safetensors + JSON, never a pickle."""

import json

import pytest
import torch
from tiny_models import tiny_model

import rdm_dynamics.training.checkpoint as ckpt_mod
from rdm_dynamics.training.checkpoint import (
    CheckpointError,
    find_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    load_optimizer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def trained(steps=3, seed=0):
    torch.manual_seed(seed)
    net = tiny_model(class_dropout_prob=0.0)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.01)
    for _ in range(steps):
        x = torch.randn(4, 1, 8, 8)
        loss = net(x, torch.rand(4), torch.randint(0, 10, (4,))).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, opt


def step(net, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 1, 8, 8, generator=g)
    loss = net(x, torch.rand(4, generator=g), torch.randint(0, 10, (4,), generator=g))
    opt.zero_grad()
    loss.pow(2).mean().backward()
    opt.step()


def test_round_trip_is_exact_and_training_continues_identically(tmp_path, monkeypatch):
    net, opt = trained()
    path = save_checkpoint(tmp_path, 3, {"model": net}, opt, {"note": "x"})
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    loaded = load_checkpoint(tmp_path)
    assert loaded.path == path and loaded.step == 3 and loaded.meta["note"] == "x"
    net2 = tiny_model(class_dropout_prob=0.0)
    net2.load_state_dict(loaded.state_dict("model"))
    opt2 = torch.optim.AdamW(net2.parameters(), lr=5.0)
    load_optimizer_state(opt2, loaded.tensors, loaded.meta["optimizer"])
    for a, b in zip(net.state_dict().values(), net2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert opt2.param_groups[0]["lr"] == 1e-2
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    for k in s1:
        for name in s1[k]:
            assert torch.equal(torch.as_tensor(s1[k][name]), torch.as_tensor(s2[k][name]))
    step(net, opt, 7)
    step(net2, opt2, 7)
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_rng_states_round_trip_through_json():
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(11)
    state = json.loads(json.dumps(rng_state({"noise": g})))
    first = torch.rand(3), torch.rand(3, generator=g)
    torch.rand(5), torch.rand(5, generator=g)
    set_rng_state(state, {"noise": g})
    second = torch.rand(3), torch.rand(3, generator=g)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    with pytest.raises(CheckpointError, match="other"):
        set_rng_state(state, {"other": g})


def test_the_files_hold_no_pickle(tmp_path):
    net, opt = trained(1)
    path = save_checkpoint(tmp_path, 1, {"model": net}, opt)
    json.loads(path.read_text())  # plain JSON
    raw = path.with_suffix(".safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    assert header["__metadata__"]["step"] == "1"
    assert b"\x80\x04" not in raw[:2] and not raw.startswith(b"PK")  # neither pickle nor zip


def test_bad_checkpoints_are_clear_errors(tmp_path):
    net, opt = trained(1)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    path = save_checkpoint(tmp_path, 5, {"model": net}, opt)
    tensors = path.with_suffix(".safetensors")
    good = tensors.read_bytes()
    tensors.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(path)
    tensors.write_bytes(good)
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "step": 6}))
    with pytest.raises(CheckpointError, match="holds step 5"):
        load_checkpoint(path)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(path)
    path.write_text(json.dumps({"step": 5}))
    with pytest.raises(CheckpointError, match="not an rdm_dynamics checkpoint"):
        load_checkpoint(path)
    other = torch.optim.AdamW(tiny_model(width=16).parameters())
    with pytest.raises(CheckpointError):
        load_optimizer_state(other, load_checkpoint_tensors(tmp_path, net, opt), meta["optimizer"])


def load_checkpoint_tensors(folder, net, opt):
    path = save_checkpoint(folder / "again", 1, {"model": net}, opt)
    return load_checkpoint(path).tensors


def test_an_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    net, opt = trained(1)
    save_checkpoint(tmp_path, 1, {"model": net}, opt)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, {"model": net}, opt)
    assert latest_checkpoint(tmp_path).name == "ckpt-00000001.json"
    assert load_checkpoint(tmp_path).step == 1


def test_keep_prunes_old_checkpoints(tmp_path):
    net, opt = trained(1)
    for s in (1, 2, 3, 4):
        save_checkpoint(tmp_path, s, {"model": net}, opt, keep=2)
    assert [p.name for p in find_checkpoints(tmp_path)] == ["ckpt-00000003.json",
                                                            "ckpt-00000004.json"]
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
