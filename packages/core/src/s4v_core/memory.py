"""Measure what autograd keeps for backward.

``SavedTensorMeter`` installs ``torch.autograd.graph.saved_tensors_hooks`` and records every tensor
autograd saves while it is active, counting each underlying storage once (views of one buffer are
one buffer) and leaving out given tensors (the model's parameters, which exist anyway).
Recomputed regions (:func:`s4v_core.recompute.recompute`) and the fused layers of
:mod:`s4v_core.fused` keep their inputs through ``ctx.save_for_backward``, so those are counted
too (``torch.utils.checkpoint`` would hide the inputs it holds from these hooks).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.autograd.graph import saved_tensors_hooks


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return (str(tensor.device), tensor.untyped_storage().data_ptr())


class SavedTensorMeter:
    """Context manager counting the unique bytes autograd saves for backward.

    Args:
        exclude: tensors whose storage is not counted (typically ``model.parameters()``).

    Example:
        >>> with SavedTensorMeter(exclude=model.parameters()) as meter:
        ...     loss = model(x).sum()
        >>> meter.bytes  # held until ``loss.backward()`` frees them
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {_storage_key(t) for t in exclude}
        self._storages: dict[tuple[str, int], int] = {}
        self._hooks = saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in self._excluded:
            self._storages[key] = max(self._storages.get(key, 0), tensor.untyped_storage().nbytes())
        return tensor

    @staticmethod
    def _unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._hooks.__exit__(*exc_info)

    @property
    def bytes(self) -> int:
        """Unique bytes saved so far."""
        return sum(self._storages.values())
