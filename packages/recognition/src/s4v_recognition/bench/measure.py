"""What the benchmarks share: the precisions, random batches, and the bytes saved for backward.

:func:`measure_saved_bytes` runs one forward and cross-entropy of a video classifier on random
frames and counts what autograd keeps for backward (:class:`s4v_core.memory.SavedTensorMeter`).
Under fp16/bf16 it runs CPU autocast with :class:`CudaAutocastPolicy`, so that the dtypes, and so
the bytes, are those CUDA autocast would give.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from s4v_core.memory import SavedTensorMeter

__all__ = [
    "PRECISIONS",
    "CudaAutocastPolicy",
    "autocast",
    "measure_saved_bytes",
    "random_batch",
]

# --precision: the autocast dtype (None: plain fp32).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Ops CUDA autocast runs in fp32 (torch.amp docs, "CUDA Ops that can autocast to float32") that
# CPU autocast leaves in the low precision; the ones a ViT or its side network can call.
_CUDA_FP32_OPS = frozenset(
    {
        F.layer_norm,
        F.group_norm,
        F.softmax,
        F.log_softmax,
        F.normalize,
        torch.layer_norm,
        torch.group_norm,
        torch.softmax,
        torch.log_softmax,
        torch.exp,
        torch.log,
        torch.pow,
        torch.rsqrt,
        torch.cumsum,
        torch.prod,
        torch.Tensor.softmax,
        torch.Tensor.log_softmax,
        torch.Tensor.exp,
        torch.Tensor.log,
        torch.Tensor.pow,
        torch.Tensor.__pow__,
        torch.Tensor.rsqrt,
        torch.Tensor.cumsum,
        torch.Tensor.prod,
    }
)


def _to_fp32(value: object) -> object:
    if isinstance(value, torch.Tensor) and value.dtype in _LOW_PRECISION:
        return value.float()
    return value


class CudaAutocastPolicy(TorchFunctionMode):
    """While CPU autocast is on, run the ops CUDA autocast runs in fp32 in fp32 too.

    CPU autocast casts fewer ops to fp32 than CUDA autocast (CPU LayerNorm stays in bf16, CUDA's
    runs in fp32 and returns fp32, which also makes the EVA post-norm residual stream fp32). Inputs
    of those ops in fp16/bf16 are cast to fp32 and the op runs with autocast off, so it returns
    fp32, as under ``torch.autocast("cuda")``. The matrix products keep CPU autocast's low
    precision, which is CUDA's too. Outside autocast nothing changes.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CUDA_FP32_OPS and torch.is_autocast_enabled("cpu"):
            args, kwargs = tree_map(_to_fp32, (args, kwargs))
            with torch.autocast("cpu", enabled=False):
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def autocast(precision: str, device: str = "cpu") -> torch.autocast:
    """``torch.autocast`` for ``precision`` (a key of :data:`PRECISIONS`; fp32: disabled)."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None)


def random_batch(model: nn.Module, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random frames ``(B, T, 3, H, W)`` and labels ``(B,)`` for a video classifier."""
    generator = torch.Generator().manual_seed(seed)
    size = model.preset.image_size
    frames = torch.randn((batch_size, model.num_frames, 3, size, size), generator=generator)
    labels = torch.randint(model.num_classes, (batch_size,), generator=generator)
    return frames, labels


def measure_saved_bytes(
    model: nn.Module, batch_size: int, *, precision: str = "bf16", seed: int = 0
) -> int:
    """Bytes autograd saves for backward in one forward + cross-entropy of ``model`` on the CPU.

    ``model`` is a :class:`s4v_recognition.VideoClassifier`, in training mode afterwards. Random
    frames; under CPU autocast with CUDA's fp32 ops (:class:`CudaAutocastPolicy`) for fp16/bf16.
    Parameters are not counted; nothing is run backward.
    """
    frames, labels = random_batch(model, batch_size, seed)
    model.train()
    with CudaAutocastPolicy(), SavedTensorMeter(exclude=model.parameters()) as meter:
        with autocast(precision):
            logits = model(frames)
        loss = F.cross_entropy(logits.float(), labels)
    del loss, logits
    return meter.bytes
