"""How much GPU memory one Side4Video training step needs, for a model too large to build here.

:func:`estimate_training_memory` answers "does ``side4video-e14`` (4.35 B frozen parameters) train
on one 24 GB card, and at which batch size?" on a CPU machine that could not hold the model in
fp32. The model measured is the one training builds: :func:`s4v_recognition.build_model` on the
preset, once on the meta device at full depth and, for the activations, with its backbone cut to a
few layers (``backbone_layers``; same widths, heads, patch, grid, side network, frames and head,
random weights). Every part of the estimate says where it comes from:

* **counted** (exact): the full model built on the meta device; frozen backbone weights take their
  stored dtype's size (bf16: 2 bytes), the trainable side network and head 4 bytes each for the
  fp32 weights and their gradients and 8 for AdamW's two moments (16 bytes per trainable
  parameter), buffers (BatchNorm statistics) their own size.
* **measured** (:func:`~s4v_recognition.bench.measure.measure_saved_bytes`, random data): the
  bytes autograd saves for backward, on the depth-reduced models at two depths and batch sizes 1
  and 2. ``saved(B, n) = a + b n + B (c + d n)`` for B videos and n side blocks is fitted exactly
  to those four points and evaluated at the full depth (32 side blocks for ViT-E/14); a fifth
  measurement at batch 3 checks that the bytes are linear in the batch. With side-block
  checkpointing the same four points without it give the transient of one block recomputed in
  backward: what one block saves without checkpointing beyond what it keeps with it.
* **computed** from shapes: the largest transient of one frozen backbone layer's forward (its
  input and output tokens, and the larger of the attention's and the MLP's intermediates for B*T
  images; fused attention assumed, so no attention matrix), and autocast's low-precision copies
  of the trainable weights (held until autocast exits; an upper bound).
* **assumed**: :data:`CUDA_RESERVE_BYTES` for the CUDA context and the caching allocator's slack.

The transients do not all live at the same time (the backbone runs in the forward, the recomputed
block in backward), so their sum is an upper bound. Not included: the gradients of activations
passed between side blocks in backward (one block's side tokens, a few MiB per video).

Mixed precision is measured as CUDA runs it (:class:`~s4v_recognition.bench.measure.
CudaAutocastPolicy`); without that the saved activations of ViT-E/14 would come out about a
quarter smaller than on a GPU. On a CUDA device ``s4v bench memory`` measures the real peak of the
real model instead (``s4v_orchestration.commands.bench_plan``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from s4v_recognition.bench.measure import (
    PRECISIONS,
    CudaAutocastPolicy,
    autocast,
    measure_saved_bytes,
)
from s4v_recognition.model import VideoClassifier, build_model
from s4v_recognition.presets import get_preset

__all__ = [
    "CUDA_RESERVE_BYTES",
    "GIB",
    "PAPER_MEMORY",
    "BatchEstimate",
    "MemoryPlan",
    "SavedFit",
    "SavedMeasurement",
    "WeightBytes",
    "estimate_training_memory",
    "reduced_depth_model",
    "weight_bytes",
]

GIB = 2**30
# Assumed, not measured: the CUDA context (~0.5 GiB with PyTorch's kernels) and the caching
# allocator's fragmentation.
CUDA_RESERVE_BYTES = GIB
# What the paper reports for a preset at 8 frames (shown next to the estimate).
PAPER_MEMORY = {"side4video-e14": "~38-39 GB (paper Fig. 1, ViT-E/14, 8 frames: E-8f ~ 39 G)"}


@dataclass(frozen=True, kw_only=True, slots=True)
class WeightBytes:
    """Parameters and buffers of a model, counted on the meta device (exact)."""

    frozen_params: int
    trainable_params: int
    frozen_weight_bytes: int  # in the dtype the frozen weights are stored in
    trainable_weight_bytes: int  # fp32
    buffer_bytes: int
    side_blocks: int  # side blocks of the full-depth model
    backbone_layers: int


def weight_bytes(
    preset: str, num_classes: int = 174, *, num_frames: int | None = None
) -> WeightBytes:
    """Count the weights of ``preset``'s side4video model on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = build_model(preset, num_classes, num_frames=num_frames)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    trainable = [p for p in model.parameters() if p.requires_grad]
    return WeightBytes(
        frozen_params=sum(p.numel() for p in frozen),
        trainable_params=sum(p.numel() for p in trainable),
        frozen_weight_bytes=sum(p.numel() * p.element_size() for p in frozen),
        trainable_weight_bytes=sum(p.numel() * p.element_size() for p in trainable),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        side_blocks=len(model.encoder.side.side_layers),
        backbone_layers=model.encoder.backbone.num_layers,
    )


def reduced_depth_model(
    preset: str,
    depth: int,
    *,
    num_classes: int = 174,
    num_frames: int | None = None,
    checkpointing: bool = True,
) -> VideoClassifier:
    """``preset``'s side4video model with a ``depth``-layer backbone and random weights.

    :func:`s4v_recognition.build_model` with ``backbone_layers=depth``: everything but the depth is
    the preset's (backbone width, heads, patch and grid, the weights' dtype, the side network and
    its width, the rule for which layers get side blocks, frames and head). ``checkpointing`` sets
    side-block recomputation exactly (the preset's default is not added to it).
    """
    spec = get_preset(preset)
    if isinstance(spec.side_layers, tuple):
        raise ValueError(f"{preset}: explicit side layers {spec.side_layers} have no reduced depth")
    model = build_model(preset, num_classes, num_frames=num_frames, backbone_layers=depth)
    model.set_grad_checkpointing(checkpointing)
    return model


@dataclass(frozen=True, kw_only=True, slots=True)
class SavedMeasurement:
    """One measurement of a depth-reduced model (measured)."""

    depth: int  # backbone layers
    side_blocks: int
    batch_size: int
    checkpointing: bool
    saved_bytes: int


@dataclass(frozen=True, kw_only=True, slots=True)
class SavedFit:
    """``saved(B, n) = per_step + per_block n + B (per_video + per_video_block n)``, in bytes.

    Fitted exactly to four measurements: batch 1 and 2 at two depths. The batch-independent part
    holds what does not grow with the videos, such as autocast's copy of the head's weight that
    its backward needs.
    """

    per_step: float
    per_block: float
    per_video: float
    per_video_block: float

    @classmethod
    def from_measurements(cls, points: Sequence[SavedMeasurement]) -> SavedFit:
        """Solve the four coefficients from measurements at batch 1 and 2 and two block counts."""
        by = {(p.batch_size, p.side_blocks): p.saved_bytes for p in points}
        (n1, n2) = sorted({p.side_blocks for p in points})
        slope = {n: by[2, n] - by[1, n] for n in (n1, n2)}  # bytes per video at n blocks
        offset = {n: by[1, n] - slope[n] for n in (n1, n2)}  # bytes at batch 0
        per_video_block = (slope[n2] - slope[n1]) / (n2 - n1)
        per_block = (offset[n2] - offset[n1]) / (n2 - n1)
        return cls(
            per_step=offset[n1] - per_block * n1,
            per_block=per_block,
            per_video=slope[n1] - per_video_block * n1,
            per_video_block=per_video_block,
        )

    def __call__(self, batch_size: int, side_blocks: int) -> int:
        video = self.per_video + self.per_video_block * side_blocks
        return round(self.per_step + self.per_block * side_blocks + batch_size * video)


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchEstimate:
    """The estimate at one batch size; every field in bytes (see :class:`MemoryPlan`)."""

    batch_size: int
    saved_bytes: int  # measured on reduced models, fitted, at full depth
    recompute_bytes: int  # one side block recomputed in backward (measured; 0 without)
    backbone_layer_bytes: int  # one frozen backbone layer's forward (computed from shapes)
    autocast_copy_bytes: int  # low-precision copies of the trainable weights (computed)
    transient_bytes: int  # the three above together (an upper bound)
    total_bytes: int  # MemoryPlan.static_bytes + saved + transient


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryPlan:
    """Estimated GPU memory of one training step (AdamW) of ``preset``; every ``*_bytes`` in bytes.

    ``total_bytes(B)`` = weights + gradients + optimizer state + buffers + reserve (independent of
    the batch) + saved activations + transient, each affine in the batch size B.
    """

    preset: str
    num_frames: int
    num_classes: int
    precision: str
    checkpointing: bool
    # counted on the meta device
    frozen_params: int
    trainable_params: int
    frozen_weight_bytes: int
    trainable_weight_bytes: int
    gradient_bytes: int  # fp32, one per trainable parameter
    optimizer_bytes: int  # AdamW's exp_avg and exp_avg_sq, fp32
    buffer_bytes: int
    reserve_bytes: int  # assumed: CUDA context and allocator slack
    side_blocks: int  # of the full-depth model
    backbone_layers: int
    # measured on depth-reduced models, and what is fitted to the measurements
    measurements: tuple[SavedMeasurement, ...]
    fit: SavedFit
    linearity_error: float  # |fit - measurement| / measurement at batch 3 (small depth)
    unchecked_fit: SavedFit | None  # the same model without side-block checkpointing
    recompute_per_step: float  # one recomputed block: bytes at batch 0 ...
    recompute_per_video: float  # ... and per video
    # computed from shapes
    backbone_layer_per_video: int
    autocast_copy_bytes: int
    token_dtype: str  # dtype of the backbone's tokens between layers (measured)
    batches: tuple[BatchEstimate, ...] = field(default=())

    @property
    def weight_bytes(self) -> int:
        return self.frozen_weight_bytes + self.trainable_weight_bytes

    @property
    def static_bytes(self) -> int:
        """What does not depend on the batch: weights, gradients, optimizer, buffers, reserve."""
        return (
            self.weight_bytes
            + self.gradient_bytes
            + self.optimizer_bytes
            + self.buffer_bytes
            + self.reserve_bytes
        )

    def estimate(self, batch_size: int) -> BatchEstimate:
        """The estimate for ``batch_size`` videos per step."""
        saved = self.fit(batch_size, self.side_blocks)
        recompute = round(self.recompute_per_step + self.recompute_per_video * batch_size)
        backbone = self.backbone_layer_per_video * batch_size
        transient = recompute + backbone + self.autocast_copy_bytes
        return BatchEstimate(
            batch_size=batch_size,
            saved_bytes=saved,
            recompute_bytes=recompute,
            backbone_layer_bytes=backbone,
            autocast_copy_bytes=self.autocast_copy_bytes,
            transient_bytes=transient,
            total_bytes=self.static_bytes + saved + transient,
        )

    def total_bytes(self, batch_size: int) -> int:
        return self.estimate(batch_size).total_bytes

    def largest_batch(self, capacity_bytes: int) -> int:
        """The largest batch whose estimate fits ``capacity_bytes`` (0 when batch 1 does not)."""
        base = self.total_bytes(0)
        per_video = self.total_bytes(1) - base
        if per_video <= 0:
            raise ValueError("the estimate does not grow with the batch; cannot size a batch")
        batch = max(0, math.floor((capacity_bytes - base) / per_video))
        while batch > 0 and self.total_bytes(batch) > capacity_bytes:  # integer rounding
            batch -= 1
        while self.total_bytes(batch + 1) <= capacity_bytes:
            batch += 1
        return batch

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "weight_bytes": self.weight_bytes,
            "static_bytes": self.static_bytes,
            "paper": PAPER_MEMORY.get(self.preset) if self.num_frames == 8 else None,
        }


def _mlp_widths(block: nn.Module, width: int) -> tuple[int, int]:
    """(summed widths of the Linears reading the block's D-wide input, width of the activation)."""
    linears = [m for m in block.mlp.modules() if isinstance(m, nn.Linear)]
    hidden = sum(m.out_features for m in linears if m.in_features == width)
    return hidden, linears[-1].in_features


def _backbone_layer_per_video(
    backbone: nn.Module, num_frames: int, act_bytes: int, stream_bytes: int
) -> int:
    """Computed: the largest transient of one frozen backbone layer's forward, per video.

    For T images of S = 1 + N tokens of width D: the layer's input and output tokens (in the
    residual stream's dtype), plus the larger of the attention's intermediates (normed or cast
    input, q/k/v, attention output and its head-merged copy: 6 D per token; fused attention, so no
    S x S matrix) and the MLP's (normed or cast input, hidden projections and activation output),
    in the activations' dtype.
    """
    tokens = num_frames * (1 + backbone.grid[0] * backbone.grid[1])
    d = backbone.width
    hidden, activation = _mlp_widths(backbone.blocks[0], d)
    attention = 6 * d * act_bytes
    mlp = (d + hidden + activation) * act_bytes
    return tokens * (2 * d * stream_bytes + max(attention, mlp))


def _token_dtype(model: VideoClassifier, precision: str) -> torch.dtype:
    """Measured: the dtype of the backbone's tokens after a layer, under ``precision``."""
    backbone = model.encoder.backbone
    size = model.preset.image_size
    with torch.no_grad(), CudaAutocastPolicy(), autocast(precision):
        return backbone.block(0, backbone.embed(torch.zeros(1, 3, size, size))).dtype


def _measure(
    model: VideoClassifier,
    batch_sizes: Sequence[int],
    *,
    depth: int,
    checkpointing: bool,
    precision: str,
    seed: int,
) -> list[SavedMeasurement]:
    """The saved bytes of the ``depth``-layer ``model`` at each batch size."""
    model.set_grad_checkpointing(checkpointing)
    blocks = len(model.encoder.side.side_layers)
    return [
        SavedMeasurement(
            depth=depth,
            side_blocks=blocks,
            batch_size=batch,
            checkpointing=checkpointing,
            saved_bytes=measure_saved_bytes(model, batch, precision=precision, seed=seed),
        )
        for batch in batch_sizes
    ]


def _default_fit_depths(preset: str) -> tuple[int, int]:
    """Two small depths with one and two side blocks (odd layers: 2 and 4; every layer: 1, 2)."""
    return (2, 4) if get_preset(preset).side_layers == "odd" else (1, 2)


def estimate_training_memory(
    preset: str,
    *,
    num_frames: int | None = None,
    batch_sizes: Sequence[int] = (1, 8),
    precision: str = "bf16",
    checkpointing: bool = True,
    num_classes: int = 174,
    fit_depths: tuple[int, int] | None = None,
    reserve_bytes: int = CUDA_RESERVE_BYTES,
    seed: int = 0,
) -> MemoryPlan:
    """Estimate the GPU memory of training ``preset``'s side4video model with AdamW.

    Nothing of the full model is allocated: weights are counted on the meta device and the
    activations measured on depth-reduced builds (see the module docstring for what is counted,
    measured, computed and assumed).

    Args:
        preset: a recognition preset (:data:`s4v_recognition.PRESETS`).
        num_frames: frames per video (default: the preset's).
        batch_sizes: the batch sizes to list in :attr:`MemoryPlan.batches` (any batch size can be
            asked for later with :meth:`MemoryPlan.estimate`).
        precision: ``bf16`` or ``fp16`` autocast (as CUDA runs it), or ``fp32``.
        checkpointing: recompute each side block in backward.
        num_classes: K, the classes of the head.
        fit_depths: the two backbone depths measured (default: the smallest with one and two side
            blocks).
        reserve_bytes: added for the CUDA context and allocator slack (assumed).
        seed: of the random weights and frames.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    if any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive, got {tuple(batch_sizes)}")
    counted = weight_bytes(preset, num_classes, num_frames=num_frames)
    points: list[SavedMeasurement] = []
    unchecked: list[SavedMeasurement] = []
    for depth in fit_depths or _default_fit_depths(preset):
        torch.manual_seed(seed)
        model = reduced_depth_model(preset, depth, num_classes=num_classes, num_frames=num_frames)
        common = dict(depth=depth, precision=precision, seed=seed)
        batches = (1, 2) if points else (1, 2, 3)  # batch 3 checks the fit at the first depth
        points += _measure(model, batches, checkpointing=checkpointing, **common)
        if checkpointing:
            unchecked += _measure(model, (1, 2), checkpointing=False, **common)
    if len({p.side_blocks for p in points}) != 2:
        raise ValueError(f"depths {fit_depths} give the same number of side blocks")
    check = next(p for p in points if p.batch_size == 3)
    fit = SavedFit.from_measurements([p for p in points if p is not check])
    linearity = abs(fit(3, check.side_blocks) - check.saved_bytes) / check.saved_bytes
    unchecked_fit = SavedFit.from_measurements(unchecked) if unchecked else None
    recompute = (0.0, 0.0)
    if unchecked_fit is not None:  # what a block saves unchecked beyond what it keeps checked
        recompute = (
            unchecked_fit.per_block - fit.per_block,
            unchecked_fit.per_video_block - fit.per_video_block,
        )
    backbone = model.encoder.backbone  # of the last reduced model
    dtype = PRECISIONS[precision]
    act_bytes = (dtype or next(backbone.parameters()).dtype).itemsize
    token_dtype = _token_dtype(model, precision)
    trainable = counted.trainable_params
    plan = MemoryPlan(
        preset=preset,
        num_frames=model.num_frames,
        num_classes=num_classes,
        precision=precision,
        checkpointing=checkpointing,
        frozen_params=counted.frozen_params,
        trainable_params=trainable,
        frozen_weight_bytes=counted.frozen_weight_bytes,
        trainable_weight_bytes=counted.trainable_weight_bytes,
        gradient_bytes=4 * trainable,
        optimizer_bytes=8 * trainable,
        buffer_bytes=counted.buffer_bytes,
        reserve_bytes=reserve_bytes,
        side_blocks=counted.side_blocks,
        backbone_layers=counted.backbone_layers,
        measurements=(*points, *unchecked),
        fit=fit,
        linearity_error=linearity,
        unchecked_fit=unchecked_fit,
        recompute_per_step=recompute[0],
        recompute_per_video=recompute[1],
        backbone_layer_per_video=_backbone_layer_per_video(
            backbone, model.num_frames, act_bytes, token_dtype.itemsize
        ),
        autocast_copy_bytes=0 if dtype is None else trainable * dtype.itemsize,
        token_dtype=str(token_dtype).removeprefix("torch."),
    )
    return MemoryPlan(
        **{
            **{name: getattr(plan, name) for name in plan.__slots__},
            "batches": tuple(plan.estimate(b) for b in batch_sizes),
        }
    )
