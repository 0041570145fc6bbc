"""The EVA-path side network: odd-layer taps, Linear-then-LayerNorm, post-norm blocks, no post BN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from s4v_core.assembly import side_network_on
from s4v_core.backbone import build_backbone
from s4v_core.memory import SavedTensorMeter
from s4v_core.side import SideNetworkConfig, TokenBatchNorm, odd_layers
from s4v_core.side_eva import EvaSideBlock, EvaSideNetwork, EvaSideTap

pytestmark = pytest.mark.usefixtures("one_thread")

# A tiny backbone's geometry (s4v-tiny: D=64, 4 layers, patch 8, 32 px -> 4x4 grid), T=8.
B, T, D, L, P, SIZE, C, HEAD = 2, 8, 64, 4, 8, 32, 64, 32
GRID = SIZE // P
N = GRID * GRID


def _config(**overrides) -> SideNetworkConfig:
    return SideNetworkConfig(side_dim=C, head_dim=HEAD, side_layers=odd_layers(L), **overrides)


def _network(seed: int = 0, **overrides) -> EvaSideNetwork:
    torch.manual_seed(seed)
    return EvaSideNetwork(
        _config(**overrides),
        backbone_width=D,
        num_layers=L,
        patch_size=P,
        grid=(GRID, GRID),
        num_frames=T,
    )


def _inputs(seed: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(B, T, 3, SIZE, SIZE, generator=g)
    tokens = [torch.randn(B * T, 1 + N, D, generator=g) for _ in range(L)]
    return frames, tokens


def _randomise_norms(module: torch.nn.Module, seed: int = 3) -> None:
    """Non-trivial affine norm parameters, so that where each norm sits changes the result."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, TokenBatchNorm | torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))


def test_odd_layers_are_what_the_reference_drop_layer_leaves() -> None:
    assert odd_layers(4) == (1, 3)
    assert odd_layers(64) == tuple(sorted(set(range(64)) - set(range(0, 64, 2))))
    assert len(odd_layers(64)) == 32
    with pytest.raises(ValueError, match="at least 2 layers"):
        odd_layers(1)


def test_forward_maps_frames_and_layer_tokens_to_video_features() -> None:
    network = _network()
    frames, tokens = _inputs()
    features = network(frames, iter(tokens))
    assert features.shape == (B, C) and network.out_dim == C
    assert torch.isfinite(features).all()
    with pytest.raises(ValueError, match="expected 8 frames"):
        network(frames[:, :4], tokens)


def test_side_blocks_sit_after_odd_layers_only_and_even_layer_tokens_are_never_read() -> None:
    network = _network().eval()
    assert network.side_layers == (1, 3)
    assert len(network.taps) == len(network.blocks) == 2
    frames, tokens = _inputs()
    with torch.no_grad():
        reference = network(frames, tokens)
        even_changed = [torch.full_like(t, float("nan")) if i % 2 == 0 else t for i, t in enumerate(tokens)]  # fmt: skip
        torch.testing.assert_close(network(frames, even_changed), reference, rtol=0, atol=0)
        for odd in (1, 3):
            changed = list(tokens)
            changed[odd] = tokens[odd] + 1.0
            assert not torch.allclose(network(frames, changed), reference)


def test_side_layers_are_validated_against_the_backbone_depth() -> None:
    with pytest.raises(ValueError, match="out of range"):
        EvaSideNetwork(
            SideNetworkConfig(side_dim=C, head_dim=HEAD, side_layers=(1, 5)),
            backbone_width=D,
            num_layers=L,
            patch_size=P,
            grid=(GRID, GRID),
            num_frames=T,
        )
    with pytest.raises(ValueError, match="increasing"):
        SideNetworkConfig(side_dim=C, head_dim=HEAD, side_layers=(3, 1))


def test_taps_project_to_the_side_width_then_normalise_over_it() -> None:
    torch.manual_seed(0)
    tap = EvaSideTap(D, C)
    _randomise_norms(tap)
    assert tap.proj.in_features == D and tap.norm.normalized_shape == (C,)
    tokens = torch.randn(B * T, 1 + N, D)
    expected = F.layer_norm(
        F.linear(tokens, tap.proj.weight, tap.proj.bias), (C,), tap.norm.weight, tap.norm.bias
    )
    torch.testing.assert_close(tap(tokens), expected)


def test_output_is_the_mean_of_the_last_block_tokens_without_a_final_batchnorm() -> None:
    network = _network()
    # BatchNorms: the stem's and two per block (after the conv branch and after the MLP).
    norms = [m for m in network.modules() if isinstance(m, TokenBatchNorm)]
    assert len(norms) == 1 + 2 * len(network.blocks)
    seen = []
    network.blocks[-1].register_forward_hook(lambda _m, _i, out: seen.append(out))
    frames, tokens = _inputs()
    features = network(frames, tokens)
    last = rearrange(seen[0], "(b t) n c -> b (t n) c", t=T)
    torch.testing.assert_close(features, last.mean(dim=1), rtol=0, atol=0)


def _hand_written_block(
    block: EvaSideBlock, x: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor
) -> torch.Tensor:
    """The side block of the reference's ``Recognition/eva_clip/eva_vit_model.py``, channels-first, with the weights in their Conv3d / per-head shapes:

    x <- x + BN3d(conv(x)); x <- x + LN(attn(z)); x <- x + BN3d(MLP(x)), in training mode.
    """

    def video(tokens):  # (B*T, N, C) -> (B, C, T, h, w)
        return rearrange(tokens, "(b t) (h w) c -> b c t h w", t=T, h=GRID)

    def tokens_of(v):  # (B, C, T, h, w) -> (B*T, N, C)
        return rearrange(v, "b c t h w -> (b t) (h w) c")

    def bn3d(v, norm):
        return F.batch_norm(v, None, None, norm.weight, norm.bias, training=True, eps=norm.eps)

    t = block.temporal
    v = video(x)
    u = F.conv3d(v, t.conv_in.weight.view(C, C, 1, 1, 1), t.conv_in.bias)
    u = F.conv3d(u, t.conv_dw.weight.view(C, 1, 3, 1, 1), t.conv_dw.bias, padding=(1, 0, 0), groups=C)  # fmt: skip
    u = F.conv3d(u, t.conv_out.weight.view(C, C, 1, 1, 1), t.conv_out.bias)
    x = tokens_of(v + bn3d(u, t.norm))

    token = rearrange(cls, "(b t) 1 c -> b t c", t=T)
    shifted = torch.zeros_like(token)
    half = C // 2
    for frame in range(T):
        if frame + 1 < T:
            shifted[:, frame, :half] = token[:, frame + 1, :half]
        if frame > 0:
            shifted[:, frame, half:] = token[:, frame - 1, half:]
    a = block.attn
    z = torch.cat([rearrange(shifted, "b t c -> (b t) 1 c"), x + pos], dim=1)  # (M, 1+N, C)
    heads, width = C // HEAD, HEAD
    q = F.linear(z[:, 1:], a.q_proj.weight, a.q_proj.bias).unflatten(-1, (heads, width))
    k = F.linear(z, a.k_proj.weight, a.k_proj.bias).unflatten(-1, (heads, width))
    val = F.linear(z, a.v_proj.weight, a.v_proj.bias).unflatten(-1, (heads, width))
    weights = torch.softmax(torch.einsum("mqhd,mkhd->mhqk", q, k) / width**0.5, dim=-1)
    attended = torch.einsum("mhqk,mkhd->mqhd", weights, val).flatten(-2)  # (M, N, C)
    attended = F.linear(attended, a.out_proj.weight, a.out_proj.bias)
    x = x + F.layer_norm(attended, (C,), a.norm.weight, a.norm.bias, a.norm.eps)

    m = block.mlp
    h = F.linear(F.gelu(F.linear(x, m.fc1.weight, m.fc1.bias)), m.fc2.weight, m.fc2.bias)
    return x + tokens_of(bn3d(video(h), m.norm))


def test_block_follows_the_post_norm_equations() -> None:
    torch.manual_seed(0)
    block = EvaSideBlock(_config(), T)
    _randomise_norms(block)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(B * T, N, C, generator=g)
    cls = torch.randn(B * T, 1, C, generator=g)
    pos = 0.02 * torch.randn(N, C, generator=g)
    torch.testing.assert_close(block(x, cls, pos), _hand_written_block(block, x, cls, pos))


def test_gradients_reach_every_side_parameter_and_nothing_of_the_frozen_backbone() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("s4v-tiny")
    side = side_network_on(EvaSideNetwork, _config(), backbone, num_frames=T)
    assert side.side_layers == (1, 3) and side.stem.conv.kernel_size == (3, P, P)
    frames, _ = _inputs()
    seen = []

    def layers(images):
        for tokens in backbone.iter_blocks(images):
            seen.append(tokens.requires_grad)
            yield tokens

    features = side(frames, layers(rearrange(frames, "b t c h w -> (b t) c h w")))
    (features * torch.randn(B, C, generator=torch.Generator().manual_seed(9))).sum().backward()
    assert seen == [False] * L  # the tokens carry no graph, so no gradient can reach them
    assert all(p.grad is None for p in backbone.parameters())
    for name, p in side.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def _loss_and_grads(network: EvaSideNetwork, frames, tokens) -> tuple[torch.Tensor, dict]:
    weights = torch.randn(B, C, generator=torch.Generator().manual_seed(9))
    features = network(frames, tokens)
    (features * weights).sum().backward()
    return features.detach(), {n: p.grad for n, p in network.named_parameters()}


def test_grad_checkpointing_gives_the_same_outputs_and_gradients_and_keeps_less() -> None:
    frames, tokens = _inputs()
    plain, checkpointed = _network(), _network(grad_checkpointing=True)
    assert checkpointed.grad_checkpointing and not plain.grad_checkpointing
    with SavedTensorMeter(exclude=plain.parameters()) as kept_plain:
        features = plain(frames, tokens)
    with SavedTensorMeter(exclude=checkpointed.parameters()) as kept_checkpointed:
        recomputed = checkpointed(frames, tokens)
    assert kept_checkpointed.bytes < 0.5 * kept_plain.bytes
    torch.testing.assert_close(recomputed, features, rtol=0, atol=0)
    del features, recomputed

    expected_out, expected = _loss_and_grads(plain, frames, tokens)
    out, grads = _loss_and_grads(checkpointed, frames, tokens)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, msg=name)
    # The recomputation in backward does not count the batch a second time.
    for (name, ours), theirs in zip(checkpointed.named_buffers(), plain.buffers(), strict=True):
        torch.testing.assert_close(ours, theirs, msg=name)
    # The switch works on a built network as well.
    plain.set_grad_checkpointing(True)
    assert plain.grad_checkpointing


def test_bf16_tokens_are_accepted_and_kept_as_given_for_backward() -> None:
    frames, tokens = _inputs()
    low = [t.bfloat16() for t in tokens]
    network = _network()
    with SavedTensorMeter(exclude=network.parameters()) as kept_fp32:
        expected_out, _ = _loss_and_grads(network, frames, [t.float() for t in low])
    expected = {n: p.grad.clone() for n, p in network.named_parameters()}
    network.zero_grad(set_to_none=True)
    with SavedTensorMeter(exclude=network.parameters()) as kept_bf16:
        out, grads = _loss_and_grads(network, frames, low)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, msg=name)
    # The taps keep the bf16 tokens (2 bytes each), not fp32 copies (4 bytes each).
    tapped = sum(low[layer].numel() for layer in network.side_layers)
    assert kept_fp32.bytes - kept_bf16.bytes == 2 * tapped

    network.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = network(frames, low)
    assert features.shape == (B, C) and torch.isfinite(features.float()).all()
    features.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in network.parameters())
