"""The synthetic dataset: real files, determinism, reuse, and classes defined by frame order."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from PIL import Image

from s4v_data import DATASETS, read_labels, read_rawframe_list, read_video_list
from s4v_data.decode import decode_video
from s4v_data.sampling import ClipPlan
from s4v_data.synthetic import (
    CLASS_NAMES,
    COLOURS,
    DIRECTION_PAIRS,
    SHAPES,
    generate,
    render_video,
    sample_params,
)

SMALL = dict(videos_per_class=2, num_frames=6, size=18, val_fraction=0.5)


def _files(root) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_lists_and_labels(tiny_synthetic) -> None:
    info = tiny_synthetic
    assert read_labels(info.labels_csv) == list(CLASS_NAMES)
    train, val = read_rawframe_list(info.train_list), read_rawframe_list(info.val_list)
    assert (len(train), len(val)) == (16, 8)
    for record in train + val:
        frames = sorted((info.root / record.path).iterdir())
        assert record.num_frames == len(frames) == 12
        assert frames[0].name == info.frame_template.format(1)
        assert Image.open(frames[0]).size == (32, 32)
    videos = read_video_list(info.train_video_list)
    assert [v.label for v in videos] == [r.label for r in train]
    assert all((info.root / v.path).suffix == ".mp4" for v in videos)
    assert info.direction_pairs == DIRECTION_PAIRS
    assert DATASETS["synthetic"].num_classes == info.num_classes == len(CLASS_NAMES)
    assert DATASETS["synthetic"].frame_template == info.frame_template


def test_videos_are_real_h264_that_decord_reads(tiny_synthetic) -> None:
    import av

    path = tiny_synthetic.root / read_video_list(tiny_synthetic.val_video_list)[0].path
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    import decord

    assert len(decord.VideoReader(str(path))) == 12
    frames, positions = decode_video(path, ClipPlan(family="sth", mode="val", num_frames=12))
    assert frames[positions[0]].shape == (12, 3, 32, 32)


def test_same_seed_gives_identical_frames_and_other_seed_differs(tmp_path) -> None:
    """Frames, lists and labels are byte-identical; x264's MP4 bytes are not reproducible here
    (two encodings of the same frames differ now and then), so the videos are compared by
    their frame count and size."""
    a = generate(tmp_path / "a", seed=3, **SMALL)
    b = generate(tmp_path / "b", seed=3, **SMALL)
    c = generate(tmp_path / "c", seed=4, **SMALL)
    files_a, files_b, files_c = (_files(info.root) for info in (a, b, c))
    assert files_a.keys() == files_b.keys() == files_c.keys()
    videos = [k for k in files_a if k.endswith(".mp4")]
    assert len(videos) == 16
    assert {k: v for k, v in files_a.items() if k not in videos} == {
        k: v for k, v in files_b.items() if k not in videos
    }
    for name in videos:
        with av.open(str(b.root / name)) as container:
            shapes = [f.to_ndarray(format="rgb24").shape for f in container.decode(video=0)]
        assert shapes == [(SMALL["size"], SMALL["size"], 3)] * SMALL["num_frames"], name
    assert any(files_a[k] != files_c[k] for k in files_a if k.endswith(".jpg"))


def test_existing_dataset_is_reused_and_never_replaced(tmp_path) -> None:
    info = generate(tmp_path / "syn", seed=0, **SMALL)
    marker = info.root / "synthetic.json"
    stamp = marker.stat().st_mtime_ns
    assert generate(tmp_path / "syn", seed=0, **SMALL) == info
    assert marker.stat().st_mtime_ns == stamp  # not rewritten
    (info.root / "NOTES.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="other parameters: num_frames 6, not 8"):
        generate(tmp_path / "syn", seed=0, **{**SMALL, "num_frames": 8})
    assert (info.root / "NOTES.txt").read_text() == "keep me"
    assert read_rawframe_list(info.train_list)[0].num_frames == SMALL["num_frames"]
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]  # no temporary folder left behind


def test_a_foreign_folder_is_never_overwritten(tmp_path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        generate(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(("size", "frames"), [(15, 8), (8, 8), (32, 1), (24, 4)])
def test_bad_sizes_are_refused(tmp_path, size, frames) -> None:
    # 24: decord 0.6.0 cannot decode H.264 of that width, so the generator refuses it
    with pytest.raises(ValueError, match=r"size|num_frames|decord cannot decode"):
        generate(tmp_path / "x", size=size, num_frames=frames, videos_per_class=2, val_fraction=0.5)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("seed", range(5))
def test_reversing_a_video_gives_exactly_its_partner_class(seed) -> None:
    params = sample_params(np.random.default_rng(seed))
    for a, b in DIRECTION_PAIRS:
        forward = render_video(a, params, num_frames=10, size=24)
        backward = render_video(b, params, num_frames=10, size=24)
        assert np.array_equal(forward[::-1], backward)
        assert not np.array_equal(forward, backward)  # the pair differs only in direction


def _motion_statistic(frames: np.ndarray, class_id: int) -> float:
    """Signed direction of the object's motion, positive for the even class of each pair."""
    frames = frames.astype(np.float64)
    background = np.median(frames.reshape(len(frames), -1, 3), axis=1)[:, None, None]
    mask = np.abs(frames - background).max(axis=-1) > 40  # (F, H, W) object pixels
    ys, xs = np.mgrid[: mask.shape[1], : mask.shape[2]]
    area = mask.sum(axis=(1, 2))
    cx = (mask * xs).sum(axis=(1, 2)) / np.maximum(area, 1)
    cy = (mask * ys).sum(axis=(1, 2)) / np.maximum(area, 1)
    motion = CLASS_NAMES[class_id]
    if "left" in motion:
        return cx[-1] - cx[0]
    if "top" in motion:
        return cy[-1] - cy[0]
    if "circling" in motion:
        # z of the cross product of successive positions around the centre: > 0 is clockwise
        # in image coordinates (y down).
        px, py = cx - mask.shape[2] / 2, cy - mask.shape[1] / 2
        return float(np.sum(px[:-1] * py[1:] - py[:-1] * px[1:]))
    return float(area[-1] - area[0])


def test_decoded_videos_move_in_their_class_direction_and_reverse_to_the_partner(
    tiny_synthetic,
) -> None:
    partner = {a: b for pair in DIRECTION_PAIRS for a, b in (pair, pair[::-1])}
    plan = ClipPlan(family="sth", mode="val", num_frames=12)
    for record in read_video_list(tiny_synthetic.val_video_list):
        frames, positions = decode_video(tiny_synthetic.root / record.path, plan)
        clip = frames[positions[0]].permute(0, 2, 3, 1).numpy()  # (T, H, W, 3)
        sign = 1 if record.label % 2 == 0 else -1
        assert sign * _motion_statistic(clip, record.label) > 0, record.path
        # played backwards it moves like its partner class
        reverse = clip[::-1]
        partner_sign = 1 if partner[record.label] % 2 == 0 else -1
        assert partner_sign * _motion_statistic(reverse, partner[record.label]) > 0


def test_captions_describe_colour_shape_and_cover_both_splits(tiny_synthetic) -> None:
    info = tiny_synthetic
    captions = json.loads(info.captions_json.read_text())
    train_ids = info.train_ids.read_text().split()
    val_ids = info.val_ids.read_text().split()
    assert sorted(train_ids + val_ids) == sorted(captions)
    assert not set(train_ids) & set(val_ids)
    for texts in captions.values():
        assert len(texts) >= 2
        for text in texts:
            assert any(colour in text for colour in COLOURS), text
            assert any(shape in text for shape in SHAPES), text
    # the objects vary, so captions are informative
    assert len({texts[0] for texts in captions.values()}) > len(CLASS_NAMES)
