"""The memory plan's parts are consistent: counted weights, fitted saved bytes, totals, batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from s4v_recognition import build_model, count_parameters
from s4v_recognition.memory_plan import (
    CudaAutocastPolicy,
    MemoryPlan,
    estimate_training_memory,
    measure_saved_bytes,
    reduced_depth_model,
    weight_bytes,
)

pytestmark = pytest.mark.usefixtures("one_thread")

K = 174
TOLERANCE = 0.03  # relative: the fit against a real measurement


@pytest.fixture(scope="module")
def plans() -> dict[str, MemoryPlan]:
    # tiny: a CLIP ViT with side blocks after every layer, fitted at depths 1 and 2 of 4;
    # tiny-eva: the EVA side network after the odd layers, fitted at depths 2 and 4 (its full depth).
    return {
        preset: estimate_training_memory(preset, batch_sizes=(1, 2, 8), num_classes=K)
        for preset in ("tiny", "tiny-eva")
    }


def _relative(a: float, b: float) -> float:
    return abs(a - b) / b


@pytest.mark.parametrize("preset", ["tiny", "tiny-eva"])
def test_weight_bytes_are_the_meta_count_times_the_dtype_sizes(plans, preset) -> None:
    plan = plans[preset]
    trainable, total = count_parameters(preset, K)
    assert (plan.trainable_params, plan.frozen_params) == (trainable, total - trainable)
    assert plan.frozen_weight_bytes == 4 * plan.frozen_params  # fp32 backbones
    assert plan.trainable_weight_bytes == 4 * trainable
    assert plan.gradient_bytes == 4 * trainable
    assert plan.optimizer_bytes == 8 * trainable  # AdamW's two moments
    assert plan.weight_bytes == plan.frozen_weight_bytes + plan.trainable_weight_bytes


def test_e14_weights_are_counted_in_bf16_without_building_them() -> None:
    counted = weight_bytes("side4video-e14", K)  # on the meta device
    assert counted.frozen_params == 4_348_717_312
    assert counted.frozen_weight_bytes == 2 * counted.frozen_params
    assert counted.trainable_params == 183_273_408 + 577 * K  # side network + head
    assert counted.trainable_weight_bytes == 4 * counted.trainable_params
    assert (counted.backbone_layers, counted.side_blocks) == (64, 32)


def test_the_fit_at_full_depth_matches_the_real_tiny_model() -> None:
    plan = estimate_training_memory("tiny", batch_sizes=(1,), fit_depths=(1, 2), num_classes=K)
    assert {m.depth for m in plan.measurements} == {1, 2} and plan.side_blocks == 4
    real = build_model("tiny", K, grad_checkpointing=True)
    for batch in (1, 2):
        measured = measure_saved_bytes(real, batch)
        assert _relative(plan.fit(batch, plan.side_blocks), measured) < TOLERANCE


def test_the_reduced_eva_copy_is_the_model_and_the_fit_extrapolates(plans) -> None:
    plan = plans["tiny-eva"]
    real = build_model("tiny-eva", K, grad_checkpointing=True)
    full = next(m for m in plan.measurements if m.depth == 4 and m.batch_size == 1)
    # At its full depth the reduced copy is the model: the same bytes, exactly.
    assert full.saved_bytes == measure_saved_bytes(real, 1)
    assert sum(p.numel() for p in reduced_depth_model("tiny-eva", 4).parameters()) == sum(
        p.numel() for p in real.parameters()
    )
    # Fitted at depths 2 and 4, the estimate holds at depth 8 (4 side blocks).
    deeper = reduced_depth_model("tiny-eva", 8, num_classes=K)
    assert _relative(plan.fit(2, 4), measure_saved_bytes(deeper, 2)) < TOLERANCE


def test_saved_bytes_are_linear_in_the_batch(plans) -> None:
    for plan in plans.values():
        assert plan.linearity_error < 0.01
    real = build_model("tiny", K, grad_checkpointing=True)
    one, two, three = (measure_saved_bytes(real, b) for b in (1, 2, 3))
    assert _relative(three - two, two - one) < 0.01


@pytest.mark.parametrize("preset", ["tiny", "tiny-eva"])
def test_totals_are_the_sum_of_their_parts(plans, preset) -> None:
    plan = plans[preset]
    assert [b.batch_size for b in plan.batches] == [1, 2, 8]
    assert plan.static_bytes == (
        plan.weight_bytes
        + plan.gradient_bytes
        + plan.optimizer_bytes
        + plan.buffer_bytes
        + plan.reserve_bytes
    )
    for b in plan.batches:
        assert b.transient_bytes == b.recompute_bytes + b.backbone_layer_bytes + (
            b.autocast_copy_bytes
        )
        assert b.total_bytes == plan.static_bytes + b.saved_bytes + b.transient_bytes
        assert b.recompute_bytes > 0 and b.backbone_layer_bytes > 0
        assert b == plan.estimate(b.batch_size)
    assert plan.batches[0].total_bytes < plan.batches[1].total_bytes < plan.batches[2].total_bytes
    capacity = plan.total_bytes(8) + 1
    largest = plan.largest_batch(capacity)
    assert largest >= 8
    assert plan.total_bytes(largest) <= capacity < plan.total_bytes(largest + 1)
    assert plan.largest_batch(plan.static_bytes) == 0


def test_without_checkpointing_more_is_saved_and_nothing_recomputed(plans) -> None:
    plain = estimate_training_memory("tiny-eva", batch_sizes=(2,), checkpointing=False)
    checkpointed = plans["tiny-eva"].estimate(2)
    assert plain.batches[0].recompute_bytes == 0
    assert plain.batches[0].saved_bytes > checkpointed.saved_bytes
    fp32 = estimate_training_memory("tiny-eva", batch_sizes=(2,), precision="fp32")
    assert fp32.batches[0].autocast_copy_bytes == 0
    assert fp32.batches[0].saved_bytes > checkpointed.saved_bytes


def test_cpu_autocast_runs_cuda_fp32_ops_in_fp32_under_the_policy() -> None:
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.layer_norm(x, (8,)).dtype == torch.bfloat16  # CPU autocast's own policy
        with CudaAutocastPolicy():
            assert F.layer_norm(x, (8,)).dtype == torch.float32  # as CUDA autocast
            assert x.softmax(-1).dtype == torch.float32
            assert F.linear(x.float(), torch.randn(3, 8)).dtype == torch.bfloat16
    with CudaAutocastPolicy():
        assert F.layer_norm(x, (8,)).dtype == torch.bfloat16  # no autocast, no change


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="precision"):
        estimate_training_memory("tiny", precision="fp8")
    with pytest.raises(ValueError, match="positive"):
        estimate_training_memory("tiny", batch_sizes=(0,))
    with pytest.raises(ValueError, match="unknown preset"):
        estimate_training_memory("no-such-preset")
