"""FrozenViT: open_clip maths, frozen structurally, no graph, real weight loading."""

from __future__ import annotations

import hashlib

import open_clip
import pytest
import torch
from torch import nn

from s4v_core import backbone_vit as backbone_module
from s4v_core.backbone import build_backbone, create_clip
from s4v_core.backbone_vit import FrozenViT
from s4v_core.memory import SavedTensorMeter


@pytest.fixture(scope="module")
def tiny_clip() -> open_clip.CLIP:
    torch.manual_seed(0)
    model, _ = create_clip("s4v-tiny")
    return model


def test_tiny_config_is_a_full_clip_with_a_text_tower(tiny_clip: open_clip.CLIP) -> None:
    tokens = open_clip.get_tokenizer("s4v-tiny")(["a video of a cat"])
    assert tokens.shape == (1, 32)
    with torch.no_grad():
        text = tiny_clip.encode_text(tokens)
        image = tiny_clip.encode_image(torch.randn(2, 3, 32, 32))
    assert text.shape == (1, 64) and image.shape == (2, 64)


def test_backbone_attributes_describe_the_vit() -> None:
    backbone = build_backbone("s4v-tiny")
    assert (backbone.width, backbone.num_layers) == (64, 4)
    assert (backbone.patch_size, backbone.image_size, backbone.grid) == (8, 32, (4, 4))
    assert backbone.mean == open_clip.OPENAI_DATASET_MEAN
    assert backbone.std == open_clip.OPENAI_DATASET_STD
    assert backbone.identity == {"name": "s4v-tiny", "pretrained": None, "sha256": None}


def test_tokens_after_every_block_equal_open_clip_intermediates(tiny_clip: open_clip.CLIP) -> None:
    backbone = FrozenViT(tiny_clip.visual, {"name": "s4v-tiny"}, with_projection=True)
    images = torch.randn(3, 3, 32, 32)
    tokens = backbone(images)
    reference = tiny_clip.visual.forward_intermediates(
        images, output_fmt="NLC", output_extra_tokens=True, intermediates_only=True
    )
    assert len(tokens) == 4
    for ours, patches, cls in zip(
        tokens,
        reference["image_intermediates"],
        reference["image_intermediates_prefix"],
        strict=True,
    ):
        assert ours.shape == (3, 17, 64)
        torch.testing.assert_close(ours, torch.cat([cls, patches], dim=1))
    with torch.no_grad():
        torch.testing.assert_close(backbone.encode_image(images), tiny_clip.visual(images))


@pytest.mark.parametrize("act", ["quickgelu", "gelu"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_fast_blocks_compute_open_clips_block_forward(act: str, autocast: bool) -> None:
    torch.manual_seed(0)
    clip = open_clip.create_model("s4v-tiny")
    visual = clip.visual
    assert all(
        isinstance(b.mlp.gelu, open_clip.transformer.QuickGELU)
        for b in visual.transformer.resblocks
    )
    if act == "gelu":
        for block in visual.transformer.resblocks:
            block.mlp.gelu = nn.GELU()
    backbone = FrozenViT(visual, {"name": "s4v-tiny"})
    assert all(backbone._plain)
    tokens = torch.randn(3, 17, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for index, block in enumerate(backbone.blocks):
            ours = backbone.block(index, tokens)
            theirs = block(tokens)
            assert ours.dtype == theirs.dtype == torch.float32
            tolerance = {"rtol": 2e-2, "atol": 2e-2} if autocast else {}
            torch.testing.assert_close(ours, theirs, **tolerance)
            tokens = theirs


def test_cpu_blocks_run_over_groups_of_images_with_the_same_result(monkeypatch) -> None:
    torch.manual_seed(0)
    backbone = FrozenViT(open_clip.create_model("s4v-tiny").visual, {"name": "s4v-tiny"})
    tokens = torch.randn(5, 17, 64)
    whole = backbone.block(0, tokens)
    groups = []
    real_block = backbone_module._frozen_block

    def counting(block, x, out=None):
        groups.append(x.shape[0])
        return real_block(block, x, out)

    monkeypatch.setattr(backbone_module, "_frozen_block", counting)
    per_image = 17 * 256 * 4  # fp32 MLP hidden bytes of one image
    monkeypatch.setattr(backbone_module, "CPU_CHUNK_BYTES", 2 * per_image)
    grouped = backbone.block(0, tokens)
    assert groups == [2, 2, 1]  # at most 2 images' hidden activations at a time
    torch.testing.assert_close(grouped, whole)
    groups.clear()
    monkeypatch.setattr(backbone_module, "CPU_CHUNK_BYTES", 3 * per_image)
    torch.testing.assert_close(backbone.block(0, tokens), whole)
    assert groups == [3, 2]


def test_blocks_the_fast_path_does_not_cover_run_open_clips_forward() -> None:
    torch.manual_seed(0)
    clip = open_clip.create_model("s4v-tiny")
    scaled = open_clip.transformer.ResidualAttentionBlock(64, 2, ls_init_value=0.5)
    clip.visual.transformer.resblocks[1] = scaled
    backbone = FrozenViT(clip.visual, {"name": "s4v-tiny"})
    assert backbone._plain == [True, False, True, True]
    tokens = torch.randn(2, 17, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone.block(1, tokens), scaled(tokens), rtol=0, atol=0)


def test_backbone_is_frozen_builds_no_graph_and_saves_nothing() -> None:
    backbone = build_backbone("s4v-tiny")
    backbone.train()
    assert not backbone.training
    assert all(not p.requires_grad for p in backbone.parameters())
    images = torch.randn(4, 3, 32, 32, requires_grad=True)
    with SavedTensorMeter() as meter:
        tokens = backbone(images)
    assert meter.bytes == 0
    assert all(t.grad_fn is None and not t.requires_grad for t in tokens)


def _fresh_weights(seed: int) -> open_clip.CLIP:
    torch.manual_seed(seed)
    return open_clip.create_model("s4v-tiny")


def _assert_backbone_has(backbone: FrozenViT, clip: open_clip.CLIP) -> None:
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone.encode_image(images), clip.visual(images))


@pytest.mark.parametrize("layout", ["plain", "module-prefix", "state_dict-key", "visual-only"])
def test_loads_open_clip_state_dict_files(tmp_path, layout: str) -> None:
    clip = _fresh_weights(1)
    state = clip.state_dict()
    if layout == "module-prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    elif layout == "state_dict-key":
        state = {"state_dict": state, "epoch": 3}
    elif layout == "visual-only":
        state = {k: v for k, v in state.items() if k.startswith("visual.")}
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    torch.manual_seed(99)  # the random init must not be what we compare against
    backbone = build_backbone("s4v-tiny", str(path), with_projection=True)
    _assert_backbone_has(backbone, clip)
    assert backbone.identity == {
        "name": "s4v-tiny",
        "pretrained": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_loads_openai_torchscript_archives_in_half_precision(tmp_path) -> None:
    clip = _fresh_weights(2)
    clip.half()  # OpenAI ships fp16 TorchScript archives
    path = tmp_path / "openai.pt"
    torch.jit.script(clip).save(str(path))
    backbone = build_backbone("s4v-tiny", str(path), with_projection=True)
    assert all(p.dtype == torch.float32 for p in backbone.parameters())
    _assert_backbone_has(backbone, clip.float())


def test_weights_that_do_not_fit_name_the_key(tmp_path) -> None:
    state = _fresh_weights(3).state_dict()
    state["visual.conv1.weight"] = torch.zeros(64, 3, 4, 4)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"visual\.conv1\.weight"):
        build_backbone("s4v-tiny", str(path))


def test_non_checkpoint_files_and_unknown_tags_are_refused(tmp_path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.pt"):
        build_backbone("s4v-tiny", str(path))
    with pytest.raises(ValueError, match="neither a file nor an open_clip tag"):
        build_backbone("s4v-tiny", "no-such-tag")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        build_backbone("ViT-Nope-1")
