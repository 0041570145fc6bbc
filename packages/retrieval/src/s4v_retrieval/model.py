"""Text-video retrieval model: Side4Video video tower, CLIP text tower, similarity head, temperature.

Reference: github.com/HJYao00/Side4Video @ 5d72352, ``Retrieval/modules/modeling.py``
(``CLIP4Clip``, the CLIP4Clip codebase with the side network of
``Retrieval/modules/module_clip.py``).
Two methods, registered in :data:`s4v_retrieval.presets.METHODS`:

``side4video``   frozen CLIP ViT + retrieval side network whose per-frame features correct the
                 backbone's frame embeddings through a zero-initialised projection
                 (``side_proj`` in ``Retrieval/modules/module_clip.py``).
``frozen-clip``  the same model with the side network switched off: plain CLIP frame embeddings.
                 Only the similarity head and the temperature (and the text tower, if asked) train.

The text tower is frozen by default; ``train_text=True`` trains it in its own parameter group
(the reference trains it at 1e-3 x the base learning rate).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from s4v_core.assembly import (
    TrainableModule,
    check_image_size,
    count_on_meta,
    log_built,
    with_overrides,
)
from s4v_core.backbone import create_clip, freeze_image_tower
from s4v_core.side import SideNetworkConfig
from s4v_core.side_retrieval import RetrievalVideoTower, build_retrieval_video_tower
from s4v_retrieval.presets import RetrievalPreset, get_method, get_preset
from s4v_retrieval.similarity import (
    LOGIT_SCALE_MAX,
    SIMILARITIES,
    LogitScale,
    TextFeatures,
    VideoFeatures,
    build_similarity,
)
from s4v_retrieval.text import CLIPTextTower, build_tokenizer

_FROZEN_DTYPES = {None: None, "bf16": torch.bfloat16}


class RetrievalModel(TrainableModule):
    """Video and text towers, a similarity head and CLIP's learned temperature.

    ``forward(frames, tokens)`` returns the scaled ``(B, B)`` logits of the *global* batch (features
    are gathered across ranks with gradient) for :func:`s4v_retrieval.loss.symmetric_infonce`.
    Evaluation encodes both sides separately (:meth:`encode_video`, :meth:`encode_text`) and ranks
    the unscaled :attr:`similarity` of the cached features.
    """

    def __init__(
        self,
        video: RetrievalVideoTower,
        text: CLIPTextTower,
        similarity: nn.Module,
        logit_scale: LogitScale,
        *,
        method: str,
        preset: RetrievalPreset,
        backbone_identity: dict,
    ) -> None:
        super().__init__()
        self.video = video
        self.text = text
        self.similarity = similarity
        self.logit_scale = logit_scale
        self.method = method
        self.preset = preset
        self._backbone_identity = dict(backbone_identity)

    @property
    def backbone_identity(self) -> dict:
        """``{"name", "pretrained", "sha256"}`` of the CLIP weights both towers started from."""
        return dict(self._backbone_identity)

    def set_backbone_identity(self, identity: dict) -> None:
        """Record where the frozen towers' weights came from (an imported release, ...)."""
        self._backbone_identity = dict(identity)

    @property
    def num_frames(self) -> int:
        return self.preset.num_frames

    @property
    def max_words(self) -> int:
        return self.preset.max_words

    def encode_video(self, frames: torch.Tensor) -> VideoFeatures:
        """Frames ``(B, T, 3, H, W)`` -> per-frame embeddings ``(B, T, E)`` (all frames valid)."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"expected frames (B, T, 3, H, W), got {tuple(frames.shape)}")
        embeddings = self.video(frames).float()  # fp32 whatever the frozen towers' dtype
        mask = torch.ones(embeddings.shape[:2], dtype=torch.bool, device=embeddings.device)
        return VideoFeatures(frames=embeddings, mask=mask)

    def encode_text(self, tokens: torch.Tensor) -> TextFeatures:
        """Token ids ``(B, max_words)`` -> token features ``(B, L, E)``, mask and pooled ``(B, E)``
        (fp32 features, as the reference's ``.float()``, whatever the text tower's dtype)."""
        text = self.text(tokens)
        return TextFeatures(tokens=text.tokens.float(), mask=text.mask, pooled=text.pooled.float())

    def forward(self, frames: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Scaled logits ``(B_all, B_all)``, texts on rows, over the batch of every rank."""
        video = self.encode_video(frames).gathered()
        text = self.encode_text(tokens).gathered()
        return self.logit_scale() * self.similarity(text, video)

    def after_optimizer_step(self) -> None:
        """Keep the temperature within CLIP's cap (the reference clamps after every step)."""
        self.logit_scale.clamp_()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the side blocks' activations in backward."""
        if self.video.side is not None:
            self.video.side.set_grad_checkpointing(enable)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by learning-rate group: ``"main"`` and, if it trains, ``"text"``."""
        text = [p for p in self.text.parameters() if p.requires_grad]
        text_ids = {id(p) for p in text}
        main = [p for p in self.parameters() if p.requires_grad and id(p) not in text_ids]
        return {"main": main, "text": text} if text else {"main": main}


def build_model(
    preset: str,
    *,
    method: str = "side4video",
    pretrained: str | None = None,
    num_frames: int | None = None,
    side_dim: int | None = None,
    max_words: int | None = None,
    similarity: str | None = None,
    train_text: bool = False,
    grad_checkpointing: bool = False,
) -> RetrievalModel:
    """Build a retrieval model from a named preset.

    Args:
        preset: a key of :data:`s4v_retrieval.PRESETS`.
        method: a key of :data:`s4v_retrieval.METHODS` (``side4video``; ``frozen-clip``: no side).
        pretrained: CLIP weights: an open_clip tag (the reference's is ``preset.pretrained``), a
            local file, or None for random weights.
        num_frames: override the preset's frames per video.
        side_dim: override the preset's side width C.
        max_words: override the preset's tokens per caption.
        similarity: override the preset's similarity head (``wti`` or ``meanP``).
        train_text: train the text tower (its own parameter group) instead of freezing it; it
            then stays fp32 whatever the preset's ``frozen_dtype``.
        grad_checkpointing: recompute the side blocks' activations in backward.
    """
    spec = get_preset(preset)
    builder = get_method(method)
    spec = with_overrides(
        spec,
        num_frames=num_frames,
        side_dim=side_dim,
        max_words=max_words,
        similarity=similarity,
    )
    if spec.similarity not in SIMILARITIES:
        raise ValueError(
            f"unknown similarity {spec.similarity!r}; choose one of {', '.join(SIMILARITIES)}"
        )

    clip, identity = create_clip(spec.backbone, pretrained)
    frozen_dtype = _FROZEN_DTYPES[spec.frozen_dtype]
    backbone = freeze_image_tower(
        clip.visual, identity, with_projection=True, weights_dtype=frozen_dtype
    )
    check_image_size(spec.image_size, spec.backbone, backbone.image_size)
    side_config = None
    if builder.side_network:
        side_config = SideNetworkConfig(
            side_dim=spec.side_dim,
            head_dim=spec.head_dim,
            side_layers=spec.side_layers,
            grad_checkpointing=grad_checkpointing,
        )
    video = build_retrieval_video_tower(
        backbone, side_config, num_frames=spec.num_frames, network=spec.side_network
    )
    text = CLIPTextTower(clip, context_length=spec.max_words, trainable=train_text)
    if frozen_dtype is not None and not train_text:
        text.to(frozen_dtype)  # a frozen tower keeps no fp32 copy; its features come back fp32
    if text.width != video.embed_dim:
        raise ValueError(
            f"{spec.backbone}: text width {text.width} differs from image width {video.embed_dim}"
        )
    scale = clip.logit_scale.detach().reshape(-1)[0]
    # A model built on the meta device (parameter counting) has no value to read.
    init_scale = math.nan if scale.is_meta else min(max(float(scale), 0.0), LOGIT_SCALE_MAX)
    model = RetrievalModel(
        video,
        text,
        build_similarity(spec.similarity, video.embed_dim),
        LogitScale(init=init_scale if math.isfinite(init_scale) else math.log(1 / 0.07)),
        method=method,
        preset=spec,
        backbone_identity=identity,
    )
    log_built(f"retrieval {preset}/{method}", model)
    return model


def count_parameters(name: str, method: str = "side4video") -> tuple[int, int]:
    """(trainable, total) parameters of preset ``name`` under ``method``, text tower frozen.

    Counted on the meta device: nothing is allocated and no weights are read.
    """
    return count_on_meta(lambda: build_model(name, method=method))


def tokenizer_for(model: RetrievalModel):
    """The caption tokenizer of ``model``: ``tokenizer(list[str]) -> (B, max_words)`` int64."""
    return build_tokenizer(model.preset.backbone, model.preset.max_words)
