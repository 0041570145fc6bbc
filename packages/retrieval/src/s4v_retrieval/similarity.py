"""Text-video similarity heads: mean-pooled cosine (``meanP``) and weighted token-wise interaction.

Side4Video's retrieval scripts (github.com/HJYao00/Side4Video at 5d723523, ``Retrieval/``) run
CLIP4Clip's loose-type ``meanP`` header with DRL's weighted token-wise interaction (``wti``; Wang et
al. 2022, "Disentangled representation learning for text-video retrieval"). Both heads return
*unscaled* similarities in [-1, 1]; training multiplies them by the learned CLIP temperature
(:class:`LogitScale`), evaluation ranks them as they are.

Deliberate difference from the reference WTI: the per-token max over frames and the per-frame max
over tokens skip padding (the reference zeroes padded tokens and lets the max pick that 0, which
beats every negative real similarity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from s4v_retrieval.loss import all_gather_with_grad

LOGIT_SCALE_MAX = math.log(100.0)
"""CLIP's cap on the learned log temperature (the scale never exceeds 100)."""


@dataclass(frozen=True, slots=True)
class TextFeatures:
    """Text tower output for ``Bt`` captions padded to ``L`` tokens, embedding width ``E``."""

    tokens: torch.Tensor  # (Bt, L, E) every token after ln_final and the text projection
    mask: torch.Tensor  # (Bt, L) bool, True for start, word and end tokens
    pooled: torch.Tensor  # (Bt, E) the end-of-text token's feature (CLIP's sentence embedding)

    def gathered(self) -> TextFeatures:
        """The same features from every rank of the process group, concatenated in rank order."""
        return TextFeatures(
            tokens=all_gather_with_grad(self.tokens),
            mask=all_gather_with_grad(self.mask.to(torch.uint8)).bool(),
            pooled=all_gather_with_grad(self.pooled),
        )

    def to(self, device: torch.device | str) -> TextFeatures:
        return TextFeatures(
            tokens=self.tokens.to(device), mask=self.mask.to(device), pooled=self.pooled.to(device)
        )

    def __getitem__(self, index: slice) -> TextFeatures:
        return TextFeatures(
            tokens=self.tokens[index], mask=self.mask[index], pooled=self.pooled[index]
        )

    def __len__(self) -> int:
        return self.tokens.shape[0]


@dataclass(frozen=True, slots=True)
class VideoFeatures:
    """Video tower output for ``Bv`` videos of ``T`` frames, embedding width ``E``."""

    frames: torch.Tensor  # (Bv, T, E) per-frame embeddings
    mask: torch.Tensor  # (Bv, T) bool, True for real (not padded) frames
    # (Bv, T) WTI frame weights computed once (WTISimilarity.frame_weights), e.g. by a search
    # index; they depend on the video alone. None: the head computes them.
    frame_weights: torch.Tensor | None = None

    def gathered(self) -> VideoFeatures:
        """The same features from every rank of the process group, concatenated in rank order."""
        return VideoFeatures(
            frames=all_gather_with_grad(self.frames),
            mask=all_gather_with_grad(self.mask.to(torch.uint8)).bool(),
        )

    def to(self, device: torch.device | str) -> VideoFeatures:
        weights = None if self.frame_weights is None else self.frame_weights.to(device)
        return VideoFeatures(
            frames=self.frames.to(device), mask=self.mask.to(device), frame_weights=weights
        )

    def __getitem__(self, index: slice) -> VideoFeatures:
        weights = None if self.frame_weights is None else self.frame_weights[index]
        return VideoFeatures(
            frames=self.frames[index], mask=self.mask[index], frame_weights=weights
        )

    def __len__(self) -> int:
        return self.frames.shape[0]


class LogitScale(nn.Module):
    """CLIP's learned temperature: ``exp(s)`` with ``s`` kept in ``[0, ln 100]``."""

    def __init__(self, init: float = math.log(1 / 0.07)) -> None:
        super().__init__()
        if not 0.0 <= init <= LOGIT_SCALE_MAX:
            raise ValueError(f"initial log temperature must lie in [0, ln 100], got {init}")
        self.log_scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(0.0, LOGIT_SCALE_MAX).exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project the parameter back into range; call after every optimiser step."""
        self.log_scale.clamp_(0.0, LOGIT_SCALE_MAX)


class MeanPSimilarity(nn.Module):
    """Cosine between the caption's end-token feature and the mean of the video's valid frames."""

    def forward(self, text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
        """``(Bt, Bv)`` similarities in [-1, 1]."""
        weights = video.mask.to(video.frames.dtype)  # (Bv, T)
        pooled = (video.frames * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
        return F.normalize(text.pooled, dim=-1) @ F.normalize(pooled, dim=-1).T


class _TokenWeight(nn.Sequential):
    """Linear(E, E) -> ReLU -> Linear(E, 1): one importance logit per token or frame."""

    def __init__(self, width: int) -> None:
        super().__init__(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))
        for layer in (self[0], self[2]):
            # BERT-style init of the reference (CLIP4Clip initialises every Linear this way).
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)


class WTISimilarity(nn.Module):
    """Weighted token-wise interaction (reference ``Retrieval/modules/modeling.py``, ``wti``).

    ``t2v(a, b) = Σ_t w_text[a, t] · max_v s[a, b, t, v]`` and
    ``v2t(a, b) = Σ_v w_frame[b, v] · max_t s[a, b, t, v]`` with ``s`` the cosine between text
    token ``t`` of caption ``a`` and frame ``v`` of video ``b``; the score is their mean. The weights
    are masked softmaxes of a small MLP over the (unnormalised) token and frame features.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.text_weight = _TokenWeight(width)
        self.frame_weight = _TokenWeight(width)

    def frame_weights(self, video: VideoFeatures) -> torch.Tensor:
        """``(Bv, T)``: the softmax over each video's valid frames of the frame-weight MLP."""
        w_frame = self.frame_weight(video.frames).squeeze(-1)  # (Bv, T)
        return w_frame.masked_fill(~video.mask, -math.inf).softmax(dim=-1)

    def forward(self, text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
        """``(Bt, Bv)`` similarities in [-1, 1]."""
        w_text = self.text_weight(text.tokens).squeeze(-1)  # (Bt, L)
        w_text = w_text.masked_fill(~text.mask, -math.inf).softmax(dim=-1)
        w_frame = video.frame_weights
        if w_frame is None:
            w_frame = self.frame_weights(video)  # (Bv, T)

        tokens = F.normalize(text.tokens, dim=-1)
        frames = F.normalize(video.frames, dim=-1)
        s = torch.einsum("atd,bvd->abtv", tokens, frames)  # (Bt, Bv, L, T)

        # Best frame for each text token (padded frames excluded), weighted over the valid tokens.
        best_frame = s.masked_fill(~video.mask[None, :, None, :], -math.inf).amax(dim=3)
        t2v = (best_frame.masked_fill(~text.mask[:, None, :], 0.0) * w_text[:, None, :]).sum(2)
        # Best text token for each frame (padding excluded), weighted over the valid frames.
        best_token = s.masked_fill(~text.mask[:, None, :, None], -math.inf).amax(dim=2)
        v2t = (best_token.masked_fill(~video.mask[None, :, :], 0.0) * w_frame[None, :, :]).sum(2)
        return 0.5 * (t2v + v2t)


SIMILARITIES = ("meanP", "wti")


def build_similarity(name: str, width: int) -> nn.Module:
    """The similarity head ``name`` (one of :data:`SIMILARITIES`) for embeddings of ``width``."""
    if name == "meanP":
        return MeanPSimilarity()
    if name == "wti":
        return WTISimilarity(width)
    raise ValueError(f"unknown similarity {name!r}; choose one of {', '.join(SIMILARITIES)}")


def blockwise_scores(
    similarity: nn.Module, text: TextFeatures, video: VideoFeatures, *, video_chunk: int = 512
):
    """A ``score_block(start, stop)`` for :mod:`s4v_retrieval.metrics` over cached features.

    Scores captions ``start..stop`` against every video, ``video_chunk`` videos at a time, without
    autograd, so that a token-wise head never materialises all (caption, video, token, frame)
    similarities at once.
    """
    if video_chunk < 1:
        raise ValueError(f"video_chunk must be >= 1, got {video_chunk}")

    @torch.no_grad()
    def score_block(start: int, stop: int) -> torch.Tensor:
        rows = text[start:stop]
        parts = [
            similarity(rows, video[v : v + video_chunk]) for v in range(0, len(video), video_chunk)
        ]
        return torch.cat(parts, dim=1)  # (stop - start, Bv)

    return score_block
