"""Side network pieces match the reference's channels-first maths; recompute is exact."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import nn

from s4v_core.memory import SavedTensorMeter
from s4v_core.recompute import recompute
from s4v_core.side import (
    SideAttention,
    SideBlock,
    SideNetwork,
    SideNetworkConfig,
    SideTap,
    TemporalConv,
    TokenBatchNorm,
    shift_class_tokens,
)

B, T, N, C, D, L = 2, 4, 16, 64, 48, 3


def _network(**config) -> SideNetwork:
    torch.manual_seed(0)
    return SideNetwork(
        SideNetworkConfig(side_dim=C, head_dim=32, **config),
        backbone_width=D,
        num_layers=L,
        patch_size=8,
        grid=(4, 4),
        num_frames=T,
    )


def _inputs(seed: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(B, T, 3, 32, 32, generator=g)
    tokens = [torch.randn(B * T, 1 + N, D, generator=g) for _ in range(L)]
    return frames, tokens


def test_class_token_shift_moves_half_the_channels_each_way_with_zero_padding() -> None:
    cls = torch.arange(1, 1 + B * T * 4, dtype=torch.float32).view(B * T, 1, 4)
    shifted = rearrange(shift_class_tokens(cls, T), "(b t) 1 c -> b t c", t=T)
    video = rearrange(cls, "(b t) 1 c -> b t c", t=T)
    for t in range(T):
        expected_next = video[:, t + 1, :2] if t + 1 < T else torch.zeros(B, 2)
        expected_prev = video[:, t - 1, 2:] if t > 0 else torch.zeros(B, 2)
        torch.testing.assert_close(shifted[:, t, :2], expected_next)
        torch.testing.assert_close(shifted[:, t, 2:], expected_prev)


@pytest.mark.parametrize("training", [True, False])
def test_token_batchnorm_equals_batchnorm3d_over_channels_first_video(training: bool) -> None:
    ours, reference = TokenBatchNorm(C), nn.BatchNorm3d(C)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-0.5, 0.5)
        ours.running_mean.uniform_(-1, 1)
    reference.load_state_dict(ours.state_dict())
    ours.train(training)
    reference.train(training)
    x = torch.randn(B * T, N, C) * 3 + 1
    video = rearrange(x, "(b t) (h w) c -> b c t h w", t=T, h=4)
    expected = rearrange(reference(video), "b c t h w -> (b t) (h w) c")
    torch.testing.assert_close(ours(x), expected)
    torch.testing.assert_close(ours.running_mean, reference.running_mean)
    torch.testing.assert_close(ours.running_var, reference.running_var)
    assert set(ours.state_dict()) == set(reference.state_dict())


def test_temporal_conv_equals_the_reference_conv3d_branch() -> None:
    torch.manual_seed(0)
    ours = TemporalConv(C)
    bn, conv0, conv2 = nn.BatchNorm3d(C), nn.Conv3d(C, C, 1), nn.Conv3d(C, C, 1)
    dw = nn.Conv3d(C, C, (3, 1, 1), padding=(1, 0, 0), groups=C)
    with torch.no_grad():
        conv0.weight.copy_(ours.conv_in.weight.view(C, C, 1, 1, 1))
        conv0.bias.copy_(ours.conv_in.bias)
        conv2.weight.copy_(ours.conv_out.weight.view(C, C, 1, 1, 1))
        conv2.bias.copy_(ours.conv_out.bias)
        dw.weight.copy_(ours.conv_dw.weight.view(C, 1, 3, 1, 1))
        dw.bias.copy_(ours.conv_dw.bias)
    x = torch.randn(B * T, N, C)
    video = rearrange(x, "(b t) (h w) c -> b c t h w", t=T, h=4)
    expected = rearrange(conv2(dw(conv0(bn(video)))), "b c t h w -> (b t) (h w) c")
    torch.testing.assert_close(ours(x, T), expected)
    # Same initial distribution as the reference's Conv3d: U(-1/sqrt(3), 1/sqrt(3)).
    bound = 3**-0.5
    assert (
        ours.conv_dw.weight.abs().max() <= bound and ours.conv_dw.weight.abs().max() > 0.9 * bound
    )


def test_side_attention_equals_multihead_attention_with_patch_queries() -> None:
    torch.manual_seed(0)
    ours = SideAttention(C, head_dim=32)
    mha = nn.MultiheadAttention(C, 2)  # sequence-first, as in the reference
    with torch.no_grad():
        mha.in_proj_weight.copy_(ours.qkv.weight)
        mha.in_proj_bias.copy_(torch.randn(3 * C))
        ours.qkv.bias.copy_(mha.in_proj_bias)
        mha.out_proj.load_state_dict(ours.out_proj.state_dict())
    x, cls, pos = torch.randn(B * T, N, C), torch.randn(B * T, 1, C), torch.randn(N, C)
    z = ours.norm(torch.cat([cls, x + pos], dim=1)).transpose(0, 1)  # (1+N, M, C)
    expected = mha(z[1:], z, z, need_weights=False)[0].transpose(0, 1)
    torch.testing.assert_close(ours(x, cls, pos), expected)


def test_side_network_maps_frames_and_layer_tokens_to_video_features() -> None:
    network = _network()
    frames, tokens = _inputs()
    features = network(frames, iter(tokens))
    assert features.shape == (B, C)
    with pytest.raises(ValueError, match="expected 4 frames"):
        network(frames[:, :2], tokens)


def test_only_the_configured_layers_are_read() -> None:
    network = _network(side_layers=(0, 2))
    assert len(network.blocks) == len(network.taps) == 2
    network.eval()
    frames, tokens = _inputs()
    changed = [tokens[0], torch.randn_like(tokens[1]), tokens[2]]
    torch.testing.assert_close(network(frames, tokens), network(frames, changed))
    with pytest.raises(ValueError, match="out of range"):
        SideNetworkConfig(side_layers=(0, 5)).layers(3)


def test_config_rejects_widths_that_heads_cannot_split() -> None:
    with pytest.raises(ValueError, match="multiple of head_dim"):
        SideNetworkConfig(side_dim=224)  # C // 64 = 3 heads (clip/model.py) do not divide 224
    with pytest.raises(ValueError, match="increasing"):
        SideNetworkConfig(side_layers=(2, 1))


def test_initialisation_follows_the_reference() -> None:
    network = _network()
    block = network.blocks[0]
    assert torch.all(block.attn.qkv.bias == 0) and torch.all(block.attn.out_proj.bias == 0)
    for norm in (network.stem.norm, block.temporal.norm, block.mlp.norm, block.attn.norm):
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    assert 0.008 < network.pos_embed.std().item() < 0.012
    assert abs(block.mlp.fc1.weight.std().item() - (2 * C) ** -0.5) < 0.01


def _train_step(network: SideNetwork, checkpointing: bool) -> tuple[torch.Tensor, dict]:
    network.set_grad_checkpointing(checkpointing)
    network.train()
    frames, tokens = _inputs()
    features = network(frames, tokens)
    (features * torch.linspace(-1, 1, C)).sum().backward()
    grads = {n: p.grad.clone() for n, p in network.named_parameters()}
    network.zero_grad(set_to_none=True)
    return features.detach(), grads


def test_block_checkpointing_gives_the_same_outputs_gradients_and_statistics() -> None:
    plain, checkpointed = _network(), _network()
    out_plain, grads_plain = _train_step(plain, checkpointing=False)
    out_ckpt, grads_ckpt = _train_step(checkpointed, checkpointing=True)
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=0)
    assert grads_ckpt.keys() == grads_plain.keys()
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, msg=name)
    # BatchNorm running statistics are updated once per forward, not again when recomputing.
    for (name, buffer), (_, other) in zip(
        plain.named_buffers(), checkpointed.named_buffers(), strict=True
    ):
        torch.testing.assert_close(other, buffer, rtol=0, atol=0, msg=name)


def test_checkpointing_keeps_far_less_for_backward() -> None:
    frames, tokens = _inputs()
    saved = {}
    for checkpointing in (False, True):
        network = _network(grad_checkpointing=checkpointing)
        with SavedTensorMeter(exclude=network.parameters()) as meter:
            network(frames, tokens)
        saved[checkpointing] = meter.bytes
    assert saved[True] < 0.3 * saved[False]


def test_tap_keeps_only_the_backbone_tokens_and_routes_parameter_gradients() -> None:
    torch.manual_seed(0)
    tap = SideTap(D, C)
    tokens = torch.randn(B * T, 1 + N, D)
    with SavedTensorMeter(exclude=tap.parameters()) as meter:
        out = tap(tokens)
    assert meter.bytes == tokens.untyped_storage().nbytes()
    grads = torch.autograd.grad(out.square().sum(), list(tap.parameters()))
    plain = tap.proj(tap.norm(tokens))
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    expected = torch.autograd.grad(plain.square().sum(), list(tap.parameters()))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_recompute_replays_the_forward_autocast_state() -> None:
    torch.manual_seed(0)
    block = SideBlock(SideNetworkConfig(side_dim=C, head_dim=32), num_frames=T)
    x = torch.randn(B * T, N, C, requires_grad=True)
    cls, pos = torch.randn(B * T, 1, C), torch.randn(N, C)

    def input_grad(wrap: bool, autocast: bool) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = recompute(block, x, cls, pos) if wrap else block(x, cls, pos)
        return torch.autograd.grad(out.sum(), x)[0]

    bf16 = input_grad(wrap=False, autocast=True)
    torch.testing.assert_close(input_grad(wrap=True, autocast=True), bf16, rtol=0, atol=0)
    # The replay really ran in bf16: fp32 gives visibly different gradients.
    assert (input_grad(wrap=False, autocast=False) - bf16).abs().max() > 1e-3
