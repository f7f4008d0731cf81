"""The small trained model the self-test runs the checkpoint checks (C8 to C10) on.

A flow-shaped transformer of 4 residual units (RDM-DiT-T/2 at depth 2, width 32, 2 heads) trained
for 25 steps on ``digits-gmm`` with two components per class (so that a weight inside a class
matters), on one thread, into a temporary folder that :func:`small_checkpoint` removes on exit:
a few seconds, the same checkpoint for the same seed.  The checks' claims hold for any network
(the risk identity, the linear response, the discrete adjoint), so a briefly trained one is a
fair subject; what the self-test needs is that the clean runs pass and every fault fails one.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile

import torch

__all__ = ["small_checkpoint", "SMALL_MODEL"]

SMALL_MODEL = {"model": "RDM-DiT-T/2", "model_options": {"depth": 2, "width": 32, "heads": 2},
               "data": "digits-gmm", "law_components": 2, "steps": 25, "batch_size": 16,
               "warmup": 0, "lr": 3e-3}


@contextlib.contextmanager
def small_checkpoint(seed: int = 0, quick: bool = True):
    """Train the small model (module docstring) under ``seed`` and yield the
    ``CheckpointConfig`` of its run (``quick`` as asked); the folder is removed afterwards."""
    from ..training.loop import train
    from ..training.settings import TrainConfig
    from .trained_subject import checkpoint_config

    folder = tempfile.mkdtemp(prefix="rdm-self-test-")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        train(TrainConfig(**SMALL_MODEL, seed=seed, log_every=25, n_samples=2, sample_steps=1,
                          progress=False, out=folder, device="cpu"))
        torch.set_num_threads(threads)
        yield checkpoint_config(folder, seed=seed, quick=quick)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(folder, ignore_errors=True)
