"""The fast paths of the stochastic stack compute what the plain formulas compute, bit for bit:
``BrownianPath``'s in-place refinement against the Levy formula written out, and the stack's
forward pass (gates taken apart once, noise terms in one product) against its units applied one
by one."""

import math

import numpy as np
import pytest
import torch

from rdm_dynamics.noise import BrownianPath
from rdm_dynamics.stack import GatedResidualStack

F64 = torch.float64


def levy_path(span, shape, base_steps, levels, seed):
    """The dyadic Levy construction as its formula reads: left = D / 2 + (sqrt(dt) / 2) Z,
    right = D - left, one normal draw per level, levels in order; Z from numpy's PCG64 seeded by
    one integer drawn from the torch generator (``noise.numpy_rng``, as documented)."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(torch.randint(0, 2**62, (1,), generator=g).item())

    def normal(n):
        return torch.from_numpy(rng.standard_normal((n, *shape)))

    dt = span / base_steps
    level = math.sqrt(dt) * normal(base_steps)
    out = [level]
    for _ in range(levels):
        n = level.shape[0]
        dt = span / n
        left = 0.5 * level + 0.5 * math.sqrt(dt) * normal(n)
        level = torch.stack([left, level - left], dim=1).reshape(2 * n, *shape)
        out.append(level)
    return out


@pytest.mark.parametrize("span,shape,base,levels,seed", [
    (0.999, (256, 4), 1, 8, 0), (1.0, (3,), 2, 5, 1), (0.5, (4, 2, 3), 3, 4, 7),
    (2.0, (17,), 16, 3, 123)])
def test_brownian_path_is_the_levy_formula_bit_for_bit(span, shape, base, levels, seed):
    path = BrownianPath(span, shape, base_steps=base,
                        generator=torch.Generator().manual_seed(seed))
    expected = levy_path(span, shape, base, levels, seed)
    for k in range(levels, -1, -1):  # the finest first: levels are built in order anyway
        assert torch.equal(path.increments(base * 2**k), expected[k])


def unit_by_unit(stack, z0, xi, perturbations=None):
    z, states = z0, [z0]
    for i in range(stack.depth):
        z = stack.unit(i, z, xi[i] if stack.stochastic else None)
        if perturbations is not None:
            z = z + perturbations[i]
        states.append(z)
    return torch.stack(states)


@pytest.mark.parametrize("schedule", ["euler", "rdm", "plain", "inv-sqrt"])
@pytest.mark.parametrize("sample_shape,noise", [
    ((3,), lambda t: 0.3 + t),                                    # scalar gamma_i
    ((3,), lambda t: torch.tensor([0.1, 0.5, 1.0], dtype=F64) * (1 + t)),  # per channel
    ((2, 4, 4), lambda t: torch.tensor([0.2, 0.7], dtype=F64)[:, None, None] * (1 + t)),
    ((3,), None),                                                 # deterministic units
])
def test_forward_is_the_units_applied_one_by_one(schedule, sample_shape, noise):
    g = torch.Generator().manual_seed(3)
    L, B = 12, 5
    weight = torch.randn(sample_shape, generator=g, dtype=F64)

    def residual(z, t):
        return torch.tanh(weight * z) * (1 + t) - 0.5 * z

    stack = GatedResidualStack(residual, L, schedule=schedule, span=(1.0, 0.1), noise=noise,
                               bias=lambda t: 0.1 * t)
    z0 = torch.randn(B, *sample_shape, generator=g, dtype=F64)
    xi = torch.randn(L, B, *sample_shape, generator=g, dtype=F64)
    e = 1e-3 * torch.randn(L, B, *sample_shape, generator=g, dtype=F64)
    with torch.no_grad():
        expected = unit_by_unit(stack, z0, xi, e)
        assert torch.equal(stack(z0, xi=xi, perturbations=e, return_all=True), expected)
        assert torch.equal(stack(z0, xi=xi, perturbations=e), expected[-1])
        assert torch.equal(stack(z0, xi=xi, return_all=True), unit_by_unit(stack, z0, xi))
    if schedule == "rdm" and noise is not None:  # the noise gates still learn
        stack(z0, xi=xi).sum().backward()
        assert stack.gamma.grad is not None and stack.gamma.grad.abs().sum() > 0


def test_noise_from_a_cpu_generator_reaches_another_device():
    """A seeded CPU generator serves a path or a stack on another device.  ``meta`` stands in for
    CUDA on a machine without one: like CUDA it refuses to mix its tensors with CPU tensors
    (other than 0-d), so a CPU tensor hidden in the arithmetic would raise here.  (Unlike CUDA it
    accepts CPU generators: that the draws are made on the generator's device is tested on CUDA
    below.)"""
    path = BrownianPath(1.0, (4, 2), base_steps=2, generator=torch.Generator().manual_seed(0),
                        device="meta")
    assert path.normalised_increments(16).device.type == "meta"
    stack = GatedResidualStack(lambda z, t: -z, 8, noise=lambda t: 1 + 0 * t, device="meta")
    out = stack(torch.zeros(3, 2, dtype=F64, device="meta"),
                generator=torch.Generator().manual_seed(0))
    assert out.device.type == "meta" and out.shape == (3, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_path_has_the_cpu_path_numbers():
    """On CUDA (torch refuses a CPU generator for CUDA draws, hence draws on the CPU and a move)
    the path is the CPU path: the draws bit for bit, the refined levels to rounding."""
    def path(device):
        return BrownianPath(0.9, (64, 3), generator=torch.Generator().manual_seed(4),
                            device=device)

    cpu, cuda = path("cpu"), path("cuda")
    assert torch.equal(cuda.increments(1).cpu(), cpu.increments(1))
    assert torch.allclose(cuda.increments(256).cpu(), cpu.increments(256), rtol=0, atol=1e-14)
    stack = GatedResidualStack(lambda z, t: -z, 8, noise=lambda t: 1 + 0 * t, device="cuda")
    z0 = torch.zeros(3, 2, dtype=F64, device="cuda")
    a = stack(z0, generator=torch.Generator().manual_seed(0))
    b = stack.cpu()(z0.cpu(), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a.cpu(), b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("score_scale", [1.0, -1.0])
def test_a_denoising_stack_tabulates_its_field_once_and_keeps_it_out_of_copies(score_scale):
    """The denoising field evaluated on the stack's grid (``DenoisingField.on_grid``) gives the
    numbers of the field called at each time, to rounding; the tabulation is made once per grid,
    made again for a new grid tensor, and left out of a copy of the stack (``__getstate__``),
    which computes the same."""
    import copy

    from rdm_dynamics.checks import CheckConfig
    from rdm_dynamics.checks.problems import data_laws, denoising_stack
    from rdm_dynamics.sde import make_sde

    config = CheckConfig(depth=32, schedule="euler")
    laws = data_laws(config, config.generator(1))
    for law in laws.values():
        for name in ("vp", "ve"):
            sde = make_sde(name)
            stack = denoising_stack(sde, law, 16, config, probability_flow=False,
                                    score_scale=score_scale)
            field = stack.residuals[0]
            x = law.sample(5, torch.Generator().manual_seed(2))
            for i, unit_field in enumerate(stack.unit_residuals()):
                t = stack.times[i]
                expected = field(x, t)
                assert torch.allclose(unit_field(x, t), expected, rtol=1e-12,
                                      atol=1e-12 * float(expected.abs().max()))
            assert stack.unit_residuals() is stack.unit_residuals()  # made once
            xi = torch.randn(16, *x.shape, generator=torch.Generator().manual_seed(3),
                             dtype=torch.float64)
            with torch.no_grad():
                before = stack(x, xi=xi)
                again = copy.deepcopy(stack)
                assert "_tabulated" not in again.__dict__
                assert torch.equal(again(x, xi=xi), before)
                stack.times = stack.times.clone()  # a new grid tensor: tabulated again
                assert stack.unit_residuals() is not again.unit_residuals()
                assert torch.equal(stack(x, xi=xi), before)


def test_a_bias_installed_into_fixed_gates_is_added():
    """A stack without a bias coefficient skips + beta only while its beta_i are 0: a bias
    written into the gate buffers later is applied, by forward and unit alike."""
    stack = GatedResidualStack(lambda z, t: torch.tanh(z), 4, schedule="euler")
    z = torch.ones(2, 3, dtype=torch.float64)
    before = stack(z)
    stack.beta.fill_(0.5)
    after = stack(z)
    manual = z
    for i in range(4):
        manual = stack.unit(i, manual)
    assert torch.equal(after, manual) and float((after - before).abs().min()) > 1.0
