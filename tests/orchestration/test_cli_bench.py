"""`s4v bench memory` through the real typer application, on the tiny preset."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from s4v_orchestration.cli import app
from s4v_retrieval import count_parameters

runner = CliRunner()


def test_bench_memory_prints_a_table_and_writes_json_and_a_chart(tmp_path) -> None:
    result = runner.invoke(
        app,
        ["bench", "memory", "--preset", "tiny", "--repeats", "1", "--light-side-dim", "64",
         "--threads", "2", "--device", "cpu", "--out", str(tmp_path)],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    methods = (
        "side4video",
        "side4video-light",
        "reference-layout",
        "full-finetune",
        "linear-probe",
    )
    for method in methods:
        assert method in result.output
    assert "side4video / reference-layout: fwd+bwd" in result.output
    report = json.loads((tmp_path / "memory-tiny-fp32-b2x8.json").read_text())
    assert report["settings"]["threads"] == 2 and report["settings"]["precision"] == "fp32"
    assert [r["method"] for r in report["results"]] == list(methods)
    saved = {r["method"]: r["saved_mib"] for r in report["results"]}
    assert saved["side4video-light"] < saved["side4video"] < saved["reference-layout"]
    ratio = report["against_reference"]["saved_ratio"]
    assert ratio == saved["side4video"] / saved["reference-layout"]
    assert (tmp_path / "memory-tiny-fp32-b2x8.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_memory_rejects_unknown_methods(tmp_path) -> None:
    result = runner.invoke(
        app, ["bench", "memory", "--methods", "lora", "--out", str(tmp_path)], terminal_width=200
    )
    assert result.exit_code == 2
    assert "unknown methods" in result.output


def test_bench_memory_plan_estimates_without_building_the_model(tmp_path) -> None:
    import torch

    threads = torch.get_num_threads()
    try:
        result = runner.invoke(
            app,
            ["bench", "memory", "--model", "tiny-eva", "--plan", "--batches", "1,8",
             "--threads", "1", "--device", "cpu", "--out", str(tmp_path)],
            terminal_width=200,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    for text in ("estimated training memory", "saved for backward", "batch 8", "total"):
        assert text in result.output
    assert "largest batch that fits (estimate)" in result.output
    report = json.loads((tmp_path / "memory-plan-tiny-eva-bf16-8f-ckpt.json").read_text())
    assert report["kind"] == "estimate" and report["settings"]["batch_sizes"] == [1, 8]
    plan = report["plan"]
    assert plan["preset"] == "tiny-eva" and plan["checkpointing"] and plan["precision"] == "bf16"
    assert [b["batch_size"] for b in report["batches"]] == [1, 8]
    assert report["batches"][1]["total_bytes"] > report["batches"][0]["total_bytes"]
    assert set(report["largest_batch"]) == {"24 GiB", "80 GiB"}
    assert (tmp_path / "memory-plan-tiny-eva-bf16-8f-ckpt.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_memory_plan_refuses_other_methods_and_bad_batches(tmp_path) -> None:
    methods = runner.invoke(
        app,
        ["bench", "memory", "--model", "tiny-eva", "--plan", "--methods", "full-finetune",
         "--out", str(tmp_path)],
        terminal_width=200,
    )  # fmt: skip
    assert methods.exit_code == 2 and "side4video method only" in methods.output
    batches = runner.invoke(
        app,
        ["bench", "memory", "--model", "tiny-eva", "--plan", "--batches", "1,x",
         "--out", str(tmp_path)],
        terminal_width=200,
    )  # fmt: skip
    assert batches.exit_code == 2 and "--batches" in batches.output


def test_bench_memory_plans_a_retrieval_eva_preset(tmp_path) -> None:
    result = runner.invoke(
        app,
        ["bench", "memory", "--task", "retrieval", "--model", "tiny-eva", "--batches", "1,4",
         "--threads", "1", "--out", str(tmp_path)],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "retrieval tiny-eva: estimated training memory" in result.output
    plan = json.loads((tmp_path / "memory-plan-retrieval-tiny-eva-bf16-ckpt.json").read_text())
    plan = plan["plan"]
    trainable, total = count_parameters("tiny-eva")
    assert plan["trainable_params"] == trainable and plan["optimizer_bytes"] == 8 * trainable
    assert plan["frozen_vision_params"] + plan["frozen_text_params"] == total - trainable
    assert plan["frozen_weight_bytes"] == 4 * (total - trainable)  # tiny-eva keeps fp32 towers
    assert plan["side_blocks"] == 2 and plan["linearity_error"] < 0.05
    one, four = plan["batches"]
    assert four["saved_bytes"] > one["saved_bytes"] > 0
    assert (
        four["total_bytes"] == plan["static_bytes"] + four["saved_bytes"] + four["transient_bytes"]
    )
    bad = runner.invoke(app, ["bench", "memory", "--task", "retrieval", "--model", "tiny"])
    assert bad.exit_code == 2 and "EVA presets" in bad.output


def test_memory_chart_shows_step_times_beside_memory(tmp_path, monkeypatch) -> None:
    from types import SimpleNamespace

    from matplotlib.figure import Figure

    from s4v_orchestration.commands import bench

    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: saved.append(self))
    results = [
        SimpleNamespace(method="side4video", saved_mib=12.0, cuda_peak_bytes=None, median_seconds=0.25),
        SimpleNamespace(method="full-finetune", saved_mib=80.0, cuda_peak_bytes=None, median_seconds=0.5),
    ]  # fmt: skip
    bench._plot(results, tmp_path / "chart.png", "one step", cuda=False)
    memory, times = saved[0].axes
    assert memory.get_ylabel() == "saved for backward (MiB)"
    assert times.get_ylabel() == "median step time (s)"
    assert [bar.get_height() for bar in times.patches] == [0.25, 0.5]
