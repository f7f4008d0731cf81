"""Shared test settings: hypothesis runs derandomised (reproducible) and without deadlines."""

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "rdm", derandomize=True, deadline=None, max_examples=30,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("rdm")
torch.set_num_threads(1)  # tests run in parallel workers on a 2-core machine
