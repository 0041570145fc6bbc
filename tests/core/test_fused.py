"""Fused layer pairs: autograd's results, less kept for backward, fp32 and bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from s4v_core.fused import gelu_mlp, layer_norm_linear
from s4v_core.memory import SavedTensorMeter


def _bytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_layer_norm_linear_matches_autograd_and_keeps_only_its_input(autocast: bool) -> None:
    torch.manual_seed(0)
    norm, linear = nn.LayerNorm(48), nn.Linear(48, 32)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = torch.randn(4, 9, 48)
    params = [norm.weight, norm.bias, linear.weight, linear.bias]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with SavedTensorMeter(exclude=params) as meter:
            fused = layer_norm_linear(x, norm, linear)
        plain = linear(norm(x))
    assert meter.bytes == _bytes(x)
    torch.testing.assert_close(fused, plain, rtol=0, atol=0)
    grad = torch.randn_like(fused)
    for got, want in zip(
        torch.autograd.grad(fused, params, grad),
        torch.autograd.grad(plain, params, grad),
        strict=True,
    ):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_gelu_mlp_matches_autograd_and_does_not_keep_the_gelu_output(autocast: bool) -> None:
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(32, 128), nn.Linear(128, 32)
    x = torch.randn(4, 9, 32, requires_grad=True)
    params = [x, fc1.weight, fc1.bias, fc2.weight, fc2.bias]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with SavedTensorMeter(exclude=params[1:]) as meter:
            fused = gelu_mlp(x, fc1, fc2)
        with SavedTensorMeter(exclude=params[1:]) as plain_meter:
            plain = fc2(F.gelu(fc1(x)))
    hidden_bytes = 4 * 9 * 128 * (2 if autocast else 4)
    # One 4C-wide tensor fewer (and, under autocast, no low-precision copies of the weights).
    assert plain_meter.bytes - meter.bytes >= hidden_bytes
    assert (plain_meter.bytes - meter.bytes == hidden_bytes) != autocast
    torch.testing.assert_close(fused, plain, rtol=0, atol=0)
    grad = torch.randn_like(fused)
    for got, want in zip(
        torch.autograd.grad(fused, params, grad),
        torch.autograd.grad(plain, params, grad),
        strict=True,
    ):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want)
