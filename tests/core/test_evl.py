"""EVL: forward contract, gradient routing, the repo's TCA maths, paper-table parameter counts."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from einops import rearrange
from torch import nn

from s4v_core.backbone import build_backbone
from s4v_core.methods.evl import (
    DecoderStage,
    EVLConfig,
    EVLEncoder,
    TemporalCrossAttention,
    adjacent_frame_attention,
    frozen_block_with_attention,
    relative_offset_index,
)
from s4v_recognition.config import RecognitionPreset
from s4v_recognition.encoders import evl as build
from s4v_recognition.presets import get_preset


def _preset(**fields) -> RecognitionPreset:
    """The tiny recognition preset with ``fields`` changed (the method's builder reads a preset)."""
    return replace(get_preset("tiny"), **fields)


TINY = _preset(backbone="s4v-tiny", num_frames=8, image_size=32)


B, T, K = 2, 8, 5


def _encoder(seed: int = 0, grad_checkpointing: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    encoder, _ = build(TINY, None, grad_checkpointing)
    return encoder


def _frames(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, T, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _trainable(encoder: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in encoder.named_parameters() if p.requires_grad}


def test_forward_maps_clips_to_finite_float32_features_of_out_dim() -> None:
    encoder, identity = build(TINY, None, False)
    features = encoder(_frames())
    assert encoder.out_dim == 64
    assert features.shape == (B, encoder.out_dim) and features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert identity == {"name": "s4v-tiny", "pretrained": None, "sha256": None}
    assert len(encoder.stages) == 4 and encoder.first_layer == 0  # M = L by default


def test_wrong_frame_count_or_size_raises_a_clear_error() -> None:
    encoder = _encoder()
    with pytest.raises(ValueError, match="built for 8 frames"):
        encoder(torch.randn(1, 4, 3, 32, 32))
    with pytest.raises(ValueError, match="32x32"):
        encoder(torch.randn(1, 8, 3, 48, 48))
    with pytest.raises(ValueError, match="image_size"):
        build(_preset(backbone="s4v-tiny", num_frames=8, image_size=64), None, False)
    with pytest.raises(ValueError, match="exceeds"):
        EVLEncoder(build_backbone("s4v-tiny"), EVLConfig(decoder_layers=5), num_frames=8)


def _backward(encoder: nn.Module) -> None:
    torch.manual_seed(2)
    head = nn.Linear(encoder.out_dim, K)
    encoder.train()
    head(encoder(_frames())).sum().backward()


def test_decoder_trains_and_no_gradient_reaches_the_frozen_backbone() -> None:
    # EVL is not an adapter method: the CLIP ViT runs under no_grad, so no gradient flows *through*
    # the backbone at all (its tokens and attention maps are constants to the decoder).
    encoder = _encoder()
    frozen = list(encoder.backbone.parameters())
    trainable = _trainable(encoder)
    assert frozen and not any(p.requires_grad for p in frozen)
    assert set(trainable) == {
        name for name, _ in encoder.named_parameters() if not name.startswith("backbone.")
    }
    _backward(encoder)
    assert all(p.grad is None for p in frozen)
    # The query starts at zero (the repo's code): LN1 of it and then its projection are zero, the
    # first layer's attention is uniform, and norm1.weight, q_proj.weight and k_proj (whose
    # gradient is scaled by that zero query) get exactly zero gradient on this first step only.
    first_step_zero = {
        f"stages.0.layer.{name}"
        for name in ("norm1.weight", "q_proj.weight", "k_proj.weight", "k_proj.bias")
    }
    zero = {name for name, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0}
    assert zero == first_step_zero
    # Once the query has moved (as after one update), every trainable parameter gets a gradient.
    encoder.zero_grad(set_to_none=True)
    with torch.no_grad():
        encoder.query.normal_(std=0.02)
    _backward(encoder)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())
    assert all(p.grad is None for p in frozen)


def test_backbone_gets_no_gradient_even_if_its_weights_were_trainable() -> None:
    encoder = _encoder()
    encoder.backbone.requires_grad_(True)  # only to show the forward builds no graph through it
    _backward(encoder)
    assert all(p.grad is None for p in encoder.backbone.parameters())


def test_read_block_equals_the_frozen_block_and_yields_its_own_attention() -> None:
    backbone = build_backbone("s4v-tiny")
    tokens = backbone.embed(torch.randn(3, 3, 32, 32))
    block = backbone.blocks[1]
    out, q, k = frozen_block_with_attention(block, tokens)
    torch.testing.assert_close(out, backbone.block(1, tokens))
    with torch.no_grad():
        x = block.ln_1(tokens)
        _, weights = block.attn(x, x, x, need_weights=True, average_attn_weights=True)
    ours = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1).mean(dim=1)
    torch.testing.assert_close(ours, weights)


def test_temporal_cross_attention_sums_attention_times_offset_weights() -> None:
    # The repo's TemporalCrossAttention, written as loops over query and key patches.
    h, w, dim, frames = 2, 3, 4, 3
    n = h * w
    torch.manual_seed(3)
    tca = TemporalCrossAttention((h, w), dim)
    with torch.no_grad():
        tca.w_prev.normal_()
        tca.w_next.normal_()
    q = torch.randn(B * frames, 2, 1 + n, 5)
    k = torch.randn(B * frames, 2, 1 + n, 5)
    attn_prev, attn_next = adjacent_frame_attention(q, k, frames)
    out = tca(attn_prev, attn_next)
    assert out.shape == (B, frames, 1 + n, dim)
    qv = rearrange(q, "(b t) h n e -> b t n h e", t=frames)
    kv = rearrange(k, "(b t) h n e -> b t n h e", t=frames)
    expected = torch.zeros(B, frames, 1 + n, dim)
    for t in range(frames):
        for other, table in ((t - 1, tca.w_prev), (t + 1, tca.w_next)):
            if not 0 <= other < frames:
                continue
            logits = torch.einsum("bqhe,bkhe->bqkh", qv[:, t, 1:], kv[:, other, 1:]) / 5**0.5
            attn = logits.softmax(dim=2).mean(dim=-1)  # (B, N, N)
            for qi in range(n):
                for ki in range(n):
                    offset = (qi // w - ki // w + h - 1) * (2 * w - 1) + (qi % w - ki % w + w - 1)
                    assert relative_offset_index((h, w), torch.device("cpu"))[qi, ki] == offset
                    expected[:, t, 1 + qi] += attn[:, qi, ki, None] * table[offset].detach()
    torch.testing.assert_close(out.detach(), expected)


def test_fresh_stage_without_conv_passes_the_tokens_through() -> None:
    # The temporal position embedding and the TCA tables start at zero (the repo's init).
    config = EVLConfig(temporal_conv=False)
    stage = DecoderStage(config, dim=8, num_heads=2, num_frames=3, grid=(2, 2))
    tokens = torch.randn(B * 3, 5, 8)
    maps = adjacent_frame_attention(torch.randn(B * 3, 2, 5, 4), torch.randn(B * 3, 2, 5, 4), 3)
    features = stage.frame_features(tokens, *maps)
    torch.testing.assert_close(features, rearrange(tokens, "(b t) n d -> b (t n) d", t=3))


def _count(backbone: str) -> tuple[int, int]:
    with torch.device("meta"):
        encoder, _ = build(_preset(backbone=backbone, num_frames=8, image_size=224), None, False)
    assert all(p.device.type == "meta" for p in encoder.parameters())  # nothing was allocated
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    return trainable, trainable + encoder.out_dim * 174 + 174  # + the 174-way SSv2 head


def test_parameter_counts_at_the_paper_setting_match_side4video_table_2() -> None:
    # Side4Video Table 2 (SSv2, 8 frames): EVL 350 M tunable at L/14, 89 M at B/16.
    trainable, with_head = _count("ViT-L-14-quickgelu")
    assert (trainable, with_head) == (349_891_584, 350_069_934)  # 24 stages of 14.58 M
    assert abs(with_head / 350e6 - 1) < 0.10
    trainable, with_head = _count("ViT-B-16-quickgelu")
    # M = L = 12 stages of 8.22 M: 98.8 M, 11 % above the table's 89 M, which no uniform depth
    # gives (M=11: 90.5 M); L/14 pins M = L (see the evl module docstring).
    assert (trainable, with_head) == (98_622_720, 98_756_526)
    assert abs(with_head / 89e6 - 1) < 0.12


def test_grad_checkpointing_gives_the_same_features_and_gradients() -> None:
    results = []
    for checkpointing in (False, True):
        encoder = _encoder(seed=0, grad_checkpointing=checkpointing)
        encoder.train()
        torch.manual_seed(4)  # the same dropout masks, replayed by the checkpoint in backward
        features = encoder(_frames())
        features.square().sum().backward()
        results.append((features.detach(), {n: p.grad for n, p in _trainable(encoder).items()}))
    (plain, plain_grads), (recomputed, recomputed_grads) = results
    torch.testing.assert_close(recomputed, plain)
    assert recomputed_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(recomputed_grads[name], grad, msg=name)
    encoder = _encoder()
    encoder.set_grad_checkpointing(True)
    assert encoder.grad_checkpointing


def test_same_seed_gives_the_same_features() -> None:
    first, second, other = _encoder(seed=0), _encoder(seed=0), _encoder(seed=5)
    with torch.no_grad():
        for encoder in (first, second, other):
            encoder.eval()
        reference = first(_frames())
        torch.testing.assert_close(second(_frames()), reference, rtol=0, atol=0)
        assert not torch.allclose(other(_frames()), reference)
        # In training mode the dropout masks come from the global RNG: the same seed, the same mask.
        first.train()
        second.train()
        torch.manual_seed(6)
        dropped = first(_frames())
        torch.manual_seed(6)
        torch.testing.assert_close(second(_frames()), dropped, rtol=0, atol=0)
