"""How much GPU memory one Side4Video training step needs, estimated without building the model.

:func:`estimate_training_memory` answers "does ``side4video-e14`` (4.35 B frozen parameters) train
on one 24 GB card, and at which batch size?" on a CPU machine that could not hold the model in
fp32. Every part of the estimate says where it comes from:

* **counted** (exact): the model is built on the meta device; frozen backbone weights take their
  stored dtype's size (bf16: 2 bytes), the trainable side network and head 4 bytes each for the
  fp32 weights and their gradients and 8 for AdamW's two moments (16 bytes per trainable
  parameter), buffers (BatchNorm statistics) their own size.
* **measured** (on random data, :class:`s4v_core.memory.SavedTensorMeter`): the bytes autograd
  saves for backward, on depth-reduced copies of the model with the same widths, heads, patch,
  grid, side width and frames (open_clip's tower with its list of blocks cut to ``depth``, random
  weights, the same :class:`~s4v_core.side_eva.EvaSideNetwork` code), at two depths and batch sizes
  1 and 2. ``saved(B, n) = a + b n + B (c + d n)`` for B videos and n side blocks is fitted
  exactly to those four points and evaluated at the full depth (32 side blocks for ViT-E/14); a
  fifth measurement at batch 3 checks that the bytes are linear in the batch. Also measured: one
  side block's saved bytes without checkpointing, the transient its recomputation in backward
  holds (batch 1 and 2, linear in the batch).
* **computed** from shapes: the largest transient of one frozen backbone layer's forward (its
  input and output tokens, and the larger of the attention's and the MLP's intermediates for B*T
  images; fused attention assumed, so no attention matrix), and autocast's low-precision copies
  of the trainable weights (held until autocast exits; an upper bound).
* **assumed**: :data:`CUDA_RESERVE_BYTES` for the CUDA context and the caching allocator's slack.

The transients do not all live at the same time (the backbone runs in the forward, the recomputed
block in backward), so their sum is an upper bound. Not included: the gradients of activations
passed between side blocks in backward (one block's side tokens, a few MiB per video).

Mixed precision is measured as CUDA would run it: CPU autocast casts fewer ops to fp32 than CUDA
autocast (CPU LayerNorm stays in bf16, CUDA's runs in fp32 and returns fp32, which also makes the
EVA post-norm residual stream fp32), so while measuring, :class:`CudaAutocastPolicy` runs CUDA's
fp32 ops (LayerNorm, GroupNorm, softmax, ...) in fp32 on the CPU as CUDA autocast does. Without
it the saved activations of ViT-E/14 would come out about a quarter smaller than on a GPU.

On a CUDA device :func:`measure_training_peak` measures the real peak of the real model instead.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from s4v_core.assembly import side_network_on
from s4v_core.backbone import create_clip
from s4v_core.backbone_eva import FrozenEVA, is_eva_tower
from s4v_core.backbone_vit import FrozenViT
from s4v_core.memory import SavedTensorMeter
from s4v_core.side import SideNetwork, SideNetworkConfig
from s4v_core.side_eva import EvaSideNetwork
from s4v_recognition.benchmark import PRECISIONS
from s4v_recognition.encoders import SideVideoEncoder
from s4v_recognition.model import VideoClassifier, build_model
from s4v_recognition.presets import RecognitionPreset, get_preset

__all__ = [
    "CUDA_RESERVE_BYTES",
    "GIB",
    "PAPER_MEMORY",
    "BatchEstimate",
    "CudaAutocastPolicy",
    "MemoryPlan",
    "PeakMeasurement",
    "SavedFit",
    "SavedMeasurement",
    "WeightBytes",
    "estimate_training_memory",
    "measure_saved_bytes",
    "measure_training_peak",
    "reduced_depth_model",
    "weight_bytes",
]

GIB = 2**30
# Assumed, not measured: the CUDA context (~0.5 GiB with PyTorch's kernels) and the caching
# allocator's fragmentation.
CUDA_RESERVE_BYTES = GIB
# What the paper reports for a preset at 8 frames (shown next to the estimate).
PAPER_MEMORY = {"side4video-e14": "~38-39 GB (paper Fig. 1, ViT-E/14, 8 frames: E-8f ~ 39 G)"}

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Ops CUDA autocast runs in fp32 (torch.amp docs, "CUDA Ops that can autocast to float32") that
# CPU autocast leaves in the low precision; the ones a ViT or its side network can call.
_CUDA_FP32_OPS = frozenset(
    {
        F.layer_norm,
        F.group_norm,
        F.softmax,
        F.log_softmax,
        F.normalize,
        torch.layer_norm,
        torch.group_norm,
        torch.softmax,
        torch.log_softmax,
        torch.exp,
        torch.log,
        torch.pow,
        torch.rsqrt,
        torch.cumsum,
        torch.prod,
        torch.Tensor.softmax,
        torch.Tensor.log_softmax,
        torch.Tensor.exp,
        torch.Tensor.log,
        torch.Tensor.pow,
        torch.Tensor.__pow__,
        torch.Tensor.rsqrt,
        torch.Tensor.cumsum,
        torch.Tensor.prod,
    }
)


def _to_fp32(value: object) -> object:
    if isinstance(value, torch.Tensor) and value.dtype in _LOW_PRECISION:
        return value.float()
    return value


class CudaAutocastPolicy(TorchFunctionMode):
    """While CPU autocast is on, run the ops CUDA autocast runs in fp32 in fp32 too.

    Inputs of those ops in fp16/bf16 are cast to fp32 and the op runs with autocast off, so it
    returns fp32, as under ``torch.autocast("cuda")``. The matrix products keep CPU autocast's
    low precision, which is CUDA's too. Outside autocast nothing changes.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CUDA_FP32_OPS and torch.is_autocast_enabled("cpu"):
            args, kwargs = tree_map(_to_fp32, (args, kwargs))
            with torch.autocast("cpu", enabled=False):
                return func(*args, **kwargs)
        return func(*args, **kwargs)


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


def _of_depth(blocks: nn.ModuleList, depth: int) -> nn.ModuleList:
    """The first ``depth`` blocks; a deeper list repeats (copies of) the last block."""
    if depth < 1:
        raise ValueError(f"depth must be positive, got {depth}")
    kept = list(blocks[:depth])
    kept += [copy.deepcopy(blocks[-1]) for _ in range(depth - len(kept))]
    return nn.ModuleList(kept)


def _materialise_eva(visual: nn.Module, name: str) -> None:
    """Allocate a meta-built EVA tower on the CPU and give it timm's random initialisation."""
    trunk = visual.trunk
    if not hasattr(trunk, "init_weights"):
        raise ValueError(f"{name}: this timm version cannot initialise a meta-built Eva trunk")
    visual.to_empty(device="cpu")
    with torch.no_grad():
        trunk.init_weights(needs_reset=True)  # every Linear, LayerNorm, conv and embedding
        for module in visual.modules():
            if hasattr(module, "init_non_persistent_buffers"):  # rope tables
                module.init_non_persistent_buffers()
    tensors = (*visual.parameters(), *visual.buffers())
    if not all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point()):
        raise ValueError(f"{name}: the image tower has weights timm's init does not set")


def _reduced_backbone(
    name: str, depth: int, weights_dtype: torch.dtype | None
) -> FrozenViT | FrozenEVA:
    """The frozen image tower of open_clip ``name`` with ``depth`` layers and random weights.

    The tower is open_clip's own, with its list of blocks cut to ``depth`` (or, deeper than the
    model, extended by copies of its last block, which all blocks of these towers equal in shape).
    EVA towers are built on the meta device, cut, then allocated and initialised with timm's
    initialisation, so ViT-E/14's 64 layers are never allocated; CLIP ViTs are built on the CPU.
    """
    with torch.device("meta"):
        clip, identity = create_clip(name)
    if is_eva_tower(clip.visual):
        visual = clip.visual
        visual.trunk.blocks = _of_depth(visual.trunk.blocks, depth)
        _materialise_eva(visual, name)
        return FrozenEVA(visual, identity, weights_dtype=weights_dtype)
    clip, identity = create_clip(name)
    transformer = clip.visual.transformer
    transformer.resblocks = _of_depth(transformer.resblocks, depth)
    transformer.layers = depth
    backbone = FrozenViT(clip.visual, identity)
    return backbone if weights_dtype is None else backbone.to(weights_dtype)


def reduced_depth_model(
    preset: str,
    depth: int,
    *,
    num_classes: int = 174,
    num_frames: int | None = None,
    checkpointing: bool = True,
) -> VideoClassifier:
    """``preset``'s side4video model with a ``depth``-layer backbone and random weights.

    Everything but the depth is the preset's: backbone width, heads, patch and grid, the weights'
    dtype, the side network class and width, the rule for which layers get side blocks (``"odd"``
    or every layer), frames and head. Built as :func:`s4v_recognition.encoders.side4video` builds
    the full model; ``checkpointing`` sets side-block recomputation exactly (the preset's default
    is not added to it).
    """
    spec = get_preset(preset)
    if isinstance(spec.side_layers, tuple):
        raise ValueError(f"{preset}: explicit side layers {spec.side_layers} have no reduced depth")
    dtype = PRECISIONS["bf16"] if spec.backbone_dtype == "bf16" else None
    backbone = _reduced_backbone(spec.backbone, depth, dtype)
    config = SideNetworkConfig(
        side_dim=spec.side_dim,
        head_dim=spec.head_dim,
        side_layers=spec.side_layers,
        grad_checkpointing=checkpointing,
    )
    network = EvaSideNetwork if isinstance(backbone, FrozenEVA) else SideNetwork
    frames = num_frames or spec.num_frames
    side = side_network_on(network, config, backbone, num_frames=frames)
    return VideoClassifier(
        SideVideoEncoder(backbone, side),
        num_classes,
        method="side4video",
        preset=replace(spec, num_frames=frames),
        backbone_identity=backbone.identity,
        dropout=spec.dropout,
    )


def _batch(model: VideoClassifier, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size = model.preset.image_size
    frames = torch.randn((batch_size, model.num_frames, 3, size, size), generator=generator)
    labels = torch.randint(model.num_classes, (batch_size,), generator=generator)
    return frames, labels


def _autocast(precision: str):
    dtype = PRECISIONS[precision]
    return torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None)


def measure_saved_bytes(
    model: VideoClassifier, batch_size: int, *, precision: str = "bf16", seed: int = 0
) -> int:
    """Bytes autograd saves for backward in one forward + cross-entropy of ``model`` on the CPU.

    Random frames; under CPU autocast with CUDA's fp32 ops (:class:`CudaAutocastPolicy`) for
    fp16/bf16. Parameters are not counted; nothing is run backward.
    """
    frames, labels = _batch(model, batch_size, seed)
    model.train()
    with CudaAutocastPolicy(), SavedTensorMeter(exclude=model.parameters()) as meter:
        with _autocast(precision):
            logits = model(frames)
        loss = F.cross_entropy(logits.float(), labels)
    del loss, logits
    return meter.bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class SavedMeasurement:
    """One measurement of a depth-reduced copy (measured)."""

    depth: int  # backbone layers
    side_blocks: int
    batch_size: int
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
    saved_bytes: int  # measured on reduced copies, fitted, at full depth
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
    # measured on depth-reduced copies, and what is fitted to the measurements
    measurements: tuple[SavedMeasurement, ...]
    fit: SavedFit
    linearity_error: float  # |fit - measurement| / measurement at batch 3 (small depth)
    block_measurements: tuple[tuple[int, int], ...]  # (batch, bytes) of one unchecked block
    recompute_per_step: float  # fitted to block_measurements: bytes at batch 0 ...
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
    backbone: FrozenViT | FrozenEVA, num_frames: int, act_bytes: int, stream_bytes: int
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


def _block_saved_bytes(block: nn.Module, inputs: Sequence[torch.Tensor], precision: str) -> int:
    """Measured: bytes one side block saves for backward without checkpointing, given its inputs.

    That is what its recomputation holds in backward; the inputs themselves are not counted (the
    checkpointed model keeps them and they are in the saved bytes already).
    """
    leaves = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
    exclude = [*block.parameters(), *leaves]
    meter = SavedTensorMeter(exclude=exclude)
    with CudaAutocastPolicy(), meter, _autocast(precision):
        out = block(*leaves)
    del out
    return meter.bytes


def _measure_depth(
    preset: str,
    depth: int,
    batch_sizes: Iterable[int],
    *,
    num_classes: int,
    num_frames: int | None,
    precision: str,
    checkpointing: bool,
    seed: int,
) -> tuple[list[SavedMeasurement], list[tuple[int, int]], torch.dtype, VideoClassifier]:
    """Saved bytes of the ``depth``-layer copy per batch size, one block's, and the token dtype."""
    torch.manual_seed(seed)
    model = reduced_depth_model(
        preset,
        depth,
        num_classes=num_classes,
        num_frames=num_frames,
        checkpointing=checkpointing,
    )
    side = model.encoder.side
    captured: list[list[torch.Tensor]] = []
    token_dtypes: list[torch.dtype] = []

    def capture(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if not captured:  # the first side block's inputs (x, class tokens, position embedding)
            captured.append([a.detach() for a in args])

    first = side.blocks[0].register_forward_pre_hook(capture)
    last = side.taps[-1].register_forward_pre_hook(
        lambda module, args: token_dtypes.append(args[0].dtype)  # the backbone's tokens
    )
    points, blocks = [], []
    try:
        for batch in batch_sizes:
            captured.clear()
            saved = measure_saved_bytes(model, batch, precision=precision, seed=seed)
            points.append(
                SavedMeasurement(
                    depth=depth,
                    side_blocks=len(side.side_layers),
                    batch_size=batch,
                    saved_bytes=saved,
                )
            )
            if checkpointing and batch in (1, 2):
                blocks.append((batch, _block_saved_bytes(side.blocks[0], captured[0], precision)))
    finally:
        first.remove()
        last.remove()
    return points, blocks, token_dtypes[-1], model


def _default_fit_depths(spec: RecognitionPreset) -> tuple[int, int]:
    """Two small depths with one and two side blocks (odd layers: 2 and 4; every layer: 1, 2)."""
    return (2, 4) if spec.side_layers == "odd" else (1, 2)


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
    activations measured on depth-reduced copies (see the module docstring for what is counted,
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
    spec = get_preset(preset)
    counted = weight_bytes(preset, num_classes, num_frames=num_frames)
    small, large = fit_depths or _default_fit_depths(spec)
    common = dict(
        num_classes=num_classes,
        num_frames=num_frames,
        precision=precision,
        checkpointing=checkpointing,
        seed=seed,
    )
    points, blocks, token_dtype, model = _measure_depth(preset, small, (1, 2, 3), **common)
    del model
    more, _, _, model = _measure_depth(preset, large, (1, 2), **common)
    check = next(p for p in points if p.batch_size == 3)
    points = [p for p in points if p.batch_size != 3] + more
    if len({p.side_blocks for p in points}) != 2:
        raise ValueError(f"depths {small} and {large} give the same number of side blocks")
    fit = SavedFit.from_measurements(points)
    linearity = abs(fit(3, check.side_blocks) - check.saved_bytes) / check.saved_bytes
    if blocks:
        (_, one), (_, two) = sorted(blocks)
        recompute = (float(2 * one - two), float(two - one))
    else:
        recompute = (0.0, 0.0)
    dtype = PRECISIONS[precision]
    backbone = model.encoder.backbone
    act_bytes = (dtype or next(backbone.parameters()).dtype).itemsize
    stream_bytes = token_dtype.itemsize
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
        measurements=(*points, check),
        fit=fit,
        linearity_error=linearity,
        block_measurements=tuple(sorted(blocks)),
        recompute_per_step=recompute[0],
        recompute_per_video=recompute[1],
        backbone_layer_per_video=_backbone_layer_per_video(
            backbone, model.num_frames, act_bytes, stream_bytes
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


@dataclass(frozen=True, kw_only=True, slots=True)
class PeakMeasurement:
    """The real peak of training steps on a CUDA device (None: out of memory)."""

    batch_size: int
    peak_bytes: int | None


def measure_training_peak(
    preset: str,
    *,
    num_frames: int | None = None,
    batch_sizes: Sequence[int] = (1, 8),
    precision: str = "bf16",
    checkpointing: bool = True,
    num_classes: int = 174,
    device: str = "cuda",
    seed: int = 0,
) -> tuple[PeakMeasurement, ...]:
    """Peak allocated CUDA memory of two AdamW training steps of the real model, per batch size.

    The model is built with random weights (on the CPU, then moved), side-block checkpointing set
    exactly to ``checkpointing``. The second step runs with AdamW's state allocated, so the peak
    covers weights, gradients, optimizer state and activations. This path cannot be exercised on
    a machine without a GPU; it is kept to plain PyTorch calls for that reason.
    """
    torch.manual_seed(seed)
    model = build_model(preset, num_classes, num_frames=num_frames)
    model.set_grad_checkpointing(checkpointing)
    model = model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    dtype = PRECISIONS[precision]
    results = []
    for batch in batch_sizes:
        frames, labels = (t.to(device) for t in _batch(model, batch, seed))
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            for _ in range(2):
                with torch.autocast(
                    "cuda", dtype=dtype or torch.float32, enabled=dtype is not None
                ):
                    logits = model(frames)
                F.cross_entropy(logits.float(), labels).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
            peak: int | None = torch.cuda.max_memory_allocated(device)
        except torch.OutOfMemoryError:
            peak = None
        del frames, labels
        results.append(PeakMeasurement(batch_size=batch, peak_bytes=peak))
    return tuple(results)
