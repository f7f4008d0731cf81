"""Shared test settings: hypothesis runs derandomised (reproducible) and without deadlines, and
the tests marked ``heavy`` (end-to-end runs whose child processes use both cores, 5 to 20 s each)
run first, so that none of them starts near the end of a ``-n 2`` run while the other worker has
nothing left to do (xdist's work stealing then balances the short tests)."""

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "rdm", derandomize=True, deadline=None, max_examples=30,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("rdm")
torch.set_num_threads(1)  # tests run in parallel workers on a 2-core machine


def pytest_collection_modifyitems(session, config, items):
    """The heavy tests first, the rest in their file order (a stable sort)."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)
