"""Symmetric InfoNCE over the global batch, with an all-gather that keeps the gradient.

CLIP4Clip / Side4Video train with ``½ [CE(S) + CE(Sᵀ)]`` on the similarity matrix of the *global*
batch: every rank gathers the text and video features of all ranks and scores every pair. The
reference's ``AllGather`` backward returns only the local slice of the incoming gradient, so each
rank's features see only the gradient of its own copy of the loss and, after DDP averages the
parameter gradients, the update is 1/world_size of the single-process one.

:func:`all_gather_with_grad` instead sums the gradient of every rank's copy of the loss before taking
the local slice. Every rank computes the same global loss, so with DDP's gradient averaging the
parameter gradients equal those of one process holding the whole batch (tested on 2 gloo processes).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's ``(B, ...)`` tensor along dim 0; backward sums and slices."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.batch = rank, tensor.shape[0]
        return torch.cat(parts, dim=0)  # (world * B, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Gather ``(B, ...)`` from every rank into ``(world * B, ...)``, in rank order.

    Without an initialised process group (or with one rank) the tensor is returned as is. Every rank
    must pass the same shape (train loaders drop the last incomplete batch). Gradients flow back to
    the local slice, summed over the losses of all ranks.
    """
    if not _distributed():
        return tensor
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.int64, device=tensor.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(
            f"all ranks must contribute the same batch size to the gathered loss, got "
            f"{[int(s) for s in sizes]}; use drop_last=True for the training loader"
        )
    if not tensor.requires_grad:
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)
    return _AllGather.apply(tensor)


def symmetric_infonce(logits: torch.Tensor) -> torch.Tensor:
    """½ [cross-entropy over rows + cross-entropy over columns], matched pairs on the diagonal.

    Args:
        logits: ``(B, B)`` scaled similarities, texts on rows and videos on columns; pair i is
            (text i, video i).

    Returns:
        Scalar loss.
    """
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"expected a square (B, B) logit matrix, got {tuple(logits.shape)}")
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
