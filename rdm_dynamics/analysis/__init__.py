"""The machinery of single claims: what one or two checks need beyond the shared vocabulary.

Above the vocabulary (``sde``, ``laws``, ``stack``, ``noise``, ``solvers``, ``stats``) and below
the checks:

    fields           residual functions smooth in depth (and i.i.d. controls), with certified
                     Lipschitz constants                                        C1, C5, C6
    lipschitz        certified Lipschitz bounds (never estimates from below)    C5
    rounding         a priori rounding-error bounds of a stack in low precision C5
    propagation      the discrete Gronwall bound and perturbed runs             C5
    adjoint          backpropagation through a stack vs the adjoint ODE         C6
    memory           peak memory saved for backward                             C6
    gaussian_gates   closed-form gates of the exact Gaussian transports; the
                     exact layer laws of a stack with affine units              C2, C3, C4
    gate_fitting     gates learned from forward samples                         C4
    law_references   densities, scores and samples of p_t that share no code
                     with ``laws``: torch.distributions with coefficients by
                     quadrature, the Fokker-Planck residual, exact transitions  C2, C3
    two_sample       the energy distance with its standard error                C2, C3, C4
    iid_limit        i.i.d.-weight stacks and their limit SDE: kappa by
                     quadrature, coupled weight draws, the torchsde reference   C7
    backbone_probes  a trained backbone's residual units: precision passes,
                     forward-mode linear response, unit adjoints                C8, C9
    denoising_risk   the risk decomposition R = R* + excess on known-law data   C10
    law_audit        the stored law's exact denoisers by an independent
                     construction (torch.distributions, quadrature, autograd);
                     training images against the stored law (two-sample tests)  C10

Nothing here imports a check, the training world or a command.
"""
