"""Three fused operations that keep less for backward than autograd would, with the same maths.

``layer_norm_linear``  LayerNorm(D) then Linear(D -> C), the side network's per-layer tap. Autograd
                       keeps the LayerNorm's input *and* its D-wide output (~19 % of what the
                       reference saves at B/16: ``side_lns`` then ``side_linears`` in
                       ``Recognition/clip/model.py``); here only the input is kept (the backbone's
                       tokens, which exist anyway) and the normalisation is recomputed in backward,
                       an elementwise pass. The Linear's forward is not repeated. When the input
                       needs no gradient (frozen backbone tokens), backward also skips autograd's
                       (rows x C) @ (C x D) product for the LayerNorm's gradient: one product of the
                       output gradient with the *unscaled* normalised input gives the Linear's and
                       the LayerNorm's weight gradients together (see ``_tap_weight_grads``).
``gelu_mlp``           Linear -> exact GELU -> Linear. Autograd keeps the hidden pre-activation and
                       the GELU output, both 4C wide; here only the pre-activation is kept and the
                       GELU is recomputed in backward.
``temporal_taps``      The depth-wise temporal 3-tap conv on ``(B, T, N, C)`` tokens as in-place
                       multiply-adds on frame-shifted views, forward and backward: autograd's
                       version of the same slicing copies the whole gradient for every shifted view.

The two layer pairs replay the forward's autocast state (CPU and CUDA) in backward, so they give
the gradients autograd would under mixed precision too: the matrix products run in the autocast
dtype and the weight gradients are returned in the weights' dtype. The temporal taps have no
matrix product; their gradients come back in the dtypes of ``x`` and the weights.
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
        if not need_x:
            return (None, *_tap_weight_grads(ctx, grad_out), None)
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


def _tap_weight_grads(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """Gradients of LayerNorm weight g, bias b, Linear weight W and bias c, for an input x that
    needs none, from one (C x rows) @ (rows x D) product.

    With u = (x - mean) / std (the LayerNorm without its affine), the Linear reads u * g + b, so
    for an output gradient G (rows x C) and s = sum over rows of G:

        dW = G^T (u * g + b) = (G^T u) * g + s b^T        dc = s
        dg = sum_rows (G W) * u = column sums of W * (G^T u)
        db = sum_rows G W = s W

    Autograd would form G^T (u * g + b) and G W separately: two products of that size.
    """
    x, norm_weight, norm_bias, weight = ctx.saved_tensors
    _, need_nw, need_nb, need_w, need_b, _ = ctx.needs_input_grad
    dtype = ctx.compute_dtype
    with replay_autocast(ctx.autocast):
        unit = F.layer_norm(x, x.shape[-1:], None, None, ctx.eps)  # u, in the forward's LN dtype
    grad_rows = _matrix(grad_out)
    grad_sum = grad_rows.sum(0, dtype=torch.float32)  # s, accumulated in fp32
    gu = (grad_rows.T @ _matrix(unit.to(dtype))).float()  # G^T u, (C, D)
    master = weight.float()
    grad_weight = grad_bias = grad_norm_weight = grad_norm_bias = None
    if need_w:
        grad_weight = torch.addr(gu * norm_weight.float(), grad_sum, norm_bias.float())
        grad_weight = grad_weight.to(weight.dtype)
    if need_b:
        grad_bias = grad_sum.to(weight.dtype)  # bias shares the weight's dtype
    if need_nw:
        grad_norm_weight = (gu * master).sum(0).to(norm_weight.dtype)
    if need_nb:
        grad_norm_bias = (grad_sum @ master).to(norm_bias.dtype)
    return grad_norm_weight, grad_norm_bias, grad_weight, grad_bias


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


class _TemporalTaps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        out = torch.addcmul(bias, x, weight[:, 1])
        out[:, 1:].addcmul_(x[:, :-1], weight[:, 0])  # frame t reads frame t-1
        out[:, :-1].addcmul_(x[:, 1:], weight[:, 2])  # frame t reads frame t+1
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad
        grad_x = grad_weight = grad_bias = None
        positions = (0, 1, 2)  # every dim but the channels
        if need_x:
            grad_x = grad * weight[:, 1]
            grad_x[:, :-1].addcmul_(grad[:, 1:], weight[:, 0])
            grad_x[:, 1:].addcmul_(grad[:, :-1], weight[:, 2])
            grad_x = grad_x.to(x.dtype)
        if need_weight:
            grad_weight = torch.stack(
                [
                    (grad[:, 1:] * x[:, :-1]).sum(positions),
                    (grad * x).sum(positions),
                    (grad[:, :-1] * x[:, 1:]).sum(positions),
                ],
                dim=1,
            ).to(weight.dtype)
        if need_bias:
            grad_bias = grad.sum(positions).to(weight.dtype)
        return grad_x, grad_weight, grad_bias


def temporal_taps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Depth-wise temporal conv, kernel 3, zero padding: ``(B, T, N, C) -> (B, T, N, C)``.

    ``out[:, t] = bias + weight[:, 0] * x[:, t-1] + weight[:, 1] * x[:, t] + weight[:, 2] * x[:, t+1]``
    with frames outside the clip read as zero; ``weight`` is ``(C, 3)``, ``bias`` ``(C,)``. Keeps
    only ``x`` for backward.
    """
    return _TemporalTaps.apply(x, weight, bias)
