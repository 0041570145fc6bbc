"""Text-video retrieval metrics: R@1/5/10, median and mean rank, for both directions.

Follows the CLIP4Clip / Side4Video protocol (``metrics.py`` and ``main_task_retrieval.eval_epoch`` in
github.com/HJYao00/Side4Video at 5d723523): a similarity matrix of texts x videos; the 0-based rank of
the ground truth for every query; ``R@K`` = percentage of queries with rank < K; ``MdR`` =
median(rank) + 1; ``MnR`` = mean(rank) + 1.

**Median of an even count**, as the reference computes it on each path: the *mean of the two middle
ranks* (``np.median`` in its ``compute_metrics``) for both directions with one caption per video and
for video -> text with several; the *lower middle rank* (``torch.median`` in its
``tensor_text_to_video_metrics``) for text -> video with several captions per video (MSVD, VATEX),
where the two conventions can differ by 0.5 or more. A set is multi-caption when it has more captions
than videos (every video has at least one); :func:`ranks_to_metrics` picks the convention from the
two rank tensors. The ``dsl/`` metrics follow the same conventions.

* **text -> video**: every caption ranks all videos; its ground truth is the video it describes.
* **video -> text**: every video ranks all videos' caption *groups*, a group scoring the max over its
  captions. With one caption per video (MSR-VTT 1k-A) this is plain ranking over the transposed
  matrix; with several (MSVD, VATEX) it is the reference's multi-caption rule.

**Tie rule (pessimistic).** A query's rank is the number of *other* candidates scoring greater than
*or equal to* its ground truth. A tie therefore never helps: a model that scores every candidate the
same gets the worst rank, not the best (the reference sorts and so breaks ties arbitrarily).

The matrix is consumed in row blocks of captions (``score_block(start, stop)``), so a large test set
never needs every (caption, video) score at once, and a costly similarity (token-wise interaction) is
evaluated one block at a time. Only a (videos x videos) running maximum is kept for video -> text.

Dual-softmax re-ranking (DSL, Cheng et al. 2021, "Improving video-text retrieval by multi-stream
corpus alignment and dual softmax loss") is an *inference-time prior* that the reference never uses.
It is reported only under its own ``dsl/`` prefix and never mixed into the plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

ScoreBlock = Callable[[int, int], torch.Tensor]
"""``score_block(start, stop) -> (stop - start, num_videos)`` similarities of captions start..stop."""

RECALL_KS = (1, 5, 10)

MedianRule = Literal["mean", "lower"]
"""Median of an even count: ``"mean"`` of the two middle values (``np.median``) or the ``"lower"`` one
(``torch.median``)."""


def pessimistic_ranks(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of each query's ground truth, counting ties against the query.

    Args:
        scores: ``(Q, C)`` similarity of each query to every candidate.
        target: ``(Q,)`` index of the ground-truth candidate of each query.

    Returns:
        ``(Q,)`` int64: the number of other candidates whose score is >= the ground truth's.
    """
    if torch.isnan(scores).any():
        raise ValueError("similarity scores contain NaN; the ranks would be meaningless")
    truth = scores.gather(1, target[:, None])  # (Q, 1)
    return (scores >= truth).sum(dim=1) - 1


def rank_metrics(ranks: torch.Tensor, *, median: MedianRule = "mean") -> dict[str, float]:
    """R@1/5/10 (percent), MdR and MnR from 0-based ranks ``(Q,)``.

    ``median`` is the rule for an even count (see :data:`MedianRule`); :func:`ranks_to_metrics`
    chooses the reference's rule for each direction.
    """
    if ranks.numel() == 0:
        raise ValueError("no queries to rank")
    if median not in ("mean", "lower"):
        raise ValueError(f"median must be 'mean' or 'lower', got {median!r}")
    ranks = ranks.double()
    out = {f"R{k}": (ranks < k).double().mean().item() * 100.0 for k in RECALL_KS}
    middle = torch.quantile(ranks, 0.5) if median == "mean" else torch.median(ranks)
    out["MdR"] = middle.item() + 1.0
    out["MnR"] = ranks.mean().item() + 1.0
    return out


def ranks_to_metrics(t2v: torch.Tensor, v2t: torch.Tensor, *, prefix: str = "") -> dict[str, float]:
    """Both directions' metrics, keys ``{prefix}t2v/R1 ... {prefix}v2t/MnR``, as the reference.

    Args:
        t2v: ``(num_texts,)`` 0-based text -> video ranks (one per caption).
        v2t: ``(num_videos,)`` 0-based video -> text ranks (one per video).
        prefix: prepended to every key (``"dsl/"`` for the re-ranked metrics).

    More captions than videos is the multi-caption protocol, whose text -> video MdR takes the
    lower middle rank of an even count (``torch.median``); every other MdR averages the two.
    """
    multi_caption = t2v.numel() > v2t.numel()
    t2v_median: MedianRule = "lower" if multi_caption else "mean"
    out = {f"{prefix}t2v/{k}": v for k, v in rank_metrics(t2v, median=t2v_median).items()}
    out.update({f"{prefix}v2t/{k}": v for k, v in rank_metrics(v2t, median="mean").items()})
    return out


def _check_caption_groups(text_to_video: torch.Tensor, num_videos: int) -> None:
    if text_to_video.ndim != 1 or text_to_video.dtype != torch.int64:
        raise ValueError("text_to_video must be a 1-D int64 tensor (video index of each caption)")
    if text_to_video.numel() == 0:
        raise ValueError("no captions to rank")
    if text_to_video.min() < 0 or text_to_video.max() >= num_videos:
        raise ValueError(f"text_to_video holds a video index outside [0, {num_videos})")
    uncaptioned = torch.bincount(text_to_video, minlength=num_videos) == 0
    if uncaptioned.any():
        first = int(uncaptioned.nonzero()[0])
        raise ValueError(
            f"{int(uncaptioned.sum())} video(s) have no caption (first: video index {first}); "
            "video -> text retrieval needs at least one caption per video"
        )


def _blocks(num_texts: int, chunk_size: int):
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for start in range(0, num_texts, chunk_size):
        yield start, min(start + chunk_size, num_texts)


def _fetch(score_block: ScoreBlock, start: int, stop: int, num_videos: int) -> torch.Tensor:
    block = score_block(start, stop).detach().float()
    if block.shape != (stop - start, num_videos):
        raise ValueError(
            f"score_block({start}, {stop}) returned shape {tuple(block.shape)}, "
            f"expected {(stop - start, num_videos)}"
        )
    return block


def _rank_pass(
    score_block: ScoreBlock,
    text_to_video: torch.Tensor,
    num_videos: int,
    chunk_size: int,
    t2v_view: Callable[[torch.Tensor], torch.Tensor],
    v2t_view: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over the caption blocks; each direction ranks its own view of a block."""
    _check_caption_groups(text_to_video, num_videos)
    num_texts = text_to_video.numel()
    t2v = torch.empty(num_texts, dtype=torch.int64)
    # group_max[u, v]: best score of any caption of video u against video v.
    group_max = torch.full((num_videos, num_videos), -math.inf)
    for start, stop in _blocks(num_texts, chunk_size):
        block = _fetch(score_block, start, stop, num_videos)  # (n, V)
        owners = text_to_video[start:stop]
        t2v[start:stop] = pessimistic_ranks(t2v_view(block), owners)
        view = v2t_view(block)
        group_max.scatter_reduce_(0, owners[:, None].expand_as(view), view, "amax")
    # Query video v ranks candidate groups u by group_max[u, v]; its ground truth is u = v.
    v2t = pessimistic_ranks(group_max.T, torch.arange(num_videos))
    return t2v, v2t


def retrieval_ranks(
    score_block: ScoreBlock,
    text_to_video: torch.Tensor,
    num_videos: int,
    *,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pessimistic 0-based ranks for text -> video and video -> text.

    Args:
        score_block: returns the similarities of captions ``start..stop`` to all videos.
        text_to_video: ``(num_texts,)`` int64, the video each caption describes.
        num_videos: number of videos (columns of the score matrix).
        chunk_size: captions per block.

    Returns:
        ``(t2v_ranks (num_texts,), v2t_ranks (num_videos,))``.
    """

    def same(block: torch.Tensor) -> torch.Tensor:
        return block

    return _rank_pass(score_block, text_to_video, num_videos, chunk_size, same, same)


def retrieval_metrics(
    score_block: ScoreBlock,
    text_to_video: torch.Tensor,
    num_videos: int,
    *,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Plain retrieval metrics, keys ``t2v/R1 ... t2v/MnR`` and ``v2t/R1 ... v2t/MnR``.

    See :func:`retrieval_ranks` for the arguments; works for single- and multi-caption sets, with
    the reference's median rule for each (see :func:`ranks_to_metrics`).
    """
    t2v, v2t = retrieval_ranks(score_block, text_to_video, num_videos, chunk_size=chunk_size)
    return ranks_to_metrics(t2v, v2t)


def dual_softmax_metrics(
    score_block: ScoreBlock,
    text_to_video: torch.Tensor,
    num_videos: int,
    *,
    temperature: float = 100.0,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Metrics after dual-softmax re-ranking, keys prefixed ``dsl/`` (e.g. ``dsl/t2v/R1``).

    text -> video ranks ``S[c, v] * softmax_c(temperature * S[:, v])`` (a video's preference for
    the caption, normalised over all captions); video -> text ranks
    ``S[c, v] * softmax_v(temperature * S[c, :])`` before the per-group max. This uses test-set
    statistics across queries, which is why it is kept apart from the plain metrics.
    """
    _check_caption_groups(text_to_video, num_videos)
    num_texts = text_to_video.numel()
    # Pass 1: log-sum-exp over all captions for every video (the column normaliser).
    column_lse = torch.full((num_videos,), -math.inf)
    for start, stop in _blocks(num_texts, chunk_size):
        block = _fetch(score_block, start, stop, num_videos)
        column_lse = torch.logaddexp(column_lse, torch.logsumexp(temperature * block, dim=0))

    def t2v_view(block: torch.Tensor) -> torch.Tensor:
        return block * torch.exp(temperature * block - column_lse)

    def v2t_view(block: torch.Tensor) -> torch.Tensor:
        return block * torch.softmax(temperature * block, dim=1)

    t2v, v2t = _rank_pass(score_block, text_to_video, num_videos, chunk_size, t2v_view, v2t_view)
    return ranks_to_metrics(t2v, v2t, prefix="dsl/")


def matrix_blocks(similarity: torch.Tensor) -> ScoreBlock:
    """Adapt a precomputed ``(num_texts, num_videos)`` matrix to the ``score_block`` interface."""
    return lambda start, stop: similarity[start:stop]
