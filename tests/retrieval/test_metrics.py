"""Retrieval metrics give hand-computed answers, count ties against the query and chunk exactly."""

from __future__ import annotations

import pytest
import torch

from s4v_retrieval.metrics import (
    dual_softmax_metrics,
    matrix_blocks,
    pessimistic_ranks,
    rank_metrics,
    ranks_to_metrics,
    retrieval_metrics,
    retrieval_ranks,
)


def _one_caption_each(n: int) -> torch.Tensor:
    return torch.arange(n)


def test_identity_similarity_gives_perfect_scores_in_both_directions() -> None:
    n = 12
    m = retrieval_metrics(matrix_blocks(torch.eye(n)), _one_caption_each(n), n)
    for direction in ("t2v", "v2t"):
        assert m[f"{direction}/R1"] == 100.0
        assert m[f"{direction}/R5"] == 100.0
        assert m[f"{direction}/MdR"] == 1.0
        assert m[f"{direction}/MnR"] == 1.0


def test_known_permutation_gives_known_ranks() -> None:
    # Caption i's ground truth (video i) sits at 0-based rank r[i] in its row.
    wanted = torch.tensor([0, 3, 1, 0, 2])
    n = 5
    sim = torch.zeros(n, n)
    for i, r in enumerate(wanted.tolist()):
        others = [j for j in range(n) if j != i]
        order = [*others[:r], i, *others[r:]]  # candidate list best-first
        for pos, j in enumerate(order):
            sim[i, j] = 10.0 - pos
    t2v, _ = retrieval_ranks(matrix_blocks(sim), _one_caption_each(n), n)
    assert t2v.tolist() == wanted.tolist()
    m = rank_metrics(t2v)
    assert m["R1"] == pytest.approx(40.0)
    assert m["R5"] == 100.0
    assert m["MdR"] == 2.0  # median of [0, 0, 1, 2, 3] is 1, +1
    assert m["MnR"] == pytest.approx(1.0 + 6 / 5)


def test_median_of_an_even_count_averages_the_middle_ranks() -> None:
    assert rank_metrics(torch.tensor([0, 1, 4, 9]))["MdR"] == 3.5  # (1 + 4) / 2 + 1


def test_lower_median_takes_the_lower_middle_rank() -> None:
    assert rank_metrics(torch.tensor([9, 0, 4, 1]), median="lower")["MdR"] == 2.0  # 1 + 1
    assert rank_metrics(torch.tensor([0, 1, 4]), median="lower")["MdR"] == 2.0  # odd: the middle
    with pytest.raises(ValueError, match="median"):
        rank_metrics(torch.tensor([0, 1]), median="upper")


def test_multi_caption_t2v_median_is_the_lower_middle_rank_as_the_reference() -> None:
    # 4 videos, 6 captions: 0,1 -> video 0; 2 -> video 1; 3 -> video 2; 4,5 -> video 3.
    text_to_video = torch.tensor([0, 0, 1, 2, 3, 3])
    sim = torch.tensor(
        [
            [0.9, 0.0, 0.0, 0.0],  # t2v rank 0
            [0.8, 0.1, 0.0, 0.0],  # t2v rank 0
            [0.0, 0.9, 0.0, 0.0],  # t2v rank 0
            [0.6, 0.7, 0.1, 0.5],  # t2v rank 3
            [0.5, 0.6, 0.7, 0.2],  # t2v rank 3
            [0.4, 0.5, 0.6, 0.3],  # t2v rank 3
        ]
    )
    # Group maxima (rows: candidate video u): u0 = [.9, .1, 0, 0], u1 = [0, .9, 0, 0],
    # u2 = [.6, .7, .1, .5], u3 = [.5, .6, .7, .3]. Query video v reads column v:
    # v0 (.9, 0, .6, .5) rank 0; v1 (.1, .9, .7, .6) rank 0; v2 (0, 0, .1, .7) rank 1;
    # v3 (0, 0, .5, .3) rank 1.
    t2v, v2t = retrieval_ranks(matrix_blocks(sim), text_to_video, 4)
    assert t2v.tolist() == [0, 0, 0, 3, 3, 3]
    assert v2t.tolist() == [0, 0, 1, 1]
    m = retrieval_metrics(matrix_blocks(sim), text_to_video, 4)
    # t2v: six ranks 0, 0, 0 | 3, 3, 3: torch.median takes 0 -> MdR 1 (np.median would give 2.5).
    assert m["t2v/MdR"] == 1.0
    assert m["t2v/MnR"] == 2.5
    # v2t keeps np.median (the reference's compute_metrics): (0 + 1) / 2 + 1.
    assert m["v2t/MdR"] == 1.5
    assert ranks_to_metrics(t2v, v2t) == m
    # dsl/ follows the same rules: a near-zero temperature makes the re-ranking keep every order.
    dsl = dual_softmax_metrics(matrix_blocks(sim), text_to_video, 4, temperature=1e-6)
    assert {k.removeprefix("dsl/"): v for k, v in dsl.items()} == pytest.approx(m)


def test_single_caption_median_of_an_even_count_averages_in_both_directions() -> None:
    sim = torch.tensor(
        [
            [0.9, 0.0, 0.0, 0.0],  # rank 0
            [0.5, 0.4, 0.0, 0.0],  # rank 1
            [0.0, 0.0, 0.9, 0.0],  # rank 0
            [0.0, 0.0, 0.5, 0.4],  # rank 1
        ]
    )
    m = retrieval_metrics(matrix_blocks(sim), _one_caption_each(4), 4)
    assert m["t2v/MdR"] == 1.5  # np.median of 0, 0, 1, 1 is 0.5
    # v2t on the transpose: v0 (.9, .5, 0, 0) 0; v1 (0, .4, 0, 0) 0; v2 0; v3 (0, 0, 0, .4) 0
    assert m["v2t/MdR"] == 1.0


def test_ties_count_against_the_query() -> None:
    # Ground truth tied with two other candidates: rank is 2 (both count as better), not 0.
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.1], [0.9, 0.2, 0.2, 0.2], [0.3, 0.3, 0.7, 0.3]])
    target = torch.tensor([1, 1, 2])
    assert pessimistic_ranks(scores, target).tolist() == [2, 3, 0]


def test_constant_similarity_gives_the_worst_rank_not_the_best() -> None:
    n = 6
    m = retrieval_metrics(matrix_blocks(torch.ones(n, n)), _one_caption_each(n), n)
    assert m["t2v/R1"] == 0.0
    assert m["v2t/R1"] == 0.0
    assert m["t2v/MdR"] == n
    assert m["v2t/MnR"] == n


def test_nan_scores_are_rejected() -> None:
    sim = torch.eye(3)
    sim[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(matrix_blocks(sim), _one_caption_each(3), 3)


def test_multi_caption_grouping_follows_the_max_over_each_videos_captions() -> None:
    # 3 videos; captions 0,1 -> video 0; 2 -> video 1; 3,4,5 -> video 2.
    text_to_video = torch.tensor([0, 0, 1, 2, 2, 2])
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.0],  # t2v rank 0
            [0.2, 0.8, 0.1],  # t2v rank 1
            [0.1, 0.7, 0.9],  # t2v rank 1
            [0.0, 0.0, 0.6],  # t2v rank 0
            [0.5, 0.0, 0.1],  # t2v rank 1
            [0.4, 0.3, 0.2],  # t2v rank 2
        ]
    )
    t2v, v2t = retrieval_ranks(matrix_blocks(sim), text_to_video, 3)
    assert t2v.tolist() == [0, 1, 1, 0, 1, 2]
    # Group scores for query video v: group u scores max_{c of u} sim[c, v].
    # v=0: groups (0.9, 0.1, 0.5) -> rank 0; v=1: (0.8, 0.7, 0.3) -> rank 1 (0.8 > 0.7);
    # v=2: (0.1, 0.9, 0.6) -> rank 1 (0.9 > 0.6).
    assert v2t.tolist() == [0, 1, 1]


def test_single_caption_v2t_equals_ranking_the_transposed_matrix() -> None:
    gen = torch.Generator().manual_seed(0)
    sim = torch.randn(30, 30, generator=gen)
    _, v2t = retrieval_ranks(matrix_blocks(sim), _one_caption_each(30), 30)
    assert v2t.tolist() == pessimistic_ranks(sim.T, torch.arange(30)).tolist()


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunked_metrics_equal_the_full_matrix(chunk_size: int) -> None:
    gen = torch.Generator().manual_seed(1)
    text_to_video = torch.randint(0, 20, (80,), generator=gen)
    text_to_video[:20] = torch.arange(20)  # every video has a caption
    sim = torch.randn(80, 20, generator=gen).round(decimals=1)  # rounding makes ties
    full = retrieval_metrics(matrix_blocks(sim), text_to_video, 20, chunk_size=10_000)
    chunked = retrieval_metrics(matrix_blocks(sim), text_to_video, 20, chunk_size=chunk_size)
    assert chunked == full
    dsl_full = dual_softmax_metrics(matrix_blocks(sim), text_to_video, 20, chunk_size=10_000)
    dsl_chunked = dual_softmax_metrics(matrix_blocks(sim), text_to_video, 20, chunk_size=chunk_size)
    assert dsl_chunked == pytest.approx(dsl_full)


def test_dual_softmax_metrics_are_labelled_apart_from_the_plain_ones() -> None:
    sim = torch.eye(4) + 0.01
    plain = retrieval_metrics(matrix_blocks(sim), _one_caption_each(4), 4)
    dsl = dual_softmax_metrics(matrix_blocks(sim), _one_caption_each(4), 4)
    assert set(dsl) == {f"dsl/{k}" for k in plain}
    assert not set(dsl) & set(plain)


def test_dual_softmax_uses_the_video_side_prior() -> None:
    # Video 0 is a "hub" that every caption likes; DSL demotes it for captions that are not its own.
    sim = torch.tensor([[0.9, 0.0, 0.0], [0.8, 0.7, 0.0], [0.8, 0.0, 0.7]])
    plain = retrieval_metrics(matrix_blocks(sim), _one_caption_each(3), 3)
    dsl = dual_softmax_metrics(matrix_blocks(sim), _one_caption_each(3), 3, temperature=100.0)
    assert plain["t2v/R1"] == pytest.approx(100 / 3)
    assert dsl["dsl/t2v/R1"] == 100.0


def test_a_video_without_captions_is_reported() -> None:
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(matrix_blocks(torch.eye(3)[:2]), torch.tensor([0, 1]), 3)


def test_a_block_of_the_wrong_shape_is_reported() -> None:
    with pytest.raises(ValueError, match="expected"):
        retrieval_metrics(lambda a, b: torch.zeros(b - a, 2), torch.tensor([0, 1, 2]), 3)
