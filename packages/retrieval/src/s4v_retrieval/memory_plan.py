"""How much GPU memory one retrieval training step needs, estimated without building the model.

The retrieval counterpart of :mod:`s4v_recognition.bench.memory_plan`, for ``side4video-e14`` (4.89 B
parameters: EVA-CLIP's ViT-E/14 image tower and its 354 M text tower, both frozen, stored in
bf16 by the preset's ``frozen_dtype``) on a machine that could not hold it. Each part says where
it comes from:

* **counted** (exact, on the meta device): frozen weights in their stored dtype (vision and text
  apart), trainable weights fp32 plus their gradients (4 B) and AdamW's two moments (8 B), buffers.
* **measured** (:class:`s4v_core.memory.SavedTensorMeter`, CPU autocast): the bytes autograd
  saves for backward in one step (forward, WTI similarity, symmetric InfoNCE) of depth-reduced
  copies of the model: the same widths, heads, patch, grid, side width, frames, words and
  weights' dtype, the image tower cut to two depths (one and two side blocks), the text tower to
  one layer (frozen, it runs without autograd and saves nothing). ``saved(B, n) = a + b n +
  B (c + d n)`` is fitted exactly to batch 1 and 2 at both depths and evaluated at the full number
  of side blocks; batch 3 checks the fit (the B x B x words x frames similarity grows with B^2;
  its bytes are the linearity error). One side block's saved bytes without checkpointing give
  the transient its recomputation holds in backward.
* **computed** from shapes: the largest transient of one frozen image-tower layer (its input and
  output tokens and the larger of the attention's and MLP's intermediates, fused attention) and of
  one text layer, and autocast's low-precision copies of the trainable weights.
* **assumed**: :data:`CUDA_RESERVE_BYTES` for the CUDA context and allocator slack.

Unlike the recognition plan this one does not emulate CUDA autocast's fp32 ops on the CPU, so
LayerNorms inside the side network are measured in bf16 where a GPU keeps fp32: a lower bound on
those activations (the recognition plan found the difference to be about a quarter at E/14).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from s4v_core.backbone import create_clip
from s4v_core.backbone_eva import FrozenEVA, is_eva_tower
from s4v_core.memory import SavedTensorMeter
from s4v_core.side import SideNetworkConfig
from s4v_core.side_retrieval import build_retrieval_video_tower
from s4v_retrieval.loss import symmetric_infonce
from s4v_retrieval.model import _FROZEN_DTYPES, RetrievalModel, build_model
from s4v_retrieval.presets import get_preset
from s4v_retrieval.similarity import LogitScale, build_similarity
from s4v_retrieval.text import CLIPTextTower

GIB = 2**30
CUDA_RESERVE_BYTES = GIB  # assumed: CUDA context and the caching allocator's slack
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _random_init(module: nn.Module, seed: int) -> None:
    """Random finite values for a module allocated with ``to_empty`` (shapes are what counts)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            values = torch.randn(param.shape, generator=generator) * 0.02
            if name.endswith("weight") and param.dim() == 1:  # norms
                values += 1.0
            param.copy_(values)
        for sub in module.modules():
            if hasattr(sub, "init_non_persistent_buffers"):  # timm's rope tables
                sub.init_non_persistent_buffers()


def reduced_depth_model(
    preset: str, depth: int, *, checkpointing: bool = True, seed: int = 0
) -> RetrievalModel:
    """``preset``'s retrieval model with a ``depth``-layer image tower, a 1-layer text tower and
    random weights; everything else (widths, side network, frames, words, dtypes) the preset's.

    Built on the meta device, cut, then allocated, so the full towers are never allocated.
    """
    spec = get_preset(preset)
    with torch.device("meta"):
        clip, identity = create_clip(spec.backbone)
    if not is_eva_tower(clip.visual):
        raise ValueError(f"{preset}: the retrieval memory plan covers EVA presets only")
    trunk = clip.visual.trunk
    trunk.blocks = nn.ModuleList(list(trunk.blocks[:depth]))
    text = clip.text.transformer
    text.resblocks = nn.ModuleList(list(text.resblocks[:1]))
    clip.to_empty(device="cpu")
    _random_init(clip, seed)
    dtype = _FROZEN_DTYPES[spec.frozen_dtype]
    backbone = FrozenEVA(clip.visual, identity, with_projection=True, weights_dtype=dtype)
    config = SideNetworkConfig(
        side_dim=spec.side_dim,
        head_dim=spec.head_dim,
        side_layers=spec.side_layers,
        grad_checkpointing=checkpointing,
    )
    video = build_retrieval_video_tower(
        backbone, config, num_frames=spec.num_frames, network=spec.side_network
    )
    text_tower = CLIPTextTower(clip, context_length=spec.max_words, trainable=False)
    if dtype is not None:
        text_tower.to(dtype)
    return RetrievalModel(
        video,
        text_tower,
        build_similarity(spec.similarity, video.embed_dim),
        LogitScale(),
        method="side4video",
        preset=spec,
        backbone_identity=identity,
    )


def _batch(model: RetrievalModel, batch_size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    size = model.preset.image_size
    frames = torch.randn((batch_size, model.num_frames, 3, size, size), generator=generator)
    tokens = torch.randint(1, 49408, (batch_size, model.max_words), generator=generator)
    tokens[:, model.max_words // 2 :] = 0  # half of every caption is padding
    return frames, tokens


def measure_saved_bytes(model: RetrievalModel, batch_size: int, *, precision: str, seed: int):
    """Bytes autograd saves for backward in one forward + symmetric InfoNCE (parameters excluded)."""
    frames, tokens = _batch(model, batch_size, seed)
    model.train()
    dtype = PRECISIONS[precision]
    with SavedTensorMeter(exclude=model.parameters()) as meter:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(frames, tokens)
        loss = symmetric_infonce(logits.float())
    del loss, logits
    return meter.bytes


def _block_bytes(model: RetrievalModel, precision: str, seed: int) -> tuple[int, int]:
    """One side block's saved bytes without checkpointing, at batch 1 and 2 (measured)."""
    side = model.video.side
    results = []
    for batch in (1, 2):
        captured = []
        hook = side.blocks[0].register_forward_pre_hook(
            lambda module, args, out=captured: out.append([a.detach() for a in args])
        )
        with torch.no_grad():
            model.encode_video(_batch(model, batch, seed)[0])
        hook.remove()
        leaves = [t.requires_grad_(True) if t.is_floating_point() else t for t in captured[0]]
        dtype = PRECISIONS[precision]
        meter = SavedTensorMeter(exclude=[*side.blocks[0].parameters(), *leaves])
        with meter, torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            side.blocks[0](*leaves)
        results.append(meter.bytes)
    return results[0], results[1]


def _layer_transient(tokens: int, width: int, hidden: int, act: int, stream: int) -> int:
    """Computed: one layer's input and output tokens plus the larger of attention's (6 D per
    token, fused) and the MLP's (input, hidden projections, activation) intermediates."""
    return tokens * (2 * width * stream + max(6 * width, width + hidden) * act)


def _mlp_hidden(block: nn.Module, width: int) -> int:
    linears = [m for m in block.mlp.modules() if isinstance(m, nn.Linear)]
    return sum(m.out_features for m in linears if m.in_features == width) + linears[-1].in_features


@dataclass(frozen=True, kw_only=True, slots=True)
class RetrievalMemoryPlan:
    """Estimated GPU memory of one AdamW training step of a retrieval preset; ``*_bytes`` bytes."""

    preset: str
    num_frames: int
    max_words: int
    precision: str
    checkpointing: bool
    frozen_vision_params: int
    frozen_text_params: int
    frozen_weight_bytes: int  # both towers, in their stored dtype
    frozen_dtype: str
    trainable_params: int
    trainable_weight_bytes: int  # fp32
    gradient_bytes: int
    optimizer_bytes: int
    buffer_bytes: int
    reserve_bytes: int
    side_blocks: int
    saved_fit: tuple[float, float, float, float]  # a, b, c, d of a + b n + B (c + d n)
    measurements: tuple[tuple[int, int, int], ...]  # (side blocks, batch, saved bytes)
    linearity_error: float
    recompute: tuple[float, float]  # one recomputed side block: bytes at batch 0, per video
    layer_per_video: int  # the larger of an image-tower and a text layer's transient, per pair
    autocast_copy_bytes: int

    @property
    def static_bytes(self) -> int:
        """Weights, gradients, optimizer state, buffers and reserve: independent of the batch."""
        return (
            self.frozen_weight_bytes
            + self.trainable_weight_bytes
            + self.gradient_bytes
            + self.optimizer_bytes
            + self.buffer_bytes
            + self.reserve_bytes
        )

    def saved_bytes(self, batch_size: int) -> int:
        a, b, c, d = self.saved_fit
        return round(a + b * self.side_blocks + batch_size * (c + d * self.side_blocks))

    def transient_bytes(self, batch_size: int) -> int:
        recompute = self.recompute[0] + self.recompute[1] * batch_size if self.checkpointing else 0
        return round(recompute + self.layer_per_video * batch_size + self.autocast_copy_bytes)

    def total_bytes(self, batch_size: int) -> int:
        """Static + saved + transient (an upper bound: the transients do not coexist)."""
        return self.static_bytes + self.saved_bytes(batch_size) + self.transient_bytes(batch_size)

    def largest_batch(self, capacity_bytes: int) -> int:
        """The largest batch (video-caption pairs per GPU) whose estimate fits ``capacity_bytes``."""
        per_pair = self.total_bytes(1) - self.total_bytes(0)
        batch = max(0, math.floor((capacity_bytes - self.total_bytes(0)) / per_pair))
        while batch > 0 and self.total_bytes(batch) > capacity_bytes:
            batch -= 1
        return batch

    def as_dict(self, batch_sizes: Sequence[int] = ()) -> dict:
        return {
            **asdict(self),
            "static_bytes": self.static_bytes,
            "batches": [
                {
                    "batch_size": b,
                    "saved_bytes": self.saved_bytes(b),
                    "transient_bytes": self.transient_bytes(b),
                    "total_bytes": self.total_bytes(b),
                }
                for b in batch_sizes
            ],
        }


def _fit(points: dict[tuple[int, int], int]) -> tuple[float, float, float, float]:
    """a, b, c, d of ``a + b n + B (c + d n)`` through batch 1 and 2 at two block counts n."""
    n1, n2 = sorted({n for n, _ in points})
    slope = {n: points[n, 2] - points[n, 1] for n in (n1, n2)}
    offset = {n: points[n, 1] - slope[n] for n in (n1, n2)}
    d = (slope[n2] - slope[n1]) / (n2 - n1)
    b = (offset[n2] - offset[n1]) / (n2 - n1)
    return offset[n1] - b * n1, b, slope[n1] - d * n1, d


def estimate_retrieval_memory(
    preset: str,
    *,
    precision: str = "bf16",
    checkpointing: bool = True,
    reserve_bytes: int = CUDA_RESERVE_BYTES,
    seed: int = 0,
) -> RetrievalMemoryPlan:
    """Estimate the GPU memory of training ``preset``'s side4video retrieval model with AdamW.

    Nothing of the full model is allocated (see the module docstring for what is counted,
    measured, computed and assumed). Presets whose side blocks follow the odd layers only.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    spec = get_preset(preset)
    if spec.side_layers != "odd":
        raise ValueError(f"{preset}: the retrieval memory plan covers EVA presets (odd layers)")
    with torch.device("meta"):
        full = build_model(preset, grad_checkpointing=checkpointing)
    vision = sum(p.numel() for p in full.video.backbone.parameters())
    frozen = [p for p in full.parameters() if not p.requires_grad]
    trainable = sum(p.numel() for p in full.parameters() if p.requires_grad)
    points, models = {}, {}
    for depth in (2, 4):
        torch.manual_seed(seed)
        model = reduced_depth_model(preset, depth, checkpointing=checkpointing, seed=seed)
        blocks = len(model.video.side.side_layers)
        for batch in (1, 2, 3) if depth == 2 else (1, 2):
            points[blocks, batch] = measure_saved_bytes(
                model, batch, precision=precision, seed=seed
            )
        models[depth] = model
    check = {k: points.pop(k) for k in list(points) if k[1] == 3}
    fit = _fit(points)
    (n, batch), measured = next(iter(check.items()))
    fitted = fit[0] + fit[1] * n + batch * (fit[2] + fit[3] * n)
    one, two = _block_bytes(models[2], precision, seed) if checkpointing else (0, 0)
    dtype = PRECISIONS[precision]
    backbone, text = full.video.backbone, full.text
    frozen_dtype = next(backbone.parameters()).dtype
    act = (dtype or frozen_dtype).itemsize
    image_tokens = spec.num_frames * (1 + backbone.grid[0] * backbone.grid[1])
    width = backbone.width
    text_width = text.ln_final.weight.shape[0]
    layer = max(
        _layer_transient(
            image_tokens, width, _mlp_hidden(backbone.blocks[0], width), act, frozen_dtype.itemsize
        ),
        _layer_transient(spec.max_words, text_width, 4 * text_width, act, frozen_dtype.itemsize),
    )
    return RetrievalMemoryPlan(
        preset=preset,
        num_frames=spec.num_frames,
        max_words=spec.max_words,
        precision=precision,
        checkpointing=checkpointing,
        frozen_vision_params=vision,
        frozen_text_params=sum(p.numel() for p in frozen) - vision,
        frozen_weight_bytes=sum(p.numel() * p.element_size() for p in frozen),
        frozen_dtype=str(frozen_dtype).removeprefix("torch."),
        trainable_params=trainable,
        trainable_weight_bytes=4 * trainable,
        gradient_bytes=4 * trainable,
        optimizer_bytes=8 * trainable,
        buffer_bytes=sum(b.numel() * b.element_size() for b in full.buffers()),
        reserve_bytes=reserve_bytes,
        side_blocks=len(full.video.side.side_layers),
        saved_fit=fit,
        measurements=tuple((n, b, v) for (n, b), v in sorted({**points, **check}.items())),
        linearity_error=abs(fitted - measured) / measured,
        recompute=(float(2 * one - two), float(two - one)),
        layer_per_video=layer,
        autocast_copy_bytes=0 if dtype is None else trainable * dtype.itemsize,
    )
