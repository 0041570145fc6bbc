"""The memory plan agrees with the models it describes: built, counted and measured directly.

Each estimate the plan makes for a model the tests can build (the tiny presets at full depth, or
deeper than the depths it was fitted at) is checked against that model itself.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from s4v_recognition import build_model
from s4v_recognition.bench.measure import CudaAutocastPolicy, measure_saved_bytes, random_batch
from s4v_recognition.bench.memory_plan import (
    MemoryPlan,
    estimate_training_memory,
    reduced_depth_model,
    weight_bytes,
)

pytestmark = pytest.mark.usefixtures("one_thread")

K = 174
TOLERANCE = 0.03  # relative: the fitted saved bytes against a measurement of the model itself


@pytest.fixture(scope="module")
def plans() -> dict[str, MemoryPlan]:
    # tiny: a CLIP ViT with side blocks after every layer, fitted at depths 1 and 2 of 4;
    # tiny-eva: the EVA side network after the odd layers, fitted at depths 2 and 4 (its full depth).
    threads = torch.get_num_threads()  # built before the function-scoped one_thread fixture
    torch.set_num_threads(1)
    try:
        return {
            preset: estimate_training_memory(preset, batch_sizes=(1, 2, 8), num_classes=K)
            for preset in ("tiny", "tiny-eva")
        }
    finally:
        torch.set_num_threads(threads)


def _relative(a: float, b: float) -> float:
    return abs(a - b) / b


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("preset", ["tiny", "tiny-eva"])
def test_static_bytes_are_what_one_adamw_step_of_the_built_model_holds(plans, preset) -> None:
    plan = plans[preset]
    torch.manual_seed(0)
    model = build_model(preset, K, grad_checkpointing=True)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert (plan.frozen_params, plan.trainable_params) == (
        sum(p.numel() for p in frozen),
        sum(p.numel() for p in trainable),
    )
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    frames, labels = random_batch(model, 1, seed=0)
    F.cross_entropy(model(frames), labels).backward()
    optimizer.step()
    moments = [
        tensor
        for state in optimizer.state.values()
        for name, tensor in state.items()
        if name != "step"  # AdamW's step counters: one scalar per tensor, not counted
    ]
    held = (
        _bytes(model.parameters())
        + _bytes(p.grad for p in trainable)
        + _bytes(moments)
        + _bytes(model.buffers())
    )
    assert held == plan.static_bytes - plan.reserve_bytes


def test_e14_is_counted_on_meta_and_its_reduced_builds_are_its_layers() -> None:
    counted = weight_bytes("side4video-e14", K)  # the full model on the meta device
    assert counted.frozen_params == 4_348_717_312
    assert counted.frozen_weight_bytes == 2 * counted.frozen_params  # bf16, never fp32
    assert counted.trainable_params == 183_273_408 + 577 * K  # side network + head
    assert (counted.backbone_layers, counted.side_blocks) == (64, 32)
    # The depth-reduced builds differ from the full model only in depth: one layer (and one side
    # block per two layers) more adds the same parameters each time, up to the full count.
    with torch.device("meta"):
        two, four = (reduced_depth_model("side4video-e14", d, num_classes=K) for d in (2, 4))

    def count(model, trainable: bool) -> int:
        return sum(p.numel() for p in model.parameters() if p.requires_grad == trainable)

    layer = (count(four, False) - count(two, False)) // 2
    side_block = count(four, True) - count(two, True)
    assert count(two, False) + 62 * layer == counted.frozen_params
    assert count(two, True) + 31 * side_block == counted.trainable_params
    assert next(four.encoder.backbone.parameters()).dtype == torch.bfloat16


def test_the_fit_at_full_depth_matches_the_built_tiny_model() -> None:
    plan = estimate_training_memory("tiny", batch_sizes=(1,), fit_depths=(1, 2), num_classes=K)
    assert {m.depth for m in plan.measurements} == {1, 2} and plan.side_blocks == 4
    torch.manual_seed(0)
    real = build_model("tiny", K, grad_checkpointing=True)
    for batch in (1, 2):
        measured = measure_saved_bytes(real, batch)
        assert _relative(plan.fit(batch, plan.side_blocks), measured) < TOLERANCE
    # Without checkpointing, the model's saved bytes at full depth are the unchecked fit's.
    real.set_grad_checkpointing(False)
    unchecked = measure_saved_bytes(real, 2)
    assert _relative(plan.unchecked_fit(2, plan.side_blocks), unchecked) < TOLERANCE
    # One recomputed block holds what a block saves unchecked beyond what it keeps checked: the
    # real model's difference between the two is its side blocks' worth of that transient.
    real.set_grad_checkpointing(True)
    difference = unchecked - measure_saved_bytes(real, 2)
    assert _relative(plan.side_blocks * plan.estimate(2).recompute_bytes, difference) < TOLERANCE


def test_the_reduced_eva_build_is_the_model_and_the_fit_extrapolates(plans) -> None:
    plan = plans["tiny-eva"]
    torch.manual_seed(0)
    real = build_model("tiny-eva", K, grad_checkpointing=True)
    reduced = reduced_depth_model("tiny-eva", 4, num_classes=K)
    assert {k: v.shape for k, v in reduced.state_dict().items()} == {
        k: v.shape for k, v in real.state_dict().items()
    }
    full = next(m for m in plan.measurements if m.depth == 4 and m.batch_size == 1)
    assert full.checkpointing and full.saved_bytes == measure_saved_bytes(real, 1)
    # Fitted at depths 2 and 4, the estimate holds for a build of depth 8 (4 side blocks).
    deeper = reduced_depth_model("tiny-eva", 8, num_classes=K)
    assert deeper.encoder.backbone.num_layers == 8
    assert _relative(plan.fit(2, 4), measure_saved_bytes(deeper, 2)) < TOLERANCE


def test_saved_bytes_are_linear_in_the_batch(plans) -> None:
    for plan in plans.values():
        assert plan.linearity_error < 0.01
    real = build_model("tiny", K, grad_checkpointing=True)
    one, two, three = (measure_saved_bytes(real, b) for b in (1, 2, 3))
    assert _relative(three - two, two - one) < 0.01


@pytest.mark.parametrize("preset", ["tiny", "tiny-eva"])
def test_the_largest_batch_is_the_last_that_fits(plans, preset) -> None:
    plan = plans[preset]
    assert [b.batch_size for b in plan.batches] == [1, 2, 8]
    assert plan.batches[0].total_bytes < plan.batches[1].total_bytes < plan.batches[2].total_bytes
    capacity = plan.total_bytes(8) + 1
    largest = plan.largest_batch(capacity)
    assert largest >= 8
    assert plan.total_bytes(largest) <= capacity < plan.total_bytes(largest + 1)
    assert plan.largest_batch(plan.static_bytes) == 0


def test_without_checkpointing_more_is_saved_and_nothing_recomputed(plans) -> None:
    plain = estimate_training_memory("tiny-eva", batch_sizes=(2,), checkpointing=False)
    checkpointed = plans["tiny-eva"].estimate(2)
    assert checkpointed.recompute_bytes > 0 and plain.batches[0].recompute_bytes == 0
    assert plain.batches[0].saved_bytes > checkpointed.saved_bytes
    fp32 = estimate_training_memory("tiny-eva", batch_sizes=(2,), precision="fp32")
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
    with pytest.raises(ValueError, match="random weights only"):
        build_model("tiny", K, pretrained="openai", backbone_layers=2)
