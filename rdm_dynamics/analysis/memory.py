"""Peak memory of a computation that builds and runs a backward pass.

On CPU, PyTorch keeps no allocator statistics, so we count what backpropagation must keep: the
tensors autograd saves for backward.  ``SavedTensorMeter`` installs
``torch.autograd.graph.saved_tensors_hooks``; each saved tensor is counted once per storage
(several graph nodes may save the same tensor) while some node still holds it, and the meter
records the peak of those live bytes.  The count is deterministic (no allocator, no page cache)
and is what grows with depth: backpropagation through L units saves O(L) tensors, the adjoint
method saves O(1).  The meter supports first-order gradients (saved tensors come back
detached, so no double backward through them).  On CUDA, ``peak_memory`` uses
``torch.cuda.max_memory_allocated`` instead (the autograd engine runs CUDA backward passes on its
own threads, where the hooks do not apply).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["SavedTensorMeter", "peak_memory"]


class _Saved:
    """The handle autograd keeps for one saved tensor; its release updates the meter."""

    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: torch.Tensor, key, meter: SavedTensorMeter):
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self):
        self.meter._release(self.key)


class SavedTensorMeter:
    """Context manager: peak bytes of tensors saved for backward while it is active."""

    def __init__(self):
        self.live_bytes = 0
        self.peak_bytes = 0
        self._refs: dict = {}  # storage key -> [count, nbytes]
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> _Saved:
        storage = tensor.untyped_storage()
        key = (tensor.device, storage.data_ptr())
        entry = self._refs.get(key)
        if entry is None:
            self._refs[key] = [1, storage.nbytes()]
            self.live_bytes += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        else:
            entry[0] += 1
        # keep a detached alias: holding the tensor itself would hold its grad_fn, and a node
        # that saves its own output would then never be freed (a cycle through C++)
        return _Saved(tensor.detach(), key, self)

    @staticmethod
    def _unpack(saved: _Saved) -> torch.Tensor:
        return saved.tensor

    def _release(self, key) -> None:
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live_bytes -= entry[1]
            del self._refs[key]

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def peak_memory(fn: Callable[[], object], device: str | torch.device = "cpu") -> tuple[int, str]:
    """Run ``fn`` (forward and backward) and return (peak bytes, how they were measured)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, "CUDA peak allocation"
    with SavedTensorMeter() as meter:
        fn()
    return meter.peak_bytes, "peak bytes saved for backward"
