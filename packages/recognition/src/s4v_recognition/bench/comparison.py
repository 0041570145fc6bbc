"""Training-memory and speed benchmark of Side4Video against its baselines (paper Table 2).

For each method one training step (forward, cross-entropy, backward) on random frames and random
weights is measured: parameter counts, the bytes autograd keeps for backward (each storage once,
parameters excluded; see :class:`s4v_core.memory.SavedTensorMeter`), the median wall-clock and
process CPU time of a step, and on CUDA the peak allocated memory.

Methods: every registered recognition method (:data:`s4v_recognition.presets.METHODS`:
``side4video`` on the preset, the baselines ``full-finetune`` and ``linear-probe`` and the paper's
rivals), plus two variants of Side4Video: ``side4video-light`` (the preset at a narrower side
width) and ``reference-layout`` (the same model computed as the reference implementation lays it
out, see :mod:`s4v_recognition.bench.reference_layout`: the yardstick for s4v's speed and memory on the
machine at hand; never checkpointed, like the reference's CLIP path). Each method is measured as
published: ``grad_checkpointing`` turns on the method's own checkpointing option, nothing else.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from s4v_core.memory import SavedTensorMeter
from s4v_recognition.bench.measure import PRECISIONS
from s4v_recognition.bench.reference_layout import ReferenceLayoutClassifier
from s4v_recognition.model import build_model
from s4v_recognition.presets import METHODS, get_preset

logger = logging.getLogger(__name__)

# Side4Video variants measured beside the registered methods: name -> the method they build.
VARIANTS = {"side4video-light": "side4video", "reference-layout": "side4video"}
# What `s4v bench memory` measures unless told otherwise (the paper's Table 2 comparison).
DEFAULT_METHODS = (
    "side4video",
    "side4video-light",
    "reference-layout",
    "full-finetune",
    "linear-probe",
)


def bench_methods() -> tuple[str, ...]:
    """Every method the benchmark can measure: the registered ones and the Side4Video variants."""
    return (*METHODS, *VARIANTS)


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryBenchConfig:
    """What to measure; the defaults are the setting the reference was measured in on a CPU.

    B/16, 2 videos x 8 frames, fp32: the reference's model (``Recognition/clip/model.py`` at
    HJYao00/Side4Video@5d72352) keeps 1,159.5 MiB for backward there, ``reference-layout`` the same.
    """

    preset: str = "side4video-b16"  # backbone and side width of the "side4video" method
    methods: tuple[str, ...] = DEFAULT_METHODS
    light_side_dim: int = 128  # side width of "side4video-light" (paper Table 2 light B/16)
    num_frames: int = 8
    batch_size: int = 2  # videos per step
    num_classes: int = 174
    precision: str = "fp32"  # fp32, or bf16 / fp16 autocast
    grad_checkpointing: bool = False
    repeats: int = 3  # timed steps after one warm-up step; the median is reported
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        known = bench_methods()
        unknown = [m for m in self.methods if m not in known]
        if unknown or not self.methods:
            raise ValueError(f"unknown methods {unknown}; choose from {', '.join(known)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.repeats < 1 or self.batch_size < 1 or self.num_frames < 1:
            raise ValueError("repeats, batch_size and num_frames must be positive")
        get_preset(self.preset)


@dataclass(frozen=True, kw_only=True, slots=True)
class MethodResult:
    method: str
    side_dim: int | None
    total_params: int
    trainable_params: int
    saved_bytes: int  # unique bytes autograd holds for backward after one forward
    step_seconds: list[float]  # wall-clock forward+backward times of the timed steps
    step_cpu_seconds: list[float]  # process CPU time of the same steps (all threads)
    cuda_peak_bytes: int | None  # peak allocated CUDA memory during a step, weights included

    @property
    def saved_mib(self) -> float:
        return self.saved_bytes / 2**20

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.step_seconds)

    @property
    def median_cpu_seconds(self) -> float:
        return statistics.median(self.step_cpu_seconds)

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "saved_mib": self.saved_mib,
            "median_seconds": self.median_seconds,
            "median_cpu_seconds": self.median_cpu_seconds,
            "cuda_peak_mib": None if self.cuda_peak_bytes is None else self.cuda_peak_bytes / 2**20,
        }


def _build(config: MemoryBenchConfig, method: str) -> tuple[nn.Module, int | None]:
    """The model of ``method`` and its side width (None for the baselines without one)."""
    side_dim = config.light_side_dim if method == "side4video-light" else None
    model = build_model(
        config.preset,
        config.num_classes,
        method=VARIANTS.get(method, method),
        num_frames=config.num_frames,
        side_dim=side_dim,
        grad_checkpointing=config.grad_checkpointing and method != "reference-layout",
    )
    width = model.encoder.side.out_dim if model.method == "side4video" else None
    if method == "reference-layout":
        return ReferenceLayoutClassifier.from_model(model), width
    return model, width


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Subject:
    """One method's model and batch, its saved bytes measured, warmed up, ready to time steps."""

    def __init__(self, config: MemoryBenchConfig, method: str) -> None:
        self.method = method
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        model, self.side_dim = _build(config, method)
        self.model = model.to(self.device).train()
        size = get_preset(config.preset).image_size
        generator = torch.Generator().manual_seed(config.seed)
        shape = (config.batch_size, config.num_frames, 3, size, size)
        self.frames = torch.randn(shape, generator=generator).to(self.device)
        labels = torch.randint(config.num_classes, (config.batch_size,), generator=generator)
        self.labels = labels.to(self.device)
        self.dtype = PRECISIONS[config.precision]
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.peak: int | None = None
        with SavedTensorMeter(exclude=self.model.parameters()) as meter:
            loss = self._loss()
        self.saved = meter.bytes
        loss.backward()  # also the warm-up step
        del loss
        self.model.zero_grad(set_to_none=True)

    def _loss(self) -> torch.Tensor:
        device, dtype = self.device.type, self.dtype
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = self.model(self.frames)
        return F.cross_entropy(logits.float(), self.labels)

    def step(self) -> None:
        """Time one forward+backward (wall clock, process CPU time, CUDA peak)."""
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        _synchronize(self.device)
        start, start_cpu = time.perf_counter(), time.process_time()
        self._loss().backward()
        _synchronize(self.device)
        self.wall.append(time.perf_counter() - start)
        self.cpu.append(time.process_time() - start_cpu)
        if cuda:
            self.peak = max(self.peak or 0, torch.cuda.max_memory_allocated(self.device))
        self.model.zero_grad(set_to_none=True)

    def result(self) -> MethodResult:
        parameters = list(self.model.parameters())
        return MethodResult(
            method=self.method,
            side_dim=self.side_dim,
            total_params=sum(p.numel() for p in parameters),
            trainable_params=sum(p.numel() for p in parameters if p.requires_grad),
            saved_bytes=self.saved,
            step_seconds=self.wall,
            step_cpu_seconds=self.cpu,
            cuda_peak_bytes=self.peak,
        )


def measure_method(
    config: MemoryBenchConfig, method: str, *, on_step: Callable[[], None] | None = None
) -> MethodResult:
    """Measure one method under ``config``; ``on_step`` is called after every step (progress)."""
    subject = _Subject(config, method)
    if on_step:
        on_step()
    for _ in range(config.repeats):
        subject.step()
        if on_step:
            on_step()
    return subject.result()


def run_memory_bench(
    config: MemoryBenchConfig, *, on_step: Callable[[], None] | None = None
) -> list[MethodResult]:
    """Measure every method of ``config``.

    On CUDA the methods are measured one after another, one model on the device at a time, so
    that each peak is that method's alone. On the CPU all models are built first and the timed
    steps are interleaved, one step of every method per round: a shared machine whose speed drifts
    then slows every method alike, and the ratios between methods stay meaningful.
    """
    if config.device.startswith("cuda"):
        results = []
        for method in config.methods:
            logger.info("measuring %s", method)
            results.append(measure_method(config, method, on_step=on_step))
            torch.cuda.empty_cache()
        return results
    subjects = []
    for method in config.methods:
        logger.info("building and warming up %s", method)
        subjects.append(_Subject(config, method))
        if on_step:
            on_step()
    for _ in range(config.repeats):
        for subject in subjects:
            subject.step()
            if on_step:
                on_step()
    return [subject.result() for subject in subjects]
