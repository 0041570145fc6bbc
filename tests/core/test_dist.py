"""DiST: the builder contract, gradient routing, the paper's parameter budget, checkpointing."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from s4v_core.backbone import build_backbone
from s4v_core.backbone_vit import FrozenViT
from s4v_core.memory import SavedTensorMeter
from s4v_core.methods.dist import (
    DiSTConfig,
    DiSTEncoder,
    IntegrationFFN,
    IntegrationToTemporal,
    TemporalToIntegration,
)
from s4v_recognition.config import RecognitionPreset
from s4v_recognition.encoders import dist as build
from s4v_recognition.presets import get_preset

pytestmark = pytest.mark.usefixtures("one_thread")


def _preset(**fields) -> RecognitionPreset:
    """The tiny recognition preset with ``fields`` changed (the method's builder reads a preset)."""
    return replace(get_preset("tiny"), **fields)


B, T = 2, 8
TINY = _preset(backbone="s4v-tiny", num_frames=T, image_size=32)


def _frames(seed: int = 1, frames: int = T) -> torch.Tensor:
    return torch.randn(B, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# Narrow widths keep the tests that do not exercise the builder fast on a shared CPU.
SMALL = {"temporal_dim": 16, "integration_dim": 64, "head_dim": 32}


def _small(seed: int = 0, **config) -> DiSTEncoder:
    torch.manual_seed(seed)
    config = DiSTConfig(**(SMALL | config))
    return DiSTEncoder(config, build_backbone("s4v-tiny"), num_frames=T, embed_dim=64)


def _step(encoder: nn.Module, head: nn.Linear, frames: torch.Tensor) -> tuple[torch.Tensor, dict]:
    features = encoder(frames)
    head(features).sum().backward()
    grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
    encoder.zero_grad(set_to_none=True)
    return features.detach(), grads


def test_builder_maps_tiny_video_to_finite_float32_features_and_rejects_wrong_shapes() -> None:
    encoder, identity = build(TINY, None, False)
    assert identity["name"] == "s4v-tiny"
    assert encoder.out_dim == 64  # the CLIP embedding width, as the official `proj`
    features = encoder(_frames())
    assert features.shape == (B, encoder.out_dim)
    assert features.dtype == torch.float32
    assert torch.isfinite(features).all()
    # T is fixed: per-frame class tokens and time embeddings are sized by it.
    with pytest.raises(ValueError, match="expected frames"):
        encoder(_frames(frames=T - 2))
    with pytest.raises(ValueError, match="image_size"):
        build(_preset(backbone="s4v-tiny", num_frames=T, image_size=64), None, False)
    with pytest.raises(ValueError, match="multiple of alpha"):
        DiSTEncoder(DiSTConfig(alpha=3), build_backbone("s4v-tiny"), num_frames=T, embed_dim=64)


def test_gradients_reach_every_new_parameter_and_never_the_frozen_clip() -> None:
    # DiST is not an adapter method: the frozen ViT runs under no_grad and reads nothing trainable,
    # so gradients do not flow through it at all; they reach only the temporal encoder, the
    # integration branch, the pooling and the output projection.
    torch.manual_seed(0)
    encoder, _ = build(TINY, None, False)
    frozen = {f"backbone.{n}" for n, _ in encoder.backbone.named_parameters()}
    _, grads = _step(encoder, nn.Linear(encoder.out_dim, 5), _frames())
    for name, p in encoder.named_parameters():
        if name in frozen:
            assert not p.requires_grad and p.grad is None and name not in grads, name
        else:
            assert p.requires_grad, name
            assert name in grads and grads[name].abs().sum() > 0, name
    assert isinstance(encoder.backbone, FrozenViT)
    assert len(frozen) > 0 and len(grads) == sum(1 for _ in encoder.parameters()) - len(frozen)


@pytest.mark.parametrize(
    ("backbone", "paper", "ours"),
    [
        # Official code at B/16 (alpha 2): 19,001,184. s4v: alpha 1 (-12 x 36,864) and no dead
        # last integration -> temporal projection (-36,960), then + the 174-way head (89,262).
        ("ViT-B-16-quickgelu", 19e6, 18_611_118),
        # L/14: additionally the stem's patch is 14, not the official config's 16 (-86,400).
        ("ViT-L-14-quickgelu", 32e6, 31_717_806),
    ],
)
def test_trainable_parameters_with_a_174_way_head_match_the_paper(
    backbone: str, paper: float, ours: int
) -> None:
    with torch.device("meta"):
        encoder, _ = build(_preset(backbone=backbone, num_frames=8, image_size=224), None, False)
        head = nn.Linear(encoder.out_dim, 174)
    assert all(p.is_meta for p in encoder.parameters())  # nothing was allocated
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    total = trainable + sum(p.numel() for p in head.parameters())
    assert total == ours
    assert abs(total - paper) <= 0.1 * paper


def test_official_frame_ratio_reproduces_the_official_parameter_count() -> None:
    # alpha = 2 at B/16, 16 frames ("8+16f"): the official 19,001,184 less the dead projection.
    with torch.device("meta"):
        backbone = build_backbone("ViT-B-16-quickgelu")
        encoder = DiSTEncoder(DiSTConfig(alpha=2), backbone, num_frames=16, embed_dim=512)
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    assert trainable == 19_001_184 - 36_960


def test_grad_checkpointing_gives_the_same_features_and_gradients_and_keeps_less() -> None:
    encoder = _small()
    head = nn.Linear(encoder.out_dim, 5)
    frames = _frames()
    plain, plain_grads = _step(encoder, head, frames)
    encoder.set_grad_checkpointing(True)
    ckpt, ckpt_grads = _step(encoder, head, frames)
    torch.testing.assert_close(ckpt, plain, rtol=0, atol=0)
    assert ckpt_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, msg=name)
    saved = {}
    for enable in (False, True):
        encoder.set_grad_checkpointing(enable)
        with SavedTensorMeter(exclude=encoder.parameters()) as meter:
            encoder(frames)
        saved[enable] = meter.bytes
    assert saved[True] < 0.6 * saved[False]  # ~0.46 here
    # The builder's flag switches the same thing on.
    assert build(TINY, None, True)[0].grad_checkpointing


def test_same_seed_gives_the_same_features() -> None:
    frames = _frames()
    first, second, other = _small(0)(frames), _small(0)(frames), _small(1)(frames)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    assert not torch.equal(other, first)


def test_sparse_spatial_frames_with_alpha_two_run_end_to_end() -> None:
    encoder = _small(alpha=2)
    seen = []
    original = encoder.backbone.iter_blocks

    def recording(images: torch.Tensor):
        seen.append(images.shape)
        yield from original(images)

    encoder.backbone.iter_blocks = recording
    features = encoder(_frames())
    assert features.shape == (B, 64) and torch.isfinite(features).all()
    assert seen[0] == (B * T // 2, 3, 32, 32)  # the spatial encoder saw every other frame


def test_exchanges_equal_the_official_conv3d_and_nearest_upsampling_layouts() -> None:
    torch.manual_seed(0)
    ct, ci, alpha, frames, grid = 6, 8, 2, 3, (2, 2)
    t2i = TemporalToIntegration(ct, ci, alpha, frames)
    i2t = IntegrationToTemporal(ci, ct, alpha, grid)
    x = torch.randn(B, ct, frames * alpha, *grid)  # (B, Ct, T, h, w)
    m = torch.randn(B * frames, 1 + 4, ci)
    # Official: Conv3d, then (hw, b, t, c) with a per-frame class token first.
    y = rearrange(t2i.fuse(x), "b c t h w -> (b t) (h w) c")
    torch.testing.assert_close(t2i(x)[:, 1:], y, rtol=0, atol=0)
    torch.testing.assert_close(t2i(x)[:, 0], t2i.cls_token.repeat(B, 1), rtol=0, atol=0)
    # Official: Linear on patches, view as (b, c, t, h, w), upsample_nearest in time.
    z = rearrange(i2t.proj(m[:, 1:]), "(b t) (h w) c -> b c t h w", b=B, h=2)
    expected = F.interpolate(z, size=(frames * alpha, *grid), mode="nearest")
    torch.testing.assert_close(i2t(m, B), expected, rtol=0, atol=0)


def test_integration_temporal_conv_equals_the_official_conv3d_over_time_and_tokens() -> None:
    torch.manual_seed(0)
    frames, tokens, dim = 4, 5, 16
    ffn = IntegrationFFN(dim, dim, 4, 3, frames)
    m = torch.randn(B * frames, tokens, dim)
    conv3d = nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0))
    with torch.no_grad():
        conv3d.weight.copy_(ffn.conv_t.weight[..., None, None])
        conv3d.bias.copy_(ffn.conv_t.bias)
    # Official layout: LN'(m) as (b, c, t, tokens, 1), 1x1 conv, (3,1,1) conv, QuickGELU, 1x1 conv.
    t = rearrange(ffn.reduce(ffn.norm_t(m)), "(b t) s c -> b c t s 1", t=frames)
    t = ffn.act(conv3d(t))
    t = ffn.expand(rearrange(t, "b c t s 1 -> (b t) s c"))
    expected = ffn.mlp(ffn.norm(m)) + t
    torch.testing.assert_close(ffn(m), expected)


def test_config_rejects_impossible_shapes() -> None:
    with pytest.raises(ValueError, match="head_dim"):
        DiSTConfig(integration_dim=100)
    with pytest.raises(ValueError, match="odd"):
        DiSTConfig(temporal_kernel=2)
    with pytest.raises(ValueError, match="increasing"):
        DiSTConfig(layers=(2, 1))
    with pytest.raises(ValueError, match="out of range"):
        DiSTConfig(layers=(0, 12)).selected_layers(4)
