"""`scripts/gpu-check --dry-run`: the GPU check's whole plan on the CPU at tiny sizes, so the
script that runs on a lent GPU cannot rot between loans."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from s4v_orchestration import gpu_check
from s4v_recognition.presets import METHODS

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_measures_every_method_and_writes_the_report(tmp_path) -> None:
    out = tmp_path / "check"
    done = subprocess.run(
        [str(ROOT / "scripts" / "gpu-check"), "--dry-run", "--skip-tests", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    rows = report["rows"]
    table2 = {r["spec"]["method"]: r for r in rows if r["spec"]["section"] == "table2"}
    assert set(table2) == {*METHODS, "side4video-light"}
    assert all(r["status"] == "ok" and r["clips_per_s"] > 0 for r in table2.values())
    assert all(r["trainable_params"] > 0 for r in table2.values())
    # light is the same model at a narrower side width: fewer trainable parameters
    assert table2["side4video-light"]["trainable_params"] < table2["side4video"]["trainable_params"]
    e14 = [r for r in rows if r["spec"]["section"] == "e14"]
    assert [r["spec"]["batch_size"] for r in e14] == [1, 2]
    assert all(r["plan_bytes"] > 0 and r["spec"]["preset"] == "tiny-eva" for r in e14)
    assert e14[0]["plan_bytes"] < e14[1]["plan_bytes"]
    (predict,) = [r for r in rows if r["spec"]["section"] == "predict"]
    assert predict["clips_per_s"] > 0
    markdown = (out / "gpu-check.md").read_text()
    assert "| paper (GB) |" in markdown and markdown.count("| table2 tiny") == len(table2)
    assert (out / "gpu-check.png").stat().st_size > 10_000
    assert f"wrote {out / 'gpu-check.json'}" in done.stdout


def test_real_plan_has_the_paper_settings_and_columns() -> None:
    plan = gpu_check.make_plan(dry_run=False, device="cuda:0")
    settings = {(s.preset, s.batch_size, s.num_frames, s.precision) for s in plan.table2}
    assert settings == {("side4video-b16", 32, 8, "bf16"), ("side4video-l14", 16, 8, "bf16")}
    with_paper = {(s.preset, s.method): s.paper_gb for s in plan.table2 if s.paper_gb}
    assert with_paper[("side4video-b16", "side4video")] == 18.8
    assert with_paper[("side4video-l14", "aim")] == 64.3
    assert len(with_paper) == 12  # Table 2: six methods x two backbones
    assert plan.e14_preset == "side4video-e14" and plan.e14_frames == 8


def test_out_of_memory_row_is_recorded_and_the_rest_goes_on(monkeypatch) -> None:
    def no_memory(spec, device):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    spec = gpu_check.RowSpec(
        section="table2", preset="tiny", method="aim", batch_size=32, num_frames=4, precision="fp32"
    )
    monkeypatch.setattr(gpu_check, "_build", no_memory)
    row = gpu_check.measure_training(spec, torch.device("cpu"), repeats=1)
    assert row.status == "OOM at batch 32" and row.peak_bytes is None
    monkeypatch.undo()
    assert gpu_check.measure_training(spec, torch.device("cpu"), repeats=1).status == "ok"


def test_other_errors_are_not_taken_for_out_of_memory(monkeypatch) -> None:
    def broken(spec, device):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    spec = gpu_check.RowSpec(
        section="table2", preset="tiny", method="aim", batch_size=2, num_frames=4, precision="fp32"
    )
    monkeypatch.setattr(gpu_check, "_build", broken)
    with pytest.raises(RuntimeError, match="shapes"):
        gpu_check.measure_training(spec, torch.device("cpu"), repeats=1)


def test_gpu_tests_are_collected_and_skipped_without_cuda(request) -> None:
    """What ``pytest -m gpu`` selects is in the suite, and on a CPU machine every one is skipped."""
    gpu_items = [item for item in request.session.items if "gpu" in item.keywords]
    if not any(item.path.parent.name == "gpu" for item in gpu_items):
        pytest.skip("tests/gpu is not part of this run (a subset of the suite was selected)")
    names = {item.originalname for item in gpu_items}
    assert {
        "test_amp_training_step_is_finite_and_logits_match_cpu_fp32",
        "test_side_checkpointing_lowers_the_cuda_peak_and_keeps_the_gradients",
        "test_cuda_peak_agrees_with_saved_bytes_plus_weights_gradients_and_adamw_state",
        "test_torchrun_one_process_trains_over_nccl",
        "test_ray_trial_on_half_a_gpu_sees_the_device",
    } <= names
    if not torch.cuda.is_available():
        assert all(item.get_closest_marker("skip") for item in gpu_items)


def test_the_plans_cuda_peak_loop_runs_the_same_training_rows() -> None:
    """`s4v bench memory --plan` on CUDA measures through gpu-check's training row; on the CPU the
    same code runs and reports no CUDA peak."""
    from s4v_orchestration.commands.bench_plan import measure_training_peak

    peaks = measure_training_peak(
        "tiny", num_frames=4, batch_sizes=(1, 2), precision="fp32", device="cpu"
    )
    assert [p.batch_size for p in peaks] == [1, 2]
    assert all(p.peak_bytes is None for p in peaks)
