"""Two fused layer pairs that keep less for backward than autograd would, with the same maths.

``layer_norm_linear``  LayerNorm(D) then Linear(D -> C), the side network's per-layer tap. Autograd
                       keeps the LayerNorm's input *and* its D-wide output (~19 % of what the
                       reference saves, spec 1.7); here only the input is kept (the backbone's
                       tokens, which exist anyway) and the normalisation is recomputed in backward,
                       an elementwise pass. The Linear's forward is not repeated.
``gelu_mlp``           Linear -> exact GELU -> Linear. Autograd keeps the hidden pre-activation and
                       the GELU output, both 4C wide; here only the pre-activation is kept and the
                       GELU is recomputed in backward.

Both replay the forward's autocast state (CPU and CUDA) in backward, so they give the gradients
autograd would under mixed precision too: the matrix products run in the autocast dtype and the
weight gradients are returned in the weights' dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from s4v_core.recompute import autocast_state, replay_autocast


def _matrix(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


class _LayerNormLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, weight, bias, eps: float):
        normed = F.layer_norm(x, x.shape[-1:], norm_weight, norm_bias, eps)
        out = F.linear(normed, weight, bias)
        ctx.save_for_backward(x, norm_weight, norm_bias, weight)
        ctx.eps = eps
        ctx.autocast = autocast_state()
        ctx.compute_dtype = out.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, norm_weight, norm_bias, weight = ctx.saved_tensors
        need_x, need_nw, need_nb, need_w, need_b, _ = ctx.needs_input_grad
        leaves = [
            x.detach().requires_grad_(need_x),
            norm_weight.detach().requires_grad_(need_nw),
            norm_bias.detach().requires_grad_(need_nb),
        ]
        with torch.enable_grad(), replay_autocast(ctx.autocast):
            normed = F.layer_norm(leaves[0], x.shape[-1:], leaves[1], leaves[2], ctx.eps)
        dtype = ctx.compute_dtype
        grad_weight = grad_bias = None
        if need_w:
            grad_weight = (_matrix(grad_out).T @ _matrix(normed.detach().to(dtype))).to(
                weight.dtype
            )
        if need_b:
            grad_bias = _matrix(grad_out).sum(0).to(weight.dtype)  # bias shares the weight's dtype
        grads = [None, None, None]
        wanted = [i for i, need in enumerate((need_x, need_nw, need_nb)) if need]
        if wanted:
            grad_normed = (grad_out @ weight.to(dtype)).to(normed.dtype)
            found = torch.autograd.grad(normed, [leaves[i] for i in wanted], grad_normed)
            for i, grad in zip(wanted, found, strict=True):
                grads[i] = grad
        return (*grads, grad_weight, grad_bias, None)


def layer_norm_linear(
    x: torch.Tensor, norm: torch.nn.LayerNorm, linear: torch.nn.Linear
) -> torch.Tensor:
    """``linear(norm(x))`` keeping only ``x`` for backward: ``(..., D) -> (..., C)``."""
    return _LayerNormLinear.apply(x, norm.weight, norm.bias, linear.weight, linear.bias, norm.eps)


class _GeluMlp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight1, bias1, weight2, bias2):
        hidden = F.linear(x, weight1, bias1)
        out = F.linear(F.gelu(hidden), weight2, bias2)
        # What the first product read: x cast to the autocast dtype (x itself in fp32).
        ctx.save_for_backward(x.to(hidden.dtype), hidden, weight1, weight2)
        ctx.input_dtype = x.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, hidden, weight1, weight2 = ctx.saved_tensors
        dtype = hidden.dtype
        grad_out = grad_out.to(dtype)
        activated = F.gelu(hidden)
        grads: list[torch.Tensor | None] = [None] * 5
        if ctx.needs_input_grad[3]:
            grads[3] = (_matrix(grad_out).T @ _matrix(activated)).to(weight2.dtype)
        if ctx.needs_input_grad[4]:
            grads[4] = _matrix(grad_out).sum(0).to(weight2.dtype)
        grad_hidden = torch.ops.aten.gelu_backward(grad_out @ weight2.to(dtype), hidden)
        if ctx.needs_input_grad[1]:
            grads[1] = (_matrix(grad_hidden).T @ _matrix(x)).to(weight1.dtype)
        if ctx.needs_input_grad[2]:
            grads[2] = _matrix(grad_hidden).sum(0).to(weight1.dtype)
        if ctx.needs_input_grad[0]:
            grads[0] = (grad_hidden @ weight1.to(dtype)).to(ctx.input_dtype)
        return tuple(grads)


def gelu_mlp(x: torch.Tensor, fc1: torch.nn.Linear, fc2: torch.nn.Linear) -> torch.Tensor:
    """``fc2(gelu(fc1(x)))`` (exact GELU) keeping ``x`` and ``fc1(x)`` for backward."""
    return _GeluMlp.apply(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
