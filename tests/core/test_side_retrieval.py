"""The retrieval video tower starts as plain CLIP and its side network follows the
reference's ``Retrieval/modules/module_clip.py`` (github.com/HJYao00/Side4Video @ 5d72352)."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import nn

from s4v_core.backbone import create_clip
from s4v_core.backbone_vit import FrozenViT
from s4v_core.side import SideNetworkConfig
from s4v_core.side_retrieval import (
    RetrievalSideAttention,
    RetrievalSideNetwork,
    build_retrieval_video_tower,
)

B, T = 2, 4


def _clip_and_frames():
    torch.manual_seed(0)
    clip, identity = create_clip("s4v-tiny", None)
    frames = torch.randn(B, T, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return clip, identity, frames


def _tower(side: bool):
    clip, identity, frames = _clip_and_frames()
    backbone = FrozenViT(clip.visual, identity, with_projection=True)
    config = SideNetworkConfig(side_dim=64, head_dim=32) if side else None
    return clip, build_retrieval_video_tower(backbone, config, num_frames=T), frames


@pytest.mark.parametrize("training", [True, False])
def test_at_init_the_tower_reproduces_plain_clip_frame_embeddings(training: bool) -> None:
    clip, tower, frames = _tower(side=True)
    images = rearrange(frames, "b t c h w -> (b t) c h w")
    with torch.no_grad():
        expected = clip.encode_image(images)
    tower.train(training)
    out = tower(frames)
    assert out.shape == (B, T, clip.visual.output_dim)
    # Bitwise the frozen backbone's own embedding, which is open_clip's up to float rounding.
    torch.testing.assert_close(
        out.detach(),
        rearrange(tower.backbone.encode_image(images), "(b t) e -> b t e", t=T),
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(out.detach(), rearrange(expected, "(b t) e -> b t e", t=T))


def test_side_network_off_gives_plain_clip_frames_and_has_no_side_parameters() -> None:
    clip, tower, frames = _tower(side=False)
    assert tower.side is None and tower.side_proj is None
    assert not any(p.requires_grad for p in tower.parameters())
    with torch.no_grad():
        expected = clip.encode_image(rearrange(frames, "b t c h w -> (b t) c h w"))
    torch.testing.assert_close(tower(frames), rearrange(expected, "(b t) e -> b t e", t=T))


def test_trained_side_projection_makes_frame_embeddings_depend_on_temporal_order() -> None:
    _, tower, frames = _tower(side=True)
    with torch.no_grad():
        tower.side_proj.normal_(std=0.5)
    tower.eval()
    with torch.no_grad():
        forward = tower(frames)
        backward = tower(frames.flip(1)).flip(1)
        plain = tower.backbone.encode_image(rearrange(frames, "b t c h w -> (b t) c h w"))
    # Plain CLIP frames do not care about order; the side network does.
    assert not torch.allclose(forward, backward, atol=1e-4)
    assert not torch.allclose(forward, rearrange(plain, "(b t) e -> b t e", t=T), atol=1e-4)


def test_gradients_reach_the_side_network_and_never_the_backbone() -> None:
    _, tower, frames = _tower(side=True)
    with torch.no_grad():
        tower.side_proj.normal_(std=0.1)
    tower(frames).square().sum().backward()
    assert tower.side_proj.grad is not None and tower.side_proj.grad.abs().sum() > 0
    for name, p in tower.side.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in tower.backbone.parameters())


def test_side_attention_equals_full_self_attention_with_the_token_row_dropped() -> None:
    torch.manual_seed(0)
    c, heads, m, n = 64, 2, 3, 16
    ours = RetrievalSideAttention(c, c // heads)
    full = nn.MultiheadAttention(c, heads, batch_first=True)
    with torch.no_grad():
        full.in_proj_weight.copy_(ours.qkv.weight)
        full.in_proj_bias.copy_(ours.qkv.bias)
        full.out_proj.weight.copy_(ours.out_proj.weight)
        full.out_proj.bias.copy_(ours.out_proj.bias)
    x, cls, pos = torch.randn(m, n, c), torch.randn(m, 1, c), torch.randn(1 + n, c)
    z = ours.norm(torch.cat([cls, x], dim=1) + pos)  # the position embedding reaches the token
    expected, _ = full(z, z, z, need_weights=False)
    torch.testing.assert_close(ours(x, cls, pos), expected[:, 1:], rtol=1e-5, atol=1e-6)


def test_side_network_has_an_n_plus_one_row_position_embedding_and_pools_per_frame() -> None:
    torch.manual_seed(0)
    side = RetrievalSideNetwork(
        SideNetworkConfig(side_dim=64, head_dim=32),
        backbone_width=48,
        num_layers=3,
        patch_size=8,
        grid=(4, 4),
        num_frames=T,
    )
    assert side.pos_embed.shape == (1 + 16, 64)
    frames = torch.randn(B, T, 3, 32, 32)
    tokens = [torch.randn(B * T, 17, 48) for _ in range(3)]
    assert side(frames, tokens).shape == (B, T, 64)
    with pytest.raises(ValueError, match="expected 4 frames"):
        side(frames[:, :3], tokens)


def test_a_backbone_without_projection_is_refused() -> None:
    clip, identity, _ = _clip_and_frames()
    with pytest.raises(ValueError, match="ln_post and proj"):
        build_retrieval_video_tower(FrozenViT(clip.visual, identity), None, num_frames=T)
