"""Recognition models: tiny forward per method, gradient routing, memory kept, state round trips.

The forward contract of every preset x method is in tests/test_registered_models.py (meta device).
"""

from __future__ import annotations

import pytest
import torch

from s4v_core.memory import SavedTensorMeter
from s4v_core.side import SideNetwork, SideNetworkConfig
from s4v_recognition import METHODS, PRESETS, VideoClassifier, build_model

K = 5

# (width D, layers L, patch p) of the open_clip ViTs behind the presets.
_BACKBONES = {
    "ViT-B-32-quickgelu": (768, 12, 32),
    "ViT-B-16-quickgelu": (768, 12, 16),
    "ViT-L-14-quickgelu": (1024, 24, 14),
    "s4v-tiny": (64, 4, 8),
    "EVA02-E-14": (1792, 64, 14),
    "EVA02-L-14": (1024, 24, 14),
    "s4v-tiny-eva": (64, 4, 8),
}


def _frames(batch: int = 2, frames: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", METHODS)
def test_tiny_preset_maps_frames_to_logits_for_every_method(method: str) -> None:
    model = build_model("tiny", K, method=method)
    logits = model(_frames())
    assert logits.shape == (2, K) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert model.backbone_identity == {"name": "s4v-tiny", "pretrained": None, "sha256": None}


def test_gradients_reach_every_side_and_head_parameter_and_no_backbone_parameter() -> None:
    model = build_model("tiny", K)
    model(_frames()).logsumexp(dim=1).sum().backward()
    backbone = model.encoder.backbone
    backbone_params = {id(p) for p in backbone.parameters()}
    for name, param in model.named_parameters():
        if id(param) in backbone_params:
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.requires_grad and param.grad is not None, name
            assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("method", "trains_backbone"), [("linear-probe", False), ("full-finetune", True)]
)
def test_baselines_train_the_head_and_only_full_finetuning_trains_the_vit(
    method: str, trains_backbone: bool
) -> None:
    model = build_model("tiny", K, method=method)
    model(_frames()).sum().backward()
    assert model.head.weight.grad is not None
    encoder_params = list(model.encoder.parameters())
    assert all((p.grad is not None) == trains_backbone for p in encoder_params)
    assert all(p.requires_grad == trains_backbone for p in encoder_params)


def test_frozen_backbone_saves_nothing_for_backward() -> None:
    model = build_model("tiny", K)
    images = _frames().flatten(0, 1)
    with SavedTensorMeter(exclude=model.parameters()) as meter:
        for _ in model.encoder.backbone.iter_blocks(images):
            pass
    assert meter.bytes == 0


def test_the_only_backbone_wide_tensors_kept_for_backward_are_the_tap_inputs() -> None:
    model = build_model("tiny", K)
    frames = _frames()
    tokens = list(model.encoder.backbone.iter_blocks(frames.flatten(0, 1)))  # L x (B*T, 1+N, D)
    width = tokens[0].shape[-1]
    assert width != model.encoder.side.out_dim  # so that D-wide tensors are the backbone's

    kept: set[int] = set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        # D wide and as large as one layer's tokens, in whatever view autograd saves it.
        if tensor.shape[-1] == width and tensor.numel() == tokens[0].numel():
            kept.add(tensor.untyped_storage().data_ptr())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model.head(model.encoder.side(frames, iter(tokens)))
    assert logits.requires_grad
    # Exactly the backbone's own tokens, one per layer: no D-wide copy, no LayerNorm output.
    assert kept == {t.untyped_storage().data_ptr() for t in tokens}
    assert len(kept) == model.encoder.backbone.num_layers


def test_grad_checkpointing_gives_the_same_logits_and_gradients() -> None:
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model("tiny", K, grad_checkpointing=checkpointing)
        logits = model(_frames())
        logits.logsumexp(dim=1).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results.append((logits.detach(), grads))
    (logits_a, grads_a), (logits_b, grads_b) = results
    torch.testing.assert_close(logits_b, logits_a, rtol=0, atol=0)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, msg=name)
    model.set_grad_checkpointing(False)
    assert not model.encoder.side.grad_checkpointing


def test_trainable_state_round_trips_without_backbone_weights() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", K)
    model.train()
    model(_frames())  # move BatchNorm statistics away from their initial values
    state = model.trainable_state_dict()
    assert state and not any(key.startswith("encoder.backbone.") for key in state)
    assert "encoder.side.stem.norm.running_mean" in state and "head.weight" in state
    torch.manual_seed(1)
    fresh = build_model("tiny", K)
    fresh.encoder.backbone.load_state_dict(model.encoder.backbone.state_dict())
    fresh.load_trainable_state_dict(state)
    model.eval()
    fresh.eval()
    torch.testing.assert_close(fresh(_frames(seed=3)), model(_frames(seed=3)), rtol=0, atol=0)


def test_loading_a_state_that_does_not_fit_names_the_key() -> None:
    model = build_model("tiny", K)
    state = model.trainable_state_dict()
    state["head.weight"] = torch.zeros(K + 1, 128)
    with pytest.raises(ValueError, match=r"head\.weight"):
        model.load_trainable_state_dict(state)
    del state["head.weight"]
    with pytest.raises(ValueError, match=r"missing keys head\.weight$"):
        model.load_trainable_state_dict(state)


def test_bad_arguments_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("side4video-b99", K)
    with pytest.raises(ValueError, match="unknown method"):
        build_model("tiny", K, method="adapter")
    with pytest.raises(ValueError, match="multiple of head_dim"):
        build_model("tiny", K, side_dim=48)
    with pytest.raises(ValueError, match="expected frames"):
        build_model("tiny", K)(torch.zeros(2, 3, 32, 32))


def test_overrides_change_frames_and_side_width() -> None:
    model = build_model("tiny", K, num_frames=4, side_dim=192, dropout=0.5)
    assert isinstance(model, VideoClassifier)
    assert model.num_frames == 4 and model.head.in_features == 192
    assert model(_frames(frames=4)).shape == (2, K)


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("preset", "trainable", "total"),
    [("side4video-b16", 21_112_686, 106_910_574), ("side4video-b32", 23_277_486, 110_731_950)],
)
def test_real_presets_count_exactly_the_reference_trainable_parameters(
    preset: str, trainable: int, total: int
) -> None:
    model = build_model(preset, 174)
    # The reference's count under Recognition/train_vision.py's freezing, head included.
    assert _trainable(model) == trainable
    assert sum(p.numel() for p in model.parameters()) == total


def test_light_and_large_presets_count_the_paper_parameters() -> None:
    # Side network + head only (no backbone needed): paper Table 2 light B/16 ~4.3 M, L/14 102.1 M.
    for name, expected in [("side4video-b16-light", 4.3e6), ("side4video-l14", 102.1e6)]:
        preset = PRESETS[name]
        width, layers, patch = _BACKBONES[preset.backbone]
        side = SideNetwork(
            SideNetworkConfig(side_dim=preset.side_dim),
            backbone_width=width,
            num_layers=layers,
            patch_size=patch,
            grid=(224 // patch, 224 // patch),
            num_frames=8,
        )
        count = _trainable(side) + preset.side_dim * 174 + 174
        assert abs(count - expected) < 0.05e6, (name, count)


def test_counting_without_building_matches_the_built_model() -> None:
    from s4v_recognition import METHODS, count_parameters

    for method in METHODS:
        model = build_model("tiny", K, method=method)
        total = sum(p.numel() for p in model.parameters())
        assert count_parameters("tiny", K, method) == (_trainable(model), total), method
    assert count_parameters("side4video-b16", 174)[0] == 21_112_686
