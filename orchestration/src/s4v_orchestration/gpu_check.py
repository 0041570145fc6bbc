"""`scripts/gpu-check`: every GPU claim of the README measured on one CUDA card, in one command.

A GPU is lent to this project now and then, for minutes, so everything that needs one is
prepared here and runs unattended:

1. the ``gpu``-marked tests (``pytest -m gpu``: bf16 and fp16 training steps, side checkpointing,
   the CUDA peak of ``s4v bench memory``, a ``torchrun`` NCCL run, a Ray trial on half a GPU,
   ``s4v predict`` on CUDA);
2. the paper's Table 2 settings for every registered method (ViT-B/16 at batch 32, ViT-L/14 at
   batch 16, 8 frames, AMP): the peak CUDA memory of an AdamW training step and the training
   throughput in clips/s, beside the paper's memory column;
3. ``side4video-e14`` at 8 frames with its 4.4 B-parameter tower really allocated in bf16, at
   batch 1 and at the largest batch the memory plan says fits the card, beside the plan;
4. inference throughput of ``s4v predict``'s encoder (clips/s).

Every row runs in this process; a row that runs out of memory is recorded as ``OOM at batch N``
and the others go on. The results are written as ``gpu-check.json``, ``gpu-check.md`` (the
table, the paper's column beside each measured one) and ``gpu-check.png`` into the output folder.

``--dry-run`` runs the same plan on the CPU at tiny sizes (the tiny presets, batch 2, 4 frames)
in well under a minute; the test suite runs it, so the script cannot rot between GPU loans.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from s4v_recognition.bench.measure import autocast
from s4v_recognition.model import build_model
from s4v_recognition.presets import METHODS, get_preset

GIB = 2**30
# Paper Table 2 (training memory, GB; ViT-B/16 at batch 32, ViT-L/14 at batch 16, 8 frames).
# Full fine-tuning and the linear probe are not in the table.
PAPER_TABLE2_GB: dict[tuple[str, str], float] = {
    ("side4video-b16", "side4video"): 18.8,
    ("side4video-b16", "side4video-light"): 8.9,
    ("side4video-b16", "st-adapter"): 28.8,
    ("side4video-b16", "aim"): 35.2,
    ("side4video-b16", "evl"): 17.9,
    ("side4video-b16", "dist"): 12.7,
    ("side4video-l14", "side4video"): 37.0,
    ("side4video-l14", "side4video-light"): 15.3,
    ("side4video-l14", "st-adapter"): 51.4,
    ("side4video-l14", "aim"): 64.3,
    ("side4video-l14", "evl"): 33.0,
    ("side4video-l14", "dist"): 18.1,
}
PAPER_E14_GB = 39.0  # paper Fig. 1, "E-8f" read off the plot (~38-39 G)
# Side width C of the light variant: paper Table 2's B/16 light row is C=128; its L/14 light row
# (22 M trainable) lies between C=192 (17.7 M) and C=256 (29.1 M), the exact width is not given.
LIGHT_SIDE_DIM = {"side4video-b16": 128, "side4video-l14": 256, "tiny": 64}
LIGHT = "side4video-light"


@dataclass(frozen=True, kw_only=True, slots=True)
class RowSpec:
    """One measured setting."""

    section: str  # "table2", "e14", "predict" ("plan": s4v bench memory --plan on CUDA)
    preset: str
    method: str
    batch_size: int
    num_frames: int
    precision: str  # bf16 / fp16 autocast, or fp32
    checkpointing: bool = False
    paper_gb: float | None = None
    num_classes: int = 174  # K of the head (the paper's table: Something-Something's 174)


@dataclass(kw_only=True, slots=True)
class RowResult:
    """What one row measured; ``status`` is ``ok``, ``OOM at batch N`` or ``error: ...``."""

    spec: RowSpec
    status: str
    trainable_params: int | None = None
    peak_bytes: int | None = None
    clips_per_s: float | None = None
    plan_bytes: int | None = None  # the memory plan's estimate at this batch (e14 rows)
    seconds: float = 0.0  # wall time of the whole row, building included

    @property
    def peak_gb(self) -> float | None:
        """Peak in GB of 10^9 bytes, the unit of the paper's table."""
        return None if self.peak_bytes is None else self.peak_bytes / 1e9

    def as_dict(self) -> dict:
        return {**asdict(self), "peak_gb": self.peak_gb}


@dataclass(kw_only=True, slots=True)
class Plan:
    """Everything ``gpu-check`` runs, in order."""

    device: str
    dry_run: bool
    table2: list[RowSpec] = field(default_factory=list)
    e14_preset: str = "side4video-e14"
    e14_frames: int = 8
    e14_batch_cap: int | None = None  # dry run: keep the "largest batch" row tiny
    predict: RowSpec | None = None
    repeats: int = 3  # timed steps per row after one warm-up step


def table2_methods() -> list[str]:
    """Every registered recognition method plus the light Side4Video of Table 2."""
    methods = list(METHODS)
    methods.insert(methods.index("side4video") + 1, LIGHT)
    return methods


def make_plan(*, dry_run: bool, device: str) -> Plan:
    """The real plan (paper sizes, CUDA) or the dry run's (tiny presets, CPU, fp32)."""
    if dry_run:
        settings = [("tiny", 2)]
        frames, precision = 4, "fp32"
    else:
        settings = [("side4video-b16", 32), ("side4video-l14", 16)]
        frames, precision = 8, "bf16"
    table2 = [
        RowSpec(
            section="table2",
            preset=preset,
            method=method,
            batch_size=batch,
            num_frames=frames,
            precision=precision,
            paper_gb=PAPER_TABLE2_GB.get((preset, method)),
        )
        for preset, batch in settings
        for method in table2_methods()
    ]
    predict = RowSpec(
        section="predict",
        preset="tiny" if dry_run else "side4video-b16",
        method="side4video",
        batch_size=2 if dry_run else 32,
        num_frames=frames,
        precision=precision,
    )
    return Plan(
        device=device,
        dry_run=dry_run,
        table2=table2,
        e14_preset="tiny-eva" if dry_run else "side4video-e14",
        e14_frames=frames,
        e14_batch_cap=2 if dry_run else None,
        predict=predict,
        repeats=1 if dry_run else 3,
    )


# --- measuring one row ------------------------------------------------------------------------


def _build(spec: RowSpec, device: torch.device) -> nn.Module:
    """The row's model with random weights, built directly on the device (no CPU copy)."""
    preset = get_preset(spec.preset)
    side_dim = (
        LIGHT_SIDE_DIM.get(spec.preset, preset.side_dim // 2) if spec.method == LIGHT else None
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(
            spec.preset,
            spec.num_classes,
            method="side4video" if spec.method == LIGHT else spec.method,
            num_frames=spec.num_frames,
            side_dim=side_dim,
            grad_checkpointing=spec.checkpointing,
        )
    return model.to(device)


def _clips(spec: RowSpec, device: torch.device) -> torch.Tensor:
    size = get_preset(spec.preset).image_size
    generator = torch.Generator().manual_seed(0)
    shape = (spec.batch_size, spec.num_frames, 3, size, size)
    return torch.randn(shape, generator=generator).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


@contextlib.contextmanager
def _peak(device: torch.device) -> Iterator[Callable[[], int | None]]:
    """Reset the CUDA peak counter; yields a function that reads it (None on the CPU)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    yield lambda: torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _measure(
    spec: RowSpec,
    device: torch.device,
    repeats: int,
    prepare: Callable[[nn.Module], tuple[Callable[[], None], int | None]],
) -> RowResult:
    """Build the row's model, run ``step`` once to warm up and ``repeats`` times timed.

    ``prepare(model)`` returns the step and the trainable parameter count. The CUDA peak covers
    every step; running out of memory gives an ``OOM at batch N`` row instead of an error.
    """
    start = time.perf_counter()
    with _peak(device) as peak:
        try:
            step, trainable = prepare(_build(spec, device))
            times = []
            for index in range(repeats + 1):
                _sync(device)
                t0 = time.perf_counter()
                step()
                _sync(device)
                if index > 0:
                    times.append(time.perf_counter() - t0)
            result = RowResult(
                spec=spec,
                status="ok",
                trainable_params=trainable,
                peak_bytes=peak(),
                clips_per_s=spec.batch_size / statistics.median(times),
            )
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not _is_oom(error):
                raise
            result = RowResult(spec=spec, status=f"OOM at batch {spec.batch_size}")
    result.seconds = time.perf_counter() - start
    return result


def measure_training(spec: RowSpec, device: torch.device, repeats: int) -> RowResult:
    """Peak memory and clips/s of AdamW training steps (autocast; a gradient scaler for fp16).

    The warm-up step allocates AdamW's state, so the peak of the timed steps covers weights,
    gradients, optimizer state, saved activations and transients: what the paper's table counts.
    """

    def prepare(model: nn.Module) -> tuple[Callable[[], None], int]:
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=spec.precision == "fp16")
        clips = _clips(spec, device)
        labels = torch.arange(spec.batch_size, device=device) % spec.num_classes

        def step() -> None:
            with autocast(spec.precision, device.type):
                logits = model(clips)
            scaler.scale(F.cross_entropy(logits.float(), labels)).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

        return step, sum(p.numel() for p in trainable)

    return _measure(spec, device, repeats, prepare)


def measure_inference(spec: RowSpec, device: torch.device, repeats: int) -> RowResult:
    """Clips/s of the video encoder and head in inference (what ``s4v predict`` runs per batch)."""

    def prepare(model: nn.Module) -> tuple[Callable[[], None], None]:
        model.eval()
        clips = _clips(spec, device)

        def step() -> None:
            with torch.inference_mode(), autocast(spec.precision, device.type):
                model(clips).softmax(-1)

        return step, None

    return _measure(spec, device, repeats, prepare)


def _card_bytes(device: torch.device) -> int:
    """Memory of the card (on the CPU, in a dry run: 80 GiB, an H100's)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return 80 * GIB


def e14_rows(plan: Plan, device: torch.device) -> list[RowResult]:
    """The E/14 tower really allocated: batch 1 and the largest batch the memory plan fits."""
    from s4v_recognition.bench.memory_plan import estimate_training_memory

    estimate = estimate_training_memory(
        plan.e14_preset, num_frames=plan.e14_frames, precision="bf16", checkpointing=True
    )
    largest = estimate.largest_batch(_card_bytes(device))
    if plan.e14_batch_cap is not None:
        largest = min(largest, plan.e14_batch_cap)
    precision = "fp32" if plan.dry_run else "bf16"
    rows = []
    for batch in sorted({1, max(1, largest)}):
        spec = RowSpec(
            section="e14",
            preset=plan.e14_preset,
            method="side4video",
            batch_size=batch,
            num_frames=plan.e14_frames,
            precision=precision,
            checkpointing=True,
            paper_gb=PAPER_E14_GB if not plan.dry_run else None,
        )
        row = measure_training(spec, device, plan.repeats)
        row.plan_bytes = estimate.total_bytes(batch)
        rows.append(row)
    return rows


# --- the gpu tests --------------------------------------------------------------------------


def run_gpu_tests(root: Path, *, dry_run: bool, timeout: int = 300) -> dict:
    """``pytest -m gpu`` (only collected in a dry run: they need CUDA); counts from its last line."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    command += ["--collect-only"] if dry_run else ["-p", "no:randomly"]
    if _has_xdist():
        command += ["-n", "0"]
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=root, capture_output=True, text=True, timeout=timeout, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return {
        "command": " ".join(command[1:]),
        "returncode": done.returncode,
        "summary": lines[-1] if lines else done.stderr.strip()[-300:],
        "seconds": round(time.perf_counter() - start, 1),
    }


def _has_xdist() -> bool:
    """Whether pytest-xdist (a dev dependency) is installed: its ``-n 0`` then runs in-process."""
    return importlib.util.find_spec("xdist") is not None


# --- the report -----------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list[RowResult], header: dict) -> str:
    """The table the note and the README quote: measured beside the paper, one row a setting."""
    out = [
        f"# gpu-check on {header['device_name']}",
        "",
        f"{header['started']}, torch {header['torch']}, CUDA {header['cuda']}; "
        f"gpu tests: {header['gpu_tests']['summary']}",
        "",
        "| setting | method | batch | trainable | peak (GB) | paper (GB) | plan (GB) | clips/s | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        spec = row.spec
        setting = f"{spec.section} {spec.preset} {spec.num_frames}f {spec.precision}"
        trainable = "-" if row.trainable_params is None else f"{row.trainable_params / 1e6:.2f} M"
        plan = None if row.plan_bytes is None else row.plan_bytes / 1e9
        out.append(
            f"| {setting} | {spec.method} | {spec.batch_size} | {trainable} | "
            f"{_fmt(row.peak_gb, '.1f')} | {_fmt(spec.paper_gb, '.1f')} | {_fmt(plan, '.1f')} | "
            f"{_fmt(row.clips_per_s, '.1f')} | {row.status} |"
        )
    out += [
        "",
        "GB are 10^9 bytes (the paper's unit); peaks are `torch.cuda.max_memory_allocated`.",
    ]
    return "\n".join(out) + "\n"


def plot(rows: list[RowResult], path: Path, title: str) -> None:
    """Two panels: measured peak beside the paper's memory column, and training clips/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = [r for r in rows if r.spec.section in ("table2", "e14")]
    labels = [
        f"{r.spec.preset.removeprefix('side4video-')} b{r.spec.batch_size}\n{r.spec.method}"
        for r in table
    ]
    xs = list(range(len(table)))
    fig, (memory, speed) = plt.subplots(2, 1, figsize=(max(8, 0.7 * len(table)), 8), sharex=True)
    memory.bar([x - 0.2 for x in xs], [r.peak_gb or 0.0 for r in table], 0.4, label="measured peak")
    memory.bar([x + 0.2 for x in xs], [r.spec.paper_gb or 0.0 for r in table], 0.4, label="paper")
    for x, row in zip(xs, table, strict=True):
        if row.status != "ok":
            memory.text(x, 0.5, row.status, rotation=90, fontsize=7, ha="center", va="bottom")
    memory.set_ylabel("training memory (GB)")
    memory.set_title(title, fontsize=9)
    memory.legend(fontsize=8)
    speed.bar(xs, [r.clips_per_s or 0.0 for r in table], 0.5, color="tab:green")
    speed.set_ylabel("training clips/s")
    speed.set_xticks(xs, labels, rotation=60, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _header(device: torch.device, dry_run: bool) -> dict:
    cuda = device.type == "cuda"
    return {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "dry_run": dry_run,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if cuda
        else f"CPU ({platform.machine()}, {os.cpu_count()} cores, dry run)",
        "device_memory_bytes": _card_bytes(device) if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def default_out() -> Path:
    """``$OUT`` when set (the lent machine's results folder), else a dated folder under bench/."""
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu-check"
    return Path("bench") / f"gpu-check-{datetime.now(UTC):%Y%m%d-%H%M%S}"


def run(plan: Plan, out: Path, root: Path, *, run_tests: bool = True) -> dict:
    """Run the whole plan, writing the report after every row (a killed run keeps its rows)."""
    device = torch.device(plan.device)
    out.mkdir(parents=True, exist_ok=True)
    header = _header(device, plan.dry_run)
    report: dict = {**header, "rows": []}
    rows: list[RowResult] = []

    def save() -> None:
        report["rows"] = [r.as_dict() for r in rows]
        (out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str))
        (out / "gpu-check.md").write_text(markdown(rows, report))

    report["gpu_tests"] = (
        run_gpu_tests(root, dry_run=plan.dry_run) if run_tests else {"summary": "not run"}
    )
    _say(f"gpu tests: {report['gpu_tests']['summary']}")
    save()
    steps: list[Callable[[], list[RowResult]]] = [
        *(lambda s=spec: [measure_training(s, device, plan.repeats)] for spec in plan.table2),
        lambda: e14_rows(plan, device),
    ]
    if plan.predict is not None:
        steps.append(lambda: [measure_inference(plan.predict, device, plan.repeats)])
    for step in steps:
        for row in step():
            rows.append(row)
            _say(
                f"{row.spec.section:8} {row.spec.preset:16} {row.spec.method:17} "
                f"batch {row.spec.batch_size:3}  peak {_fmt(row.peak_gb, '6.2f')} GB  "
                f"{_fmt(row.clips_per_s, '7.1f')} clips/s  {row.status}  ({row.seconds:.0f} s)"
            )
            save()
    plot(rows, out / "gpu-check.png", f"gpu-check on {header['device_name']}")
    return report


def _say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/gpu-check",
        description="Run the gpu tests and measure every GPU claim of the README on one CUDA "
        "card (paper Table 2 rows, ViT-E/14 at batch 1 and the plan's largest batch, predict "
        "throughput); writes gpu-check.json, gpu-check.md and gpu-check.png.",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="the same plan on the CPU at tiny sizes (tiny presets, batch 2, 4 frames, fp32)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: $OUT/gpu-check or bench/)"
    )
    parser.add_argument("--device", default=None, help="CUDA device (default: cuda:0)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest -m gpu")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device; use --dry-run to check the plan on the CPU", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else (args.device or "cuda:0")
    if args.dry_run:
        torch.set_num_threads(1)  # tiny models; the test suite may run beside it
    plan = make_plan(dry_run=args.dry_run, device=device)
    out = args.out or default_out()
    run(plan, out, Path.cwd(), run_tests=not args.skip_tests)
    _say(f"wrote {out / 'gpu-check.json'}, {out / 'gpu-check.md'} and {out / 'gpu-check.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
