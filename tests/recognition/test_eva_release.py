"""EVA recognition releases, laid out as the reference's EVA code saves them, imported whole.

The files are written by ``tests/reference_eva.py``, the tests' own re-statement of the
reference's ``EVAVisionTransformer`` and ``VideoCLIP`` (module names and forward), so "the
reference's logits" are that re-statement's; nothing here reads the importer's name tables.
"""

from __future__ import annotations

import pytest
import torch
from timm.models.eva import Eva

from s4v_core.eva_reference import EvaReferenceParts, convert_eva_side, convert_eva_tower
from s4v_recognition import build_model, load_side4video_checkpoint
from s4v_recognition.checkpoints import convert_side4video_checkpoint, load_converted_checkpoint

K, T, C = 5, 8, 128  # tiny-eva: 8 frames, C = 128 (two side heads of 64, as the reference)


def _reference(ref, **tower):
    torch.manual_seed(0)
    visual = ref.EVAVisionTransformer(**ref.tiny_eva_tower(**tower), frames=T, side_dim=C)
    model = ref.VideoCLIP(visual, C, K)
    ref.randomise_batch_norms(model, torch.Generator().manual_seed(1))
    return model.eval()


def _save(model, path) -> None:
    """As ``train_vision.best_saving`` writes it (AdamW over the trainable parameters)."""
    trainable = [p for n, p in model.named_parameters() if "side" in n or n.startswith("fc.")]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.15)
    torch.save(
        {
            "epoch": 3,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
        },
        path,
    )


@pytest.fixture(scope="module")
def release(reference_eva, tmp_path_factory):
    model = _reference(reference_eva)
    path = tmp_path_factory.mktemp("eva") / "model_best.pt"
    _save(model, path)
    return model, path


@pytest.mark.usefixtures("one_thread")
def test_an_eva_release_imports_whole_without_pretrained_and_gives_the_reference_logits(
    release,
) -> None:
    reference, path = release
    imported = load_side4video_checkpoint(path, "tiny-eva", K)
    frames = torch.randn(2, T, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(frames)
        torch.testing.assert_close(imported(frames), expected, rtol=1e-4, atol=1e-5)
    assert imported.backbone_identity["pretrained"] == str(path)
    # The file is a valid `pretrained` too: create_clip reads the reference's EVA names.
    rebuilt = build_model("tiny-eva", K, pretrained=str(path)).eval()
    rebuilt.load_trainable_state_dict(imported.trainable_state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(frames), expected, rtol=1e-4, atol=1e-5)
    assert rebuilt.backbone_identity == imported.backbone_identity


@pytest.mark.usefixtures("one_thread")
def test_converting_an_eva_release_keeps_its_backbone(release, tmp_path) -> None:
    reference, path = release
    convert_side4video_checkpoint(path, tmp_path / "s4v.pt", "tiny-eva", K)
    converted = load_converted_checkpoint(tmp_path / "s4v.pt")
    frames = torch.randn(1, T, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(converted(frames), reference(frames), rtol=1e-4, atol=1e-5)


def test_pretrained_is_refused_for_an_eva_release_that_carries_its_backbone(release) -> None:
    _, path = release
    with pytest.raises(ValueError, match="carries its EVA backbone"):
        load_side4video_checkpoint(path, "tiny-eva", K, pretrained="some.pt")


@pytest.mark.parametrize(
    ("tower", "message"),
    [
        ({"rope": False}, "s4v-tiny-eva has a rotary position embedding and the file has none"),
        ({"swiglu": False, "hidden": 170}, "'blocks.0.mlp.fc1.bias' .* has no place"),
        ({"subln": False}, "needs 'blocks.0.attn.norm.bias' .* which the EVA tower in the file"),
        ({"hidden": 128}, r"'blocks.0.mlp.fc1_g.weight' has shape \(128, 64\), .* \(170, 64\)"),
        ({"depth": 6}, "the EVA tower in the file has 6 blocks, s4v-tiny-eva has 4"),
    ],
)
def test_a_tower_that_is_not_the_presets_is_refused_by_name(
    reference_eva, tmp_path, tower, message
) -> None:
    path = tmp_path / "model_best.pt"
    _save(_reference(reference_eva, **tower), path)
    with pytest.raises(ValueError, match=message):
        load_side4video_checkpoint(path, "tiny-eva", K)


def test_a_retrieval_file_or_a_foreign_key_is_refused(release, tmp_path) -> None:
    _, path = release
    state = torch.load(path, weights_only=True)["model_state_dict"]
    torch.save({"model_state_dict": {**state, "logit_scale": torch.ones(())}}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="unknown key 'logit_scale'"):
        load_side4video_checkpoint(tmp_path / "a.pt", "tiny-eva", K)
    state = {**state, "visual.side_proj": torch.zeros(C, 64)}
    torch.save({"model_state_dict": state}, tmp_path / "b.pt")
    with pytest.raises(ValueError, match="belongs to a retrieval model"):
        load_side4video_checkpoint(tmp_path / "b.pt", "tiny-eva", K)


@pytest.mark.usefixtures("one_thread")
def test_a_fused_qkv_tower_is_split_for_a_timm_eva_with_separate_projections(
    reference_eva,
) -> None:
    # EVA02-CLIP-bigE-14's attention (fused qkv, q/v biases) into a timm Eva that keeps q, k, v
    # apart (as timm's EVA02-B/L do), pre-norm, GELU MLP; same outputs after the final norm.
    torch.manual_seed(0)
    config = dict(subln=False, swiglu=False, rope=False, postnorm=False, hidden=256)
    reference = reference_eva.EVAVisionTransformer(
        **reference_eva.tiny_eva_tower(**config), frames=T, side_dim=C
    ).eval()
    trunk = Eva(
        img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2, qkv_fused=False,
        num_classes=0, global_pool="token",
    ).eval()  # fmt: skip
    tower_keys = {k: v for k, v in trunk.state_dict().items() if not k.startswith("norm.")}
    parts = EvaReferenceParts(reference.state_dict())
    state = convert_eva_tower(parts, tower_keys, has_rope=False, source="test", backbone="Eva")
    assert "blocks.0.attn.q_proj.bias" in state and "blocks.0.attn.k_proj.bias" not in state
    state |= {"norm.weight": reference.norm.weight, "norm.bias": reference.norm.bias}
    trunk.load_state_dict(state)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        x = reference.patch_embed(images)
        x = torch.cat([reference.cls_token.expand(3, -1, -1), x], dim=1) + reference.pos_embed
        for block in reference.blocks:
            x = block(x)
        torch.testing.assert_close(trunk.forward_features(images), reference.norm(x))


def test_the_e14_release_layout_maps_one_to_one_onto_side4video_e14(reference_eva) -> None:
    # The reference's EVA02-CLIP-bigE-14 ViT (config: 64 post-norm blocks of width 1792, 16 heads,
    # MLP 15360, fused qkv, no rope/subln/swiglu; T=8, C=576) against the preset, on meta.
    with torch.device("meta"):
        reference = reference_eva.EVAVisionTransformer(
            image=224, patch=14, dim=1792, depth=64, heads=16, hidden=15360, embed_dim=1024,
            frames=8, side_dim=576, postnorm=True, subln=False, swiglu=False, rope=False,
        )  # fmt: skip
        model = build_model("side4video-e14", 174)
    parts = EvaReferenceParts(reference.state_dict())
    trunk = model.encoder.backbone.trunk.state_dict()
    tower = convert_eva_tower(parts, trunk, has_rope=False, source="E/14", backbone="EVA02-E-14")
    assert set(tower) == set(trunk) and len(tower) == 836
    side = model.encoder.side
    converted = convert_eva_side(
        parts, side.state_dict(), side.side_layers, retrieval=False, source="E/14"
    )
    assert set(converted) == set(side.state_dict())
    assert len(side.side_layers) == 32 and sorted(parts.head) == [
        "head.bias",
        "head.weight",
        "norm.bias",
        "norm.weight",
    ]


@pytest.mark.usefixtures("one_thread")
def test_a_file_with_only_the_side_network_and_head_takes_its_tower_from_pretrained(
    release, tmp_path
) -> None:
    reference, path = release
    whole = load_side4video_checkpoint(path, "tiny-eva", K)
    state = torch.load(path, weights_only=True)["model_state_dict"]
    kept = {k: v for k, v in state.items() if k.startswith(("visual.side_", "fc."))}
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in kept.items()}}, tmp_path / "s.pt")
    # The reference release itself serves as the tower's weights (create_clip reads its names).
    alone = load_side4video_checkpoint(tmp_path / "s.pt", "tiny-eva", K, pretrained=str(path))
    assert alone.backbone_identity == whole.backbone_identity
    frames = torch.randn(1, T, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(alone(frames), reference(frames), rtol=1e-4, atol=1e-5)
