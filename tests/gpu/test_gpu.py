"""The GPU tier: every CUDA code path of s4v, run by ``pytest -m gpu`` (and ``scripts/gpu-check``).

Skipped without CUDA (``tests/conftest.py``), so they cost the CPU suite nothing. Random weights
only (no downloads); the synthetic data is generated here, small.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from mlflow import MlflowClient

from s4v_core.memory import SavedTensorMeter
from s4v_orchestration.gpu_check import RowSpec, measure_training
from s4v_recognition.model import build_model
from s4v_recognition.presets import get_preset

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda:0")
# bf16 keeps 8 mantissa bits, fp16 11: logits of a random-weight model through 12+ layers under
# autocast stay within these of the fp32 CPU logits (relative to the logits' scale).
LOGIT_TOLERANCE = {"bf16": 0.08, "fp16": 0.02}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
SYNTHETIC = {
    "data.synthetic.videos_per_class": 4,
    "data.synthetic.num_frames": 16,
    "data.synthetic.size": 32,
    "data.batch_size": 4,
    "data.num_workers": 0,
    "solver.epochs": 1,
    "solver.warmup_epochs": 0,
    "eval.final_test": False,
    "tracking.system_metrics": False,
    "tracking.log_checkpoint": False,
}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    from s4v_data.synthetic import generate

    root = tmp_path_factory.mktemp("gpu-synthetic") / "data"
    generate(root, seed=0, videos_per_class=4, num_frames=16, size=32)
    return root


def _clips(preset: str, batch: int, frames: int = 8) -> torch.Tensor:
    size = get_preset(preset).image_size
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, frames, 3, size, size, generator=generator)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("preset", ["tiny", "side4video-b16"])
def test_amp_training_step_is_finite_and_logits_match_cpu_fp32(preset, precision) -> None:
    torch.manual_seed(0)
    model = build_model(preset, 10).eval()
    clips = _clips(preset, batch=2)
    with torch.no_grad():
        cpu_logits = model(clips)
    model = model.to(CUDA)
    dtype = AUTOCAST[precision]
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        cuda_logits = model(clips.to(CUDA)).float().cpu()
    scale = cpu_logits.abs().max().item()
    tolerance = LOGIT_TOLERANCE[precision] * scale
    assert (cuda_logits - cpu_logits).abs().max().item() <= tolerance
    assert (cuda_logits.argmax(-1) == cpu_logits.argmax(-1)).all()

    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    labels = torch.tensor([1, 2], device=CUDA)
    before = [p.detach().clone() for p in trainable]
    with torch.autocast("cuda", dtype=dtype):
        loss = F.cross_entropy(model(clips.to(CUDA)).float(), labels)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in trainable)
    assert any(not torch.equal(p, b) for p, b in zip(trainable, before, strict=True))
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def _peak_and_grads(checkpointing: bool) -> tuple[int, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = build_model("side4video-b16", 174).to(CUDA).train()
    model.set_grad_checkpointing(checkpointing)
    clips, labels = _clips("side4video-b16", batch=4).to(CUDA), torch.arange(4, device=CUDA)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(CUDA)
    F.cross_entropy(model(clips), labels).backward()
    torch.cuda.synchronize(CUDA)
    grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    peak = torch.cuda.max_memory_allocated(CUDA)
    del model, clips
    torch.cuda.empty_cache()
    return peak, grads


def test_side_checkpointing_lowers_the_cuda_peak_and_keeps_the_gradients() -> None:
    plain_peak, plain_grads = _peak_and_grads(checkpointing=False)
    checked_peak, checked_grads = _peak_and_grads(checkpointing=True)
    assert checked_peak < plain_peak
    assert plain_grads.keys() == checked_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checked_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_cuda_peak_agrees_with_saved_bytes_plus_weights_gradients_and_adamw_state() -> None:
    """The measured peak of an AdamW step lies within [-5 %, +30 % + 1 GiB] of the sum of what
    must be resident: every weight, one fp32 gradient and two AdamW moments per trainable
    parameter, and the bytes autograd saves for backward (measured by SavedTensorMeter). The
    slack above covers transients: one frozen layer's working set, attention scores, the loss."""
    spec = RowSpec(
        section="table2",
        preset="side4video-b16",
        method="side4video",
        batch_size=8,
        num_frames=8,
        precision="fp32",
    )
    row = measure_training(spec, CUDA, repeats=1)
    assert row.status == "ok" and row.peak_bytes is not None

    torch.manual_seed(0)
    model = build_model("side4video-b16", 174, num_frames=8).to(CUDA).train()
    clips = _clips("side4video-b16", batch=8).to(CUDA)
    with SavedTensorMeter(exclude=model.parameters()) as meter:
        logits = model(clips)
    del logits
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    expected = weights + 3 * 4 * trainable + meter.bytes
    assert 0.95 * expected <= row.peak_bytes <= 1.30 * expected + 2**30, (row.peak_bytes, expected)


def _sets(root: Path, out: Path) -> list[str]:
    values = {**SYNTHETIC, "data.root": root, "output_dir": out, "device": "cuda"}
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]


def test_torchrun_one_process_trains_over_nccl(synthetic_root, tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
        "-m", "s4v_orchestration", "run", "recognition", "--dataset", "synthetic",
        "--tracking-uri", uri, *_sets(synthetic_root, tmp_path / "run"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert run.data.tags["s4v.dist_backend"] == "nccl"
    assert run.data.tags["s4v.device"].startswith("cuda:0")
    assert (tmp_path / "run" / "last.pt").is_file()


@pytest.mark.ray
def test_ray_trial_on_half_a_gpu_sees_the_device(synthetic_root, tmp_path) -> None:
    spec = {
        "name": "gpu-half",
        "task": "recognition",
        "dataset": "synthetic",
        "set": {**SYNTHETIC, "data.root": str(synthetic_root), "device": "auto"},
        "search_space": {"solver.lr": {"type": "choice", "values": [0.003]}},
        "scheduler": {"type": "fifo"},
        "resources": {"cpu": 1, "gpu": 0.5},
    }
    sweep_file = tmp_path / "gpu-half.yaml"
    sweep_file.write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [
        sys.executable, "-m", "s4v_orchestration", "sweep", str(sweep_file),
        "--storage", str(tmp_path / "ray"), "--tracking-uri", uri,
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=400, check=False, cwd=tmp_path,
        env={**os.environ, "RAY_DEDUP_LOGS": "0"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(uri)
    trials = [
        r
        for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
        if r.data.tags.get("s4v.kind") != "sweep"
    ]
    assert len(trials) == 1
    assert trials[0].data.tags["s4v.device"].startswith("cuda")
    assert trials[0].data.tags["s4v.precision"] in ("bf16", "fp16")


def _predict(checkpoint: Path, videos: Path, device: str) -> list[dict]:
    command = [
        sys.executable, "-m", "s4v_orchestration", "predict", str(checkpoint), str(videos),
        "--format", "json", "--device", device, "--no-progress", "--workers", "0",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout)


def test_predict_on_cuda_gives_the_cpu_labels(synthetic_root, tmp_path) -> None:
    out = tmp_path / "run"
    sets = [
        arg
        for k, v in {**SYNTHETIC, "data.root": synthetic_root, "output_dir": out}.items()
        for arg in ("--set", f"{k}={v}")
    ]
    command = [
        sys.executable, "-m", "s4v_orchestration", "run", "recognition", "--dataset",
        "synthetic", "--no-tracking", "--device", "cpu", *sets,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    videos = synthetic_root / "videos"
    cpu = _predict(out / "best.pt", videos, "cpu")
    cuda = _predict(out / "best.pt", videos, "cuda")
    assert len(cpu) == len(cuda) == len(list(videos.glob("*.mp4")))
    for on_cpu, on_cuda in zip(cpu, cuda, strict=True):
        assert on_cpu["path"] == on_cuda["path"]
        for a, b in zip(on_cpu["segments"], on_cuda["segments"], strict=True):
            assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
            for x, y in zip(a["top_k"], b["top_k"], strict=True):
                assert abs(x["probability"] - y["probability"]) < 1e-3


def test_bench_memory_plan_measures_peaks_that_grow_with_the_batch() -> None:
    from s4v_orchestration.commands.bench_plan import measure_training_peak

    peaks = measure_training_peak("side4video-b16", num_frames=8, batch_sizes=(1, 4))
    assert all(p.peak_bytes is not None for p in peaks)
    assert peaks[0].peak_bytes < peaks[1].peak_bytes
