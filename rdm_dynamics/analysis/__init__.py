"""The machinery of single claims: what one or two checks need beyond the shared vocabulary.

Above the vocabulary (``sde``, ``laws``, ``stack``, ``paths``, ``stats``) and below the checks:

    fields          residual functions smooth in depth (and i.i.d. controls), with certified
                    Lipschitz constants                                        C1, C5, C6
    lipschitz       certified Lipschitz bounds (never estimates from below)    C5
    rounding        a priori rounding-error bounds of a stack in low precision C5
    propagation     the discrete Gronwall bound and perturbed runs             C5
    adjoint         backpropagation through a stack vs the adjoint ODE         C6
    memory          peak memory saved for backward                             C6
    gaussian_gates  closed-form gates of the exact Gaussian transports         C4
    gate_fitting    gates learned from forward samples                         C4
    two_sample      the energy distance with its standard error                C4
    iid_limit       i.i.d.-weight stacks and their limit SDE: kappa by
                    quadrature, coupled weight draws, the torchsde reference   C7

Nothing here imports a check, the training world or a command.
"""
