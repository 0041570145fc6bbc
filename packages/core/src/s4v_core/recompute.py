"""Activation recomputation that keeps the maths exact and lets memory be measured honestly.

``recompute(module, *inputs)`` runs ``module(*inputs)`` without recording a graph, keeps only the
inputs for backward (through ``ctx.save_for_backward``, so ``saved_tensors_hooks`` see them), and in
backward runs the module again under the forward's autocast state to get the gradients. Unlike
``torch.utils.checkpoint`` it

* returns the parameters' gradients through autograd (``torch.autograd.grad`` works, nothing is
  accumulated behind the engine's back), also when no input requires grad (a frozen feature
  feeding trainable layers);
* does not update BatchNorm running statistics a second time when it recomputes, so a model
  trained with recomputation has exactly the state of one trained without it.

The module must be deterministic (no dropout): the recomputed output must equal the first one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

_DEVICE_TYPES = ("cpu", "cuda")


def autocast_state() -> list[tuple[str, bool, torch.dtype]]:
    """The current autocast setting of every device type, for :func:`replay_autocast`."""
    return [
        (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        for device in _DEVICE_TYPES
    ]


@contextlib.contextmanager
def replay_autocast(state: list[tuple[str, bool, torch.dtype]]) -> Iterator[None]:
    """Enter the autocast setting recorded by :func:`autocast_state` (backward runs without it)."""
    with contextlib.ExitStack() as stack:
        for device, enabled, dtype in state:
            stack.enter_context(torch.autocast(device, dtype=dtype, enabled=enabled))
        yield


@contextlib.contextmanager
def _running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """BatchNorms in ``module`` normalise with batch statistics but do not update running ones."""
    norms = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    for norm in norms:
        norm.track_running_stats = False
    try:
        yield
    finally:
        for norm in norms:
            norm.track_running_stats = True


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, module: nn.Module, num_inputs: int, *tensors: torch.Tensor) -> torch.Tensor:
        # tensors = the module's inputs, then its trainable parameters (listed so that the output
        # requires grad and their gradients are routed through this node).
        ctx.module = module
        ctx.num_inputs = num_inputs
        ctx.params = tensors[num_inputs:]
        ctx.autocast = autocast_state()
        ctx.save_for_backward(*tensors[:num_inputs])
        return module(*tensors[:num_inputs])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        needs = ctx.needs_input_grad[2:]
        inputs = [
            saved.detach().requires_grad_(need)
            for saved, need in zip(ctx.saved_tensors, needs, strict=False)
        ]
        with (
            torch.enable_grad(),
            replay_autocast(ctx.autocast),
            _running_stats_frozen(ctx.module),
        ):
            output = ctx.module(*inputs)
        wanted = [t for t, need in zip([*inputs, *ctx.params], needs, strict=True) if need]
        grads = iter(torch.autograd.grad(output, wanted, grad_output, allow_unused=True))
        return (None, None, *(next(grads) if need else None for need in needs))


def recompute(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """``module(*inputs)`` keeping only ``inputs`` for backward; see the module docstring."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not torch.is_grad_enabled() or not (params or any(x.requires_grad for x in inputs)):
        return module(*inputs)
    return _Recompute.apply(module, len(inputs), *inputs, *params)
