"""Fused layer pairs: autograd's results, less kept for backward, fp32 and bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from s4v_core.fused import gelu_mlp, layer_norm_linear, temporal_taps
from s4v_core.memory import SavedTensorMeter


def _bytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def _relative_error(got: torch.Tensor, truth: torch.Tensor) -> float:
    return ((got.double() - truth).norm() / truth.norm()).item()


@pytest.mark.parametrize("input_grad", [False, True], ids=["frozen-input", "input-grad"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_layer_norm_linear_matches_autograd_and_keeps_only_its_input(
    autocast: bool, input_grad: bool
) -> None:
    torch.manual_seed(0)
    norm, linear = nn.LayerNorm(48), nn.Linear(48, 32)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = torch.randn(4, 9, 48, requires_grad=input_grad)
    params = [norm.weight, norm.bias, linear.weight, linear.bias]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with SavedTensorMeter(exclude=params) as meter:
            fused = layer_norm_linear(x, norm, linear)
        plain = linear(norm(x))
    assert meter.bytes == _bytes(x)
    torch.testing.assert_close(fused, plain, rtol=0, atol=0)
    grad = torch.randn_like(fused)
    wrt = [x, *params] if input_grad else params
    exact = [t.detach().double().requires_grad_() for t in wrt]
    x64 = exact[0] if input_grad else x.double()
    w64 = exact[-4:]
    truth = torch.autograd.grad(
        F.linear(F.layer_norm(x64, (48,), w64[0], w64[1]), w64[2], w64[3]), exact, grad.double()
    )
    for got, want, true in zip(
        torch.autograd.grad(fused, wrt, grad),
        torch.autograd.grad(plain, wrt, grad),
        truth,
        strict=True,
    ):
        assert got.dtype == want.dtype == torch.float32
        if autocast:
            # Rounded to bf16 at other places than autograd's: as close to the exact gradient.
            assert _relative_error(got, true) <= 1.25 * _relative_error(want, true) + 1e-6
        else:
            torch.testing.assert_close(got, want)


def test_layer_norm_linear_weight_gradients_use_one_product_when_the_input_is_frozen() -> None:
    norm, linear = nn.LayerNorm(48), nn.Linear(48, 32)
    out = layer_norm_linear(torch.randn(4, 9, 48), norm, linear)
    with torch.profiler.profile(record_shapes=True) as prof:
        out.backward(torch.randn_like(out))
    rows = 4 * 9
    over_rows = [  # matrix products that run over the 36 token rows (not the small C x D ones)
        e
        for e in prof.events()
        if e.name in ("aten::mm", "aten::addmm", "aten::bmm")
        and any(rows in shape for shape in e.input_shapes)
    ]
    assert [e.input_shapes for e in over_rows] == [[[32, rows], [rows, 48]]]


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


def test_temporal_taps_equal_a_depthwise_conv3d_in_value_and_gradients() -> None:
    torch.manual_seed(0)
    b, t, n, c = 2, 5, 6, 8
    x = torch.randn(b, t, n, c, requires_grad=True)
    weight = torch.randn(c, 3, requires_grad=True)
    bias = torch.randn(c, requires_grad=True)
    with SavedTensorMeter(exclude=[weight, bias]) as meter:
        ours = temporal_taps(x, weight, bias)
    assert meter.bytes == _bytes(x)
    video = x.permute(0, 3, 1, 2).unsqueeze(-1)  # (B, C, T, N, 1)
    conv = F.conv3d(video, weight.view(c, 1, 3, 1, 1), bias, padding=(1, 0, 0), groups=c)
    expected = conv.squeeze(-1).permute(0, 2, 3, 1)
    torch.testing.assert_close(ours, expected)
    grad = torch.randn_like(ours)
    for got, want in zip(
        torch.autograd.grad(ours, [x, weight, bias], grad),
        torch.autograd.grad(expected, [x, weight, bias], grad),
        strict=True,
    ):
        torch.testing.assert_close(got, want)


def test_temporal_taps_give_low_precision_inputs_gradients_in_their_dtype() -> None:
    x = torch.randn(1, 4, 3, 8, dtype=torch.bfloat16, requires_grad=True)
    weight, bias = torch.randn(8, 3, requires_grad=True), torch.randn(8, requires_grad=True)
    out = temporal_taps(x, weight, bias)
    assert out.dtype == torch.float32  # promoted like the eager multiply-adds
    grads = torch.autograd.grad(out.sum(), [x, weight, bias])
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float32, torch.float32]
