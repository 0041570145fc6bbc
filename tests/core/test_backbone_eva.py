"""FrozenEVA: timm's EVA-02 blocks read one by one, frozen, bf16-able, loadable, countable on meta."""

from __future__ import annotations

import copy
import hashlib

import open_clip
import pytest
import timm
import torch
from timm.models.eva import Eva, EvaBlock, EvaBlockPostNorm

from s4v_core.assembly import side_network_on
from s4v_core.backbone import build_backbone, create_clip
from s4v_core.backbone_eva import FrozenEVA, ViTGeometry, eva_geometry, is_eva_tower
from s4v_core.backbone_vit import FrozenViT
from s4v_core.clip_configs import TINY_EVA_MODEL, TINY_EVA_TRUNK
from s4v_core.memory import SavedTensorMeter
from s4v_core.side import SideNetwork, SideNetworkConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter N(0, 0.2^2): timm's init leaves biases at 0 and the head at 1e-3 scale, which
    would let a wrong bias or a missing norm pass a tolerance check."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def _tiny_eva_clip(seed: int = 0, layout: str = "post-norm") -> open_clip.CustomTextCLIP:
    """``s4v-tiny-eva`` with random weights; ``pre-norm`` swaps in EVA02-B/L's block layout."""
    torch.manual_seed(seed)
    clip, _ = create_clip(TINY_EVA_MODEL)
    if layout == "pre-norm":
        clip.visual.trunk = timm.create_model(
            TINY_EVA_TRUNK,
            num_classes=64,
            global_pool="token",
            use_post_norm=False,
            qkv_fused=False,
        ).eval()
    _randomize(clip.visual, seed)
    return clip


def _images(count: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_tiny_eva_config_is_an_eva02_clip_with_a_tiny_text_tower() -> None:
    clip = _tiny_eva_clip()
    trunk = clip.visual.trunk
    assert isinstance(clip, open_clip.CustomTextCLIP) and isinstance(trunk, Eva)
    assert all(type(block) is EvaBlockPostNorm for block in trunk.blocks)  # EVA02-E's layout
    assert trunk.rope is not None  # EVA02-B/L's rotary embedding and SwiGLU
    assert type(trunk.blocks[0].mlp).__name__ == "SwiGLU"
    tokens = open_clip.get_tokenizer(TINY_EVA_MODEL)(["a video of a cat"])
    with torch.no_grad():
        text, image = clip.encode_text(tokens), clip.encode_image(_images(2))
    assert tokens.shape == (1, 32) and text.shape == (1, 64) and image.shape == (2, 64)


def test_eva_backbone_attributes_describe_the_tower_and_match_eva_geometry() -> None:
    backbone = build_backbone(TINY_EVA_MODEL, with_projection=True)
    assert isinstance(backbone, FrozenEVA)
    assert (backbone.width, backbone.num_layers, backbone.embed_dim) == (64, 4, 64)
    assert (backbone.patch_size, backbone.image_size, backbone.grid) == (8, 32, (4, 4))
    assert backbone.mean == open_clip.OPENAI_DATASET_MEAN
    assert backbone.std == open_clip.OPENAI_DATASET_STD
    assert backbone.identity == {"name": TINY_EVA_MODEL, "pretrained": None, "sha256": None}
    assert eva_geometry(TINY_EVA_MODEL) == ViTGeometry(
        width=64, num_layers=4, patch_size=8, image_size=32, grid=(4, 4)
    )
    bare = build_backbone(TINY_EVA_MODEL)
    assert bare.ln_post is None and bare.proj is None and bare.embed_dim is None
    with pytest.raises(RuntimeError, match="with_projection"):
        bare.encode_image(_images(1))


@pytest.mark.parametrize(
    ("name", "geometry"),
    [
        ("EVA02-B-16", (768, 12, 16, 224, (14, 14))),
        ("EVA02-L-14", (1024, 24, 14, 224, (16, 16))),
        ("EVA02-E-14", (1792, 64, 14, 224, (16, 16))),
    ],
)
def test_eva_geometry_reads_open_clips_eva_models_without_weights(name, geometry) -> None:
    found = eva_geometry(name)
    assert (
        found.width,
        found.num_layers,
        found.patch_size,
        found.image_size,
        found.grid,
    ) == geometry


def test_eva_geometry_refuses_a_plain_vit_config() -> None:
    with pytest.raises(ValueError, match="timm image tower"):
        eva_geometry("s4v-tiny")


@pytest.mark.parametrize("layout", ["post-norm", "pre-norm"])
def test_tokens_after_every_block_are_those_of_timms_own_forward(layout: str) -> None:
    clip = _tiny_eva_clip(layout=layout)
    block_type = EvaBlockPostNorm if layout == "post-norm" else EvaBlock
    assert all(type(block) is block_type for block in clip.visual.trunk.blocks)
    images = _images()
    seen: list[torch.Tensor] = []
    hooks = [
        block.register_forward_hook(lambda _m, _i, out: seen.append(out))
        for block in clip.visual.trunk.blocks
    ]
    with torch.no_grad():
        embedding = clip.visual(images)  # timm's Eva.forward and open_clip's head, hooked
        reference = clip.visual.forward_intermediates(
            images, output_fmt="NLC", output_extra_tokens=True, intermediates_only=True
        )
    for hook in hooks:
        hook.remove()
    backbone = FrozenEVA(clip.visual, {"name": TINY_EVA_MODEL}, with_projection=True)
    tokens = backbone(images)
    assert len(tokens) == len(seen[:4]) == 4
    for ours, theirs, patches, cls in zip(
        tokens,
        seen[:4],
        reference["image_intermediates"],
        reference["image_intermediates_prefix"],
        strict=True,
    ):
        assert ours.shape == (3, 17, 64)
        assert torch.equal(ours, theirs)  # same modules, same inputs: bitwise
        assert torch.equal(ours, torch.cat([cls, patches], dim=1))
    torch.testing.assert_close(backbone.encode_image(images), embedding, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        backbone.ln_post(tokens[-1][:, 0]) @ backbone.proj, embedding, rtol=1e-6, atol=1e-6
    )
    assert embedding.abs().mean() > 0.1  # the weights are not timm's near-zero head init


def test_each_block_gets_the_rotary_table_that_changes_its_output() -> None:
    clip = _tiny_eva_clip()
    backbone = FrozenEVA(clip.visual, {"name": TINY_EVA_MODEL})
    tokens = backbone.embed(_images())
    table = backbone.rope(0)
    assert table is not None and table.shape == (16, 2 * 32)  # N patches, sin and cos of a head
    with torch.no_grad():
        unrotated = backbone.blocks[0](tokens)
    assert (backbone.block(0, tokens) - unrotated).abs().max() > 1e-2


def test_embedding_head_adds_the_linear_bias_that_a_plain_matrix_cannot() -> None:
    backbone = FrozenEVA(_tiny_eva_clip().visual, {"name": TINY_EVA_MODEL}, with_projection=True)
    head = backbone.proj.head
    assert head.bias is not None and head.bias.abs().max() > 0
    cls = torch.randn(5, 64)
    torch.testing.assert_close(cls @ backbone.proj, cls @ head.weight.T + head.bias)


def test_eva_backbone_is_frozen_stays_in_eval_and_saves_nothing() -> None:
    clip = _tiny_eva_clip()
    clip.visual.trunk = timm.create_model(  # every dropout timm's Eva has, at 0.5
        TINY_EVA_TRUNK,
        num_classes=64,
        drop_path_rate=0.5,
        proj_drop_rate=0.5,
        attn_drop_rate=0.5,
        pos_drop_rate=0.5,
    )
    backbone = FrozenEVA(clip.visual, {"name": TINY_EVA_MODEL}, with_projection=True)
    backbone.train()
    assert not any(module.training for module in backbone.modules())
    assert all(not p.requires_grad for p in backbone.parameters())
    images = _images(4).requires_grad_(True)
    with SavedTensorMeter() as meter:
        tokens = backbone(images)
        embedding = backbone.encode_image(images)
    assert meter.bytes == 0
    assert all(t.grad_fn is None and not t.requires_grad for t in [*tokens, embedding])
    assert torch.equal(backbone(images)[-1], tokens[-1])  # no dropout: the same twice


def test_side_network_trains_on_eva_tokens_and_no_gradient_reaches_the_backbone() -> None:
    backbone = FrozenEVA(_tiny_eva_clip().visual, {"name": TINY_EVA_MODEL})
    torch.manual_seed(0)
    side = side_network_on(
        SideNetwork, SideNetworkConfig(side_dim=32, head_dim=16), backbone, num_frames=2
    )
    frames = torch.randn(2, 2, 3, 32, 32)
    features = side(frames, backbone.iter_blocks(frames.flatten(0, 1)))
    features.square().sum().backward()
    assert features.shape == (2, 32)
    assert all(p.grad is not None for p in side.parameters() if p.requires_grad)
    assert all(p.grad is None for p in backbone.parameters())


def test_bf16_weights_match_fp32_tokens_and_embeddings_within_bf16_tolerance() -> None:
    clip = _tiny_eva_clip()
    exact = FrozenEVA(copy.deepcopy(clip.visual), {"name": TINY_EVA_MODEL}, with_projection=True)
    half = FrozenEVA(
        clip.visual, {"name": TINY_EVA_MODEL}, with_projection=True, weights_dtype=torch.bfloat16
    )
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    buffers = dict(half.named_buffers())
    assert buffers["trunk.blocks.0.attn.k_bias"].dtype == torch.bfloat16
    assert buffers["trunk.rope.pos_embed"].dtype == torch.float32  # sin/cos tables stay exact
    images = _images(4)
    ours, reference = half(images), exact(images)
    assert all(t.dtype == torch.bfloat16 for t in ours)
    for layer, (low, full) in enumerate(zip(ours, reference, strict=True)):
        error = (low.float() - full).abs().max() / full.abs().max()
        assert error < 0.03, f"layer {layer}: relative error {error:.4f}"
    embedding, full_embedding = half.encode_image(images), exact.encode_image(images)
    assert embedding.dtype == torch.bfloat16
    error = (embedding.float() - full_embedding).abs().max() / full_embedding.abs().max()
    assert error < 0.03
    # fp32 features (a side network's sum) go through the bf16 head without a dtype error.
    assert (half.ln_post(reference[-1][:, 0]) @ half.proj).dtype == torch.bfloat16


def test_frozen_vit_weights_dtype_casts_the_tower_once() -> None:
    torch.manual_seed(0)
    exact = build_backbone("s4v-tiny", with_projection=True)
    torch.manual_seed(0)
    half = build_backbone("s4v-tiny", with_projection=True, weights_dtype=torch.bfloat16)
    assert isinstance(half, FrozenViT)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    images = _images(2)
    low, full = half(images)[-1], exact(images)[-1]
    assert low.dtype == torch.bfloat16
    assert (low.float() - full).abs().max() / full.abs().max() < 0.03


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("layout", ["whole-clip", "visual-only", "visual-only-without-head"])
def test_loads_local_eva_files(tmp_path, layout: str) -> None:
    clip = _tiny_eva_clip(seed=3)
    state = clip.state_dict()
    if layout != "whole-clip":
        state = {k: v for k, v in state.items() if k.startswith("visual.")}
    if layout == "visual-only-without-head":
        head = ("visual.trunk.norm.", "visual.trunk.fc_norm.", "visual.trunk.head.")
        state = {k: v for k, v in state.items() if not k.startswith(head)}
        assert len(state) < len(clip.visual.state_dict())
    path = tmp_path / "eva.pt"
    torch.save(state, path)
    with_projection = layout != "visual-only-without-head"
    backbone = build_backbone(TINY_EVA_MODEL, str(path), with_projection=with_projection)
    assert isinstance(backbone, FrozenEVA)
    assert backbone.identity["sha256"] == _sha256(path)
    images = _images(2)
    with torch.no_grad():
        expected = clip.visual.forward_intermediates(
            images, output_fmt="NLC", output_extra_tokens=True, intermediates_only=True
        )
        embedding = clip.visual(images)
    last = torch.cat(
        [expected["image_intermediates_prefix"][-1], expected["image_intermediates"][-1]], dim=1
    )
    torch.testing.assert_close(backbone(images)[-1], last, rtol=0, atol=0)
    if with_projection:
        torch.testing.assert_close(backbone.encode_image(images), embedding)


def test_a_vit_file_does_not_load_into_the_eva_tower(tmp_path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "vit.pt"
    torch.save(open_clip.create_model("s4v-tiny").state_dict(), path)
    with pytest.raises(ValueError, match="do not fit"):
        build_backbone(TINY_EVA_MODEL, str(path))


def test_eva_names_take_open_clips_pretrained_tags() -> None:
    assert "laion2b_s4b_b115k" in open_clip.list_pretrained_tags_by_model("EVA02-E-14")
    assert "laion2b_s9b_b144k" in open_clip.list_pretrained_tags_by_model("EVA02-E-14-plus")
    with pytest.raises(ValueError, match="laion2b_s4b_b115k"):
        create_clip("EVA02-E-14", "no-such-tag")  # refused before anything is downloaded


@pytest.mark.parametrize(
    ("name", "tower", "head"),
    [
        # D = 1792: 64 post-norm blocks of 67,924,992 (fused qkv 3D*D + q/v biases 2D, proj
        # D*D + D, GELU MLP 2 * D*15360 + 15360 + D, two LayerNorms 4D) = 4,347,199,488; patch
        # embedding 3*14*14*D + D, class token D, 257 positions * D = 1,517,824; the head is
        # LayerNorm(D) + Linear(D -> 1024, bias) = 3,584 + 1,836,032.
        ("EVA02-E-14", 4_350_556_928, 1_839_616),
        # D = 1024: 24 pre-norm blocks of 12,602,024 (q/k/v 3D*D + q/v biases, attention LN,
        # proj, SwiGLU hidden 2730 with its LN, two LNs) = 302,448,576; embedding 867,328;
        # head LayerNorm(D) + Linear(D -> 768, bias) = 2,048 + 787,200.
        ("EVA02-L-14", 304_105_152, 789_248),
    ],
)
def test_eva_towers_count_on_the_meta_device_without_allocating(name, tower, head) -> None:
    with torch.device("meta"):
        backbone = build_backbone(name, None, with_projection=True, weights_dtype=torch.bfloat16)
    assert isinstance(backbone, FrozenEVA)
    assert {p.device.type for p in backbone.parameters()} == {"meta"}
    assert sum(p.numel() for p in backbone.parameters()) == tower
    projection = [*backbone.ln_post.parameters(), *backbone.proj.parameters()]
    assert sum(p.numel() for p in projection) == head


def test_build_backbone_dispatches_on_the_image_towers_type() -> None:
    assert type(build_backbone("s4v-tiny")) is FrozenViT
    assert type(build_backbone(TINY_EVA_MODEL)) is FrozenEVA
    torch.manual_seed(0)
    vit = open_clip.create_model("s4v-tiny")
    assert not is_eva_tower(vit.visual) and is_eva_tower(_tiny_eva_clip().visual)
    with pytest.raises(TypeError, match="Eva"):
        FrozenEVA(vit.visual, {"name": "s4v-tiny"})
