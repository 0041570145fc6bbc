"""Retrieval annotation layouts (MSR-VTT, MSVD, VATEX) parse small files written here, and the
retrieval frame samplers follow strategies 1, 3 and 4 of ``RawFramesExtractorCV2`` in the reference's
``Retrieval/dataloaders/rawframes_util.py`` (github.com/HJYao00/Side4Video @ 5d72352)."""

from __future__ import annotations

import json
import os
import pickle
import random
from collections import OrderedDict
from pathlib import Path

import pytest

from s4v_data.retrieval import (
    AnnotationError,
    CaptionedVideos,
    load_plain_pickle,
    random_segment_indices,
    read_msrvtt,
    read_msvd,
    read_vatex,
    sample_retrieval_indices,
    segment_centre_indices,
    uniform_stride_indices,
)
from s4v_data.specs import RETRIEVAL_LAYOUTS


def _write_msrvtt(root: Path) -> None:
    sentences = [
        {"video_id": "video7", "caption": "a man cooks", "sen_id": 0},
        {"video_id": "video3", "caption": "a cat sleeps", "sen_id": 1},
        {"video_id": "video7", "caption": "someone fries eggs", "sen_id": 2},
        {"video_id": "video9", "caption": "a car drives", "sen_id": 3},
    ]
    videos = [{"video_id": v, "url": f"http://x/{v}"} for v in ("video3", "video7", "video9")]
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))
    (root / "MSRVTT_train.9k.csv").write_text("video_id\nvideo7\nvideo3\n")
    (root / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\n"
        "ret0,msr9,video9,a car drives fast\n"
        "ret1,msr3,video3,a cat is sleeping\n"
    )


def test_msrvtt_train_takes_every_caption_of_the_listed_videos(tmp_path: Path) -> None:
    _write_msrvtt(tmp_path)
    train = read_msrvtt(tmp_path, "train")
    assert train.video_ids == ("video7", "video3")
    assert train.captions == (("a man cooks", "someone fries eggs"), ("a cat sleeps",))
    assert train.pairs() == [(0, "a man cooks"), (0, "someone fries eggs"), (1, "a cat sleeps")]
    assert train.text_to_video() == [0, 0, 1]


def test_msrvtt_test_is_the_jsfusion_file_with_one_caption_per_video(tmp_path: Path) -> None:
    _write_msrvtt(tmp_path)
    for split in ("val", "test"):
        test = read_msrvtt(tmp_path, split)
        assert test.video_ids == ("video9", "video3")
        assert test.captions == (("a car drives fast",), ("a cat is sleeping",))
        assert not test.multi_caption


def test_msrvtt_errors_name_the_file_and_line(tmp_path: Path) -> None:
    _write_msrvtt(tmp_path)
    (tmp_path / "MSRVTT_train.9k.csv").write_text("video_id\nvideo7\nvideo404\n")
    with pytest.raises(AnnotationError, match=r"MSRVTT_train\.9k\.csv:3: video 'video404'"):
        read_msrvtt(tmp_path, "train")
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text("key,video_id\nret0,video9\n")
    with pytest.raises(
        AnnotationError, match=r"JSFUSION_test\.csv:1: missing column\(s\) sentence"
    ):
        read_msrvtt(tmp_path, "test")


def _write_msvd(root: Path, captions: object) -> None:
    (root / "train_list.txt").write_text("vidA\n\nvidB\n")
    (root / "test_list.txt").write_text("vidC\n")
    with (root / "raw-captions.pkl").open("wb") as handle:
        pickle.dump(captions, handle, protocol=2)


def test_msvd_joins_caption_tokens_and_keeps_every_caption(tmp_path: Path) -> None:
    _write_msvd(
        tmp_path,
        {
            "vidA": [["a", "dog", "runs"], ["the", "dog", "is", "running"]],
            "vidB": [["a", "bird"]],
            "vidC": [["rain", "falls"], ["it", "rains"], ["wet", "street"]],
        },
    )
    train = read_msvd(tmp_path, "train")
    assert train.video_ids == ("vidA", "vidB")
    assert train.captions[0] == ("a dog runs", "the dog is running")
    test = read_msvd(tmp_path, "test")
    assert test.multi_caption and test.num_captions == 3


def test_msvd_list_id_without_captions_names_the_list_line(tmp_path: Path) -> None:
    _write_msvd(tmp_path, {"vidA": [["a"]]})
    with pytest.raises(AnnotationError, match=r"train_list\.txt:3: video 'vidB' has no caption"):
        read_msvd(tmp_path, "train")


class _Payload:
    """Stands for anything a malicious pickle could name; unpickling must never build it."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_caption_pickles_refuse_anything_but_builtin_containers(tmp_path: Path) -> None:
    path = tmp_path / "raw-captions.pkl"
    path.write_bytes(pickle.dumps({"vidA": [_Payload()]}))
    with pytest.raises(AnnotationError, match=r"refusing to unpickle (posix|nt)\.system"):
        load_plain_pickle(path)
    path.write_bytes(pickle.dumps(OrderedDict(vid=[["ok"]]), protocol=2))
    assert load_plain_pickle(path) == {"vid": [["ok"]]}
    path.write_bytes(b"not a pickle")
    with pytest.raises(AnnotationError, match="not a readable pickle"):
        load_plain_pickle(path)


def test_vatex_reads_english_captions_for_the_split(tmp_path: Path) -> None:
    (tmp_path / "val_list.txt").write_text("v1\nv2\n")
    data = {
        "v1": {"enCap": ["A boy jumps.", "A kid leaps."], "chCap": ["..."]},
        "v2": {"enCap": ["Snow falls."]},
        "v3": {"enCap": ["unused"]},
    }
    (tmp_path / "vatex_data.json").write_text(json.dumps(data))
    val = read_vatex(tmp_path, "val")
    assert val == CaptionedVideos(
        video_ids=("v1", "v2"), captions=(("A boy jumps.", "A kid leaps."), ("Snow falls.",))
    )


def test_vatex_bad_json_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "val_list.txt").write_text("v1\n")
    (tmp_path / "vatex_data.json").write_text('{\n"v1": {"enCap": [}\n}')
    with pytest.raises(AnnotationError, match=r"vatex_data\.json:2: not valid JSON"):
        read_vatex(tmp_path, "val")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"test_list\.txt: file not found"):
        read_vatex(tmp_path, "test")


def test_layouts_cover_the_three_benchmarks_with_their_test_sampling() -> None:
    assert RETRIEVAL_LAYOUTS["msrvtt"].test_sampling == "uniform-stride"
    assert RETRIEVAL_LAYOUTS["msvd"].test_sampling == "uniform-stride"
    assert RETRIEVAL_LAYOUTS["vatex"].test_sampling == "segment-centre"


def test_random_segment_picks_one_frame_inside_each_segment() -> None:
    rng = random.Random(0)
    for _ in range(20):
        idx = random_segment_indices(100, 12, rng)  # segments of 8 frames; 96..99 never used
        assert len(idx) == 12
        assert all(8 * i <= f < 8 * (i + 1) for i, f in enumerate(idx))


def test_uniform_stride_takes_every_kth_frame_then_thins_evenly() -> None:
    # 30 frames, T=12: stride 2 -> 0, 2, ..., 28 (15 frames) -> 12 of them by linspace (floored).
    assert uniform_stride_indices(30, 12) == [0, 2, 4, 6, 10, 12, 14, 16, 20, 22, 24, 28]
    assert uniform_stride_indices(24, 12) == list(range(0, 24, 2))


def test_segment_centres() -> None:
    assert segment_centre_indices(120, 12) == list(range(5, 120, 10))


@pytest.mark.parametrize("strategy", ["random-segment", "uniform-stride", "segment-centre"])
def test_short_videos_repeat_frames_evenly_and_every_clip_has_t_frames(strategy: str) -> None:
    idx = sample_retrieval_indices(strategy, 5, 12, random.Random(0))
    assert len(idx) == 12
    assert idx == sorted(idx)
    assert set(idx) == set(range(5))


def test_unknown_sampling_is_reported() -> None:
    with pytest.raises(ValueError, match="unknown sampling"):
        sample_retrieval_indices("dense", 10, 4)
