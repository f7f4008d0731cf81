"""The training world: everything that trains, samples and scores a Neural-RDM backbone.

Built on the shared vocabulary (``sde``: one definition of each diffusion, shared with the
checks) and on ``models`` (the backbones); the commands ``train`` and ``sample`` call it.
"""
