"""Text-video retrieval model: Side4Video video tower, CLIP text tower, similarity head, temperature.

Reference: github.com/HJYao00/Side4Video @ 5d72352, ``Retrieval/`` (CLIP4Clip codebase with the side
network; spec section 4). Two methods:

``side4video``   frozen CLIP ViT + retrieval side network whose per-frame features correct the
                 backbone's frame embeddings through a zero-initialised projection (spec 4.1).
``frozen-clip``  the same model with the side network switched off: plain CLIP frame embeddings.
                 Only the similarity head and the temperature (and the text tower, if asked) train.

The text tower is frozen by default; ``train_text=True`` trains it in its own parameter group
(the reference trains it at 1e-3 x the base learning rate).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from s4v_core.backbone import FrozenViT, create_clip
from s4v_core.side import SideNetworkConfig
from s4v_core.side_retrieval import RetrievalVideoTower, build_retrieval_video_tower
from s4v_retrieval.similarity import (
    LOGIT_SCALE_MAX,
    SIMILARITIES,
    LogitScale,
    TextFeatures,
    VideoFeatures,
    build_similarity,
)
from s4v_retrieval.text import CLIPTextTower, build_tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class RetrievalPreset:
    """Everything :func:`build_model` needs."""

    backbone: str  # open_clip model name
    pretrained: str | None  # the weights the reference starts from (open_clip tag)
    num_frames: int  # T, frames per video (reference max_frames: 12)
    max_words: int  # tokens per caption incl. start and end (reference max_words: 32)
    side_dim: int  # C, side network width
    image_size: int  # input resolution; must match the backbone's
    head_dim: int = 64  # side attention head width (reference: heads = C // 64)
    side_layers: tuple[int, ...] | None = None  # backbone layers with a side block; None = all
    similarity: str = "wti"  # "wti" (reference scripts) or "meanP"
    description: str = ""


PRESETS: dict[str, RetrievalPreset] = {
    # script_train/run_train_msvd.sh and paper Table 3: ViT-B/32, 12 frames, 32 words, C=320.
    "side4video-b32": RetrievalPreset(
        backbone="ViT-B-32-quickgelu",
        pretrained="openai",
        num_frames=12,
        max_words=32,
        side_dim=320,
        image_size=224,
        description="Side4Video retrieval, CLIP ViT-B/32, C=320, WTI (reference MSVD script)",
    ),
    # script_train/run_train_{msrvtt,vatex}.sh: ViT-B/16, 12 frames, 32 words, C=320.
    "side4video-b16": RetrievalPreset(
        backbone="ViT-B-16-quickgelu",
        pretrained="openai",
        num_frames=12,
        max_words=32,
        side_dim=320,
        image_size=224,
        description="Side4Video retrieval, CLIP ViT-B/16, C=320, WTI (reference MSR-VTT/VATEX)",
    ),
    # For tests and the CPU demo: the 4-layer, 32 px s4v-tiny CLIP shipped with s4v_core.
    "tiny": RetrievalPreset(
        backbone="s4v-tiny",
        pretrained=None,
        num_frames=8,
        max_words=16,
        side_dim=64,
        image_size=32,
        head_dim=32,
        description="tiny Side4Video retrieval on the 32 px s4v-tiny CLIP, for tests and demos",
    ),
}

METHODS = ("side4video", "frozen-clip")


def get_preset(name: str) -> RetrievalPreset:
    """The preset called ``name``; a clear error listing the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


class RetrievalModel(nn.Module):
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
        embeddings = self.video(frames)
        mask = torch.ones(embeddings.shape[:2], dtype=torch.bool, device=embeddings.device)
        return VideoFeatures(frames=embeddings, mask=mask)

    def encode_text(self, tokens: torch.Tensor) -> TextFeatures:
        """Token ids ``(B, max_words)`` -> token features ``(B, L, E)``, mask and pooled ``(B, E)``."""
        return self.text(tokens)

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

    def _frozen_prefixes(self) -> list[str]:
        frozen = [f"{name}." for name, m in self.named_modules() if isinstance(m, FrozenViT)]
        if not self.text.trainable:
            frozen.append("text.")
        return frozen

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Trained parameters and BatchNorm buffers; nothing of the frozen towers."""
        frozen = self._frozen_prefixes()
        return {
            key: value
            for key, value in self.state_dict().items()
            if not any(key.startswith(prefix) for prefix in frozen)
        }

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` saved; every key must match, with its shape."""
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(state))
        unknown = sorted(set(state) - set(expected))
        wrong = [
            f"{key}: got {tuple(state[key].shape)}, expected {tuple(value.shape)}"
            for key, value in expected.items()
            if key in state and state[key].shape != value.shape
        ]
        if missing or unknown or wrong:
            raise ValueError(
                "trainable state does not fit this model: "
                f"missing {missing[:5]}, unknown {unknown[:5]}, wrong shapes {wrong[:5]}"
            )
        self.load_state_dict(state, strict=False)


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
        preset: a key of :data:`PRESETS`.
        method: ``side4video`` or ``frozen-clip`` (side network off).
        pretrained: CLIP weights: an open_clip tag (the reference's is ``preset.pretrained``), a
            local file, or None for random weights.
        num_frames: override the preset's frames per video.
        side_dim: override the preset's side width C.
        max_words: override the preset's tokens per caption.
        similarity: override the preset's similarity head (``wti`` or ``meanP``).
        train_text: train the text tower (its own parameter group) instead of freezing it.
        grad_checkpointing: recompute the side blocks' activations in backward.
    """
    spec = get_preset(preset)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    overrides = {
        "num_frames": num_frames,
        "side_dim": side_dim,
        "max_words": max_words,
        "similarity": similarity,
    }
    spec = replace(spec, **{k: v for k, v in overrides.items() if v is not None})
    if spec.similarity not in SIMILARITIES:
        raise ValueError(
            f"unknown similarity {spec.similarity!r}; choose one of {', '.join(SIMILARITIES)}"
        )

    clip, identity = create_clip(spec.backbone, pretrained)
    backbone = FrozenViT(clip.visual, identity, with_projection=True)
    if spec.image_size != backbone.image_size:
        raise ValueError(
            f"preset image_size {spec.image_size} differs from {spec.backbone}'s "
            f"{backbone.image_size}"
        )
    side_config = None
    if method == "side4video":
        side_config = SideNetworkConfig(
            side_dim=spec.side_dim,
            head_dim=spec.head_dim,
            side_layers=spec.side_layers,
            grad_checkpointing=grad_checkpointing,
        )
    video = build_retrieval_video_tower(backbone, side_config, num_frames=spec.num_frames)
    text = CLIPTextTower(clip, context_length=spec.max_words, trainable=train_text)
    if text.width != video.embed_dim:
        raise ValueError(
            f"{spec.backbone}: text width {text.width} differs from image width {video.embed_dim}"
        )
    init_scale = min(max(float(clip.logit_scale.detach().reshape(-1)[0]), 0.0), LOGIT_SCALE_MAX)
    model = RetrievalModel(
        video,
        text,
        build_similarity(spec.similarity, video.embed_dim),
        LogitScale(init=init_scale if math.isfinite(init_scale) else math.log(1 / 0.07)),
        method=method,
        preset=spec,
        backbone_identity=identity,
    )
    logger.info(
        "built retrieval %s/%s: %d trainable parameters",
        preset,
        method,
        sum(p.numel() for p in model.parameters() if p.requires_grad),
    )
    return model


def tokenizer_for(model: RetrievalModel):
    """The caption tokenizer of ``model``: ``tokenizer(list[str]) -> (B, max_words)`` int64."""
    return build_tokenizer(model.preset.backbone, model.preset.max_words)
