"""Similarity heads compute the documented formulas; the temperature stays within CLIP's cap."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from s4v_retrieval.similarity import (
    LOGIT_SCALE_MAX,
    LogitScale,
    MeanPSimilarity,
    TextFeatures,
    VideoFeatures,
    WTISimilarity,
    blockwise_scores,
    build_similarity,
)


def _features(bt: int = 3, bv: int = 4, length: int = 5, frames: int = 3, width: int = 8):
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(bt, length, width, generator=gen)
    valid = torch.tensor([5, 3, 2])[:bt]
    mask = torch.arange(length)[None, :] < valid[:, None]
    text = TextFeatures(tokens=tokens, mask=mask, pooled=tokens[torch.arange(bt), valid - 1])
    video = VideoFeatures(
        frames=torch.randn(bv, frames, width, generator=gen),
        mask=torch.ones(bv, frames, dtype=torch.bool),
    )
    return text, video


def test_meanp_is_the_cosine_between_end_token_and_mean_frame() -> None:
    text, video = _features()
    sim = MeanPSimilarity()(text, video)
    expected = F.cosine_similarity(text.pooled[:, None, :], video.frames.mean(1)[None], dim=-1)
    torch.testing.assert_close(sim, expected)


def test_meanp_ignores_padded_frames() -> None:
    text, video = _features()
    mask = video.mask.clone()
    mask[0, 2] = False
    padded = VideoFeatures(frames=video.frames.clone(), mask=mask)
    padded.frames[0, 2] = 1e6  # garbage in a padded slot
    sim = MeanPSimilarity()(text, padded)
    expected = F.cosine_similarity(text.pooled, video.frames[0, :2].mean(0)[None], dim=-1)
    torch.testing.assert_close(sim[:, 0], expected)


def _wti_by_loops(head: WTISimilarity, text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
    out = torch.zeros(len(text), len(video))
    for a in range(len(text)):
        toks = text.tokens[a][text.mask[a]]
        w_t = head.text_weight(toks).squeeze(-1).softmax(0)
        for b in range(len(video)):
            frs = video.frames[b][video.mask[b]]
            w_v = head.frame_weight(frs).squeeze(-1).softmax(0)
            s = F.normalize(toks, dim=-1) @ F.normalize(frs, dim=-1).T  # (valid L, valid T)
            t2v = (w_t * s.max(dim=1).values).sum()
            v2t = (w_v * s.max(dim=0).values).sum()
            out[a, b] = 0.5 * (t2v + v2t)
    return out


def test_wti_matches_the_per_pair_formula() -> None:
    torch.manual_seed(0)
    text, video = _features()
    head = WTISimilarity(8)
    torch.nn.init.normal_(head.text_weight[2].weight)  # non-uniform token weights
    torch.nn.init.normal_(head.frame_weight[2].weight)
    video.mask[1, 1:] = False
    torch.testing.assert_close(head(text, video), _wti_by_loops(head, text, video))


def test_wti_max_never_picks_padding() -> None:
    # Every real token is anti-aligned with every frame: the score must be -1, not the padding's 0.
    frame = torch.tensor([1.0, 0.0])
    text = TextFeatures(
        tokens=torch.tensor([[[-1.0, 0.0], [-2.0, 0.0], [0.0, 0.0]]]),
        mask=torch.tensor([[True, True, False]]),
        pooled=torch.tensor([[-2.0, 0.0]]),
    )
    video = VideoFeatures(frames=frame.expand(1, 2, 2), mask=torch.ones(1, 2, dtype=torch.bool))
    assert WTISimilarity(2)(text, video).item() == pytest.approx(-1.0)


def test_wti_rows_do_not_depend_on_the_other_captions_in_the_block() -> None:
    text, video = _features()
    head = WTISimilarity(8)
    full = head(text, video)
    torch.testing.assert_close(head(text[1:3], video), full[1:3])


def test_logit_scale_starts_at_clip_temperature_and_is_capped_at_100() -> None:
    scale = LogitScale()
    assert scale().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    assert scale().item() == pytest.approx(100.0)
    scale.clamp_()
    assert scale.log_scale.item() == pytest.approx(LOGIT_SCALE_MAX)
    with pytest.raises(ValueError, match="ln 100"):
        LogitScale(init=math.log(200.0))


def test_unknown_similarity_names_the_choices() -> None:
    assert isinstance(build_similarity("wti", 8), WTISimilarity)
    with pytest.raises(ValueError, match="meanP, wti"):
        build_similarity("seqTransf", 8)


def test_blockwise_scores_equal_the_full_matrix() -> None:
    text, video = _features(bt=3, bv=4)
    head = WTISimilarity(8)
    full = head(text, video)
    score_block = blockwise_scores(head, text, video, video_chunk=3)
    torch.testing.assert_close(score_block(0, 3), full)
    torch.testing.assert_close(score_block(1, 2), full[1:2])


def test_wti_with_stored_frame_weights_equals_computing_them() -> None:
    """A search index stores each video's frame weights (they depend on the video alone)."""
    torch.manual_seed(0)
    head = WTISimilarity(16)
    text = TextFeatures(
        tokens=torch.randn(3, 5, 16),
        mask=torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool),
        pooled=torch.randn(3, 16),
    )
    video = VideoFeatures(frames=torch.randn(4, 6, 16), mask=torch.ones(4, 6, dtype=torch.bool))
    stored = VideoFeatures(
        frames=video.frames, mask=video.mask, frame_weights=head.frame_weights(video)
    )
    torch.testing.assert_close(head(text, stored[1:3]), head(text, video[1:3]), rtol=0, atol=0)
    assert stored[1:3].frame_weights.shape == (2, 6)
