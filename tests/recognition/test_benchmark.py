"""The memory benchmark measures what it says, on the tiny preset."""

from __future__ import annotations

import pytest

from s4v_recognition.bench import comparison
from s4v_recognition.bench.comparison import MemoryBenchConfig, run_memory_bench


def _by_method(**overrides) -> dict:
    overrides = {"repeats": 1, **overrides}
    config = MemoryBenchConfig(preset="tiny", light_side_dim=64, **overrides)
    return {result.method: result for result in run_memory_bench(config)}


def test_memory_bench_orders_the_methods_as_the_paper_does() -> None:
    results = _by_method()
    side, light = results["side4video"], results["side4video-light"]
    full, probe = results["full-finetune"], results["linear-probe"]
    reference = results["reference-layout"]
    assert (side.side_dim, light.side_dim, reference.side_dim) == (128, 64, 128)
    assert side.trainable_params == reference.trainable_params == 1_060_910  # `s4v models`, K=174
    assert side.total_params == reference.total_params
    # The reference keeps more (the taps' D-wide LayerNorm outputs, among others).
    assert side.saved_bytes < reference.saved_bytes
    assert full.trainable_params == full.total_params
    assert probe.trainable_params == 64 * 174 + 174
    # Linear probing keeps only the head's input; the frozen backbone keeps nothing.
    assert probe.saved_bytes < 0.01 * side.saved_bytes
    assert light.saved_bytes < side.saved_bytes
    for result in results.values():
        assert len(result.step_seconds) == 1 and result.median_seconds > 0
        assert result.cuda_peak_bytes is None


def test_checkpointing_and_bf16_cut_what_is_saved() -> None:
    plain = _by_method(methods=("side4video",))["side4video"]
    checkpointed = _by_method(methods=("side4video",), grad_checkpointing=True)["side4video"]
    bf16 = _by_method(methods=("side4video",), precision="bf16")["side4video"]
    assert checkpointed.saved_bytes < 0.35 * plain.saved_bytes
    assert bf16.saved_bytes < 0.75 * plain.saved_bytes


def test_cpu_rounds_interleave_the_methods(monkeypatch) -> None:
    order = []
    real_step = comparison._Subject.step

    def recording(subject) -> None:
        order.append(subject.method)
        real_step(subject)

    monkeypatch.setattr(comparison._Subject, "step", recording)
    results = _by_method(methods=("side4video", "linear-probe"), repeats=2)
    assert order == ["side4video", "linear-probe", "side4video", "linear-probe"]
    assert all(len(r.step_seconds) == 2 for r in results.values())


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown methods"):
        MemoryBenchConfig(methods=("lora",))
    with pytest.raises(ValueError, match="precision"):
        MemoryBenchConfig(precision="int8")
