"""The EVA-02 path at tiny size: gradient routing, bf16 weights, E/14 counts and recipes, a run.

The retrieval run on EVA is in test_retrieval_run.py (it shares that module's captioned data).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from s4v_core.memory import SavedTensorMeter
from s4v_orchestration.overrides import load_run_config
from s4v_orchestration.train import train
from s4v_recognition import build_model, count_parameters
from s4v_recognition.presets import get_preset


def _frames(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_tiny_eva_trains_side_and_head_only_and_the_backbone_saves_nothing(one_thread) -> None:
    torch.manual_seed(0)
    model = build_model("tiny-eva", 5)
    assert model.encoder.side.side_layers == (1, 3)  # after the odd layers only
    frames = _frames()
    with SavedTensorMeter() as backbone_meter:
        images = frames.flatten(0, 1)
        for _ in model.encoder.backbone.iter_blocks(images):
            pass
    assert backbone_meter.bytes == 0
    model(frames).logsumexp(dim=1).sum().backward()
    for name, p in model.named_parameters():
        if name.startswith("encoder.backbone."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_backbone_weights_give_the_fp32_logits_within_bf16_tolerance(one_thread) -> None:
    from dataclasses import replace

    from s4v_recognition import VideoClassifier, encoders

    torch.manual_seed(0)
    fp32 = build_model("tiny-eva", 5).eval()
    # The same preset with bf16 backbone weights, built through the side4video builder.
    bf16_preset = replace(get_preset("tiny-eva"), backbone_dtype="bf16")
    torch.manual_seed(0)
    encoder, identity = encoders.side4video(bf16_preset, None, False)
    bf16 = VideoClassifier(
        encoder, 5, method="side4video", preset=bf16_preset, backbone_identity=identity
    ).eval()
    assert next(bf16.encoder.backbone.parameters()).dtype == torch.bfloat16
    bf16.load_trainable_state_dict(fp32.trainable_state_dict())
    with torch.no_grad():
        want, got = fp32(_frames(1)), bf16(_frames(1))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=0.05 * want.abs().max().item(), rtol=0)


def test_e14_preset_counts_on_the_meta_device_without_building_its_weights() -> None:
    trainable, total = count_parameters("side4video-e14", 174)
    assert trainable == 183_273_408 + 576 * 174 + 174  # the EVA side network and the head
    assert total - trainable == 4_348_717_312  # the frozen EVA02-E-14 tower, projection dropped


def test_e14_recipes_are_the_references(tmp_path: Path) -> None:
    backbone = [("model.preset", "side4video-e14", "--backbone")]
    k400 = load_run_config("recognition", "k400", shortcuts=backbone)
    assert (k400.data.batch_size, k400.solver.epochs, k400.solver.lr) == (1, 20, 1e-4)
    assert k400.data.rand_augment and k400.model.pretrained == "laion2b_s4b_b115k"
    ssv2 = load_run_config("recognition", "ssv2", shortcuts=backbone)
    assert (ssv2.data.batch_size, ssv2.solver.epochs, ssv2.solver.warmup_epochs) == (8, 25, 6)


def test_tiny_eva_recognition_run_goes_through_the_training_loop(tiny_config) -> None:
    config = tiny_config("eva", **{"model.preset": "tiny-eva"})
    metrics = train(config)
    assert metrics["val/best_top1"] >= metrics["val/top1"]
    # The best epoch's weights are tested: one centre view on the validation frames, as validated.
    assert metrics["test/top1"] == pytest.approx(metrics["val/best_top1"])
