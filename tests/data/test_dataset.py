"""VideoClipDataset and make_loader on real JPEG folders and real H.264 files."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch

from s4v_data import (
    DATASETS,
    AnnotationError,
    ClipPlan,
    DecodeError,
    IsolatedVideoReader,
    VideoClipDataset,
    decode_video,
    make_loader,
)

SPEC = DATASETS["synthetic"]


def _dataset(info, *, source="rawframes", split="train", **kwargs) -> VideoClipDataset:
    lists = {
        ("rawframes", "train"): info.train_list,
        ("rawframes", "val"): info.val_list,
        ("video", "train"): info.train_video_list,
        ("video", "val"): info.val_video_list,
    }
    kwargs.setdefault("mode", "train")
    return VideoClipDataset(
        lists[source, split], info.root, spec=SPEC, num_frames=8, input_size=24, source=source,
        **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("source", ["rawframes", "video"])
def test_item_shapes_per_mode(tiny_synthetic, source) -> None:
    torch.manual_seed(0)
    train = _dataset(tiny_synthetic, source=source)
    clip, label = train[0]
    assert clip.shape == (8, 3, 24, 24) and clip.dtype == torch.float32
    assert isinstance(label, int)
    repeated = _dataset(tiny_synthetic, source=source, num_sample=2)
    clips, labels = repeated[0]
    assert clips.shape == (2, 8, 3, 24, 24) and labels.shape == (2,)
    val = _dataset(tiny_synthetic, source=source, split="val", mode="val")
    assert val[0][0].shape == (8, 3, 24, 24)
    test = _dataset(
        tiny_synthetic, source=source, split="val", mode="test", test_crops=3, test_clips=2
    )
    assert test[0][0].shape == (6, 8, 3, 24, 24)
    assert test.views == 6


def test_rawframes_and_video_give_the_same_val_clip(tiny_synthetic) -> None:
    frames = _dataset(tiny_synthetic, split="val", mode="val")
    video = _dataset(tiny_synthetic, source="video", split="val", mode="val")
    for index in range(len(frames)):
        a, label_a = frames[index]
        b, label_b = video[index]
        assert label_a == label_b
        # JPEG q95 vs H.264 crf 17 of the same rendered frames: small differences only
        assert (a - b).abs().mean() < 0.1, index


def test_loader_flattens_repeated_augmentation_and_keeps_test_views(tiny_synthetic) -> None:
    train = make_loader(_dataset(tiny_synthetic, num_sample=2), batch_size=4, shuffle=True)
    clips, labels = next(iter(train))
    assert clips.shape == (8, 8, 3, 24, 24) and labels.shape == (8,)
    test = _dataset(tiny_synthetic, split="val", mode="test", test_crops=3, test_clips=2)
    clips, labels = next(iter(make_loader(test, batch_size=2, shuffle=False)))
    assert clips.shape == (2, 6, 8, 3, 24, 24) and labels.shape == (2,)


def test_seeded_workers_make_epochs_reproducible(tiny_synthetic) -> None:
    def epoch(seed: int) -> list[torch.Tensor]:
        loader = make_loader(
            _dataset(tiny_synthetic), batch_size=4, shuffle=True, num_workers=2, seed=seed
        )
        return [clips for clips, _ in loader]

    first, again, other = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_labels_outside_the_classes_are_refused(tiny_synthetic, tmp_path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("rawframes/vid_00_0000 12 0\nrawframes/vid_01_0000 12 9\n")
    with pytest.raises(AnnotationError, match=r"bad.txt: 1 of 2 .* outside 0..7"):
        VideoClipDataset(
            bad, tiny_synthetic.root, spec=SPEC, num_frames=8, mode="val", input_size=24
        )


def test_short_entries_are_dropped_from_training_only(tiny_synthetic, tmp_path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("rawframes/vid_00_0000 12 0\nrawframes/vid_01_0000 5 1\n")
    args = dict(spec=SPEC, num_frames=8, input_size=24)
    assert len(VideoClipDataset(short, tiny_synthetic.root, mode="train", **args)) == 1
    assert len(VideoClipDataset(short, tiny_synthetic.root, mode="val", **args)) == 2
    assert len(VideoClipDataset(short, tiny_synthetic.root, mode="test", **args)) == 2


def test_missing_frame_folder_raises_decode_error_naming_it(tiny_synthetic, tmp_path) -> None:
    lst = tmp_path / "missing.txt"
    lst.write_text("rawframes/does_not_exist 12 0\n")
    dataset = VideoClipDataset(
        lst, tiny_synthetic.root, spec=SPEC, num_frames=8, mode="val", input_size=24
    )
    with pytest.raises(DecodeError, match="does_not_exist"):
        dataset[0]


def _with_truncated_video(info, tmp_path):
    """A copy of the val videos where the first file is cut in half."""
    root = tmp_path / "root"
    shutil.copytree(info.root / "videos", root / "videos")
    lines = info.val_video_list.read_text().splitlines()
    broken = root / lines[0].split()[0]
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    lst = root / "val_videos.txt"
    lst.write_text("\n".join(lines) + "\n")
    return root, lst, broken


@pytest.mark.parametrize("isolate", [True, False])
def test_truncated_video_raises_decode_error_naming_the_file(
    tiny_synthetic, tmp_path, isolate
) -> None:
    root, lst, broken = _with_truncated_video(tiny_synthetic, tmp_path)
    dataset = VideoClipDataset(
        lst, root, spec=SPEC, num_frames=8, mode="val", input_size=24, source="video",
        isolate_decoding=isolate,
    )  # fmt: skip
    with pytest.raises(DecodeError, match=broken.name):
        dataset[0]
    assert dataset[1][0].shape == (8, 3, 24, 24)  # the next video still decodes


def test_loader_skips_and_reports_a_truncated_video(tiny_synthetic, tmp_path, caplog) -> None:
    root, lst, broken = _with_truncated_video(tiny_synthetic, tmp_path)
    dataset = VideoClipDataset(
        lst, root, spec=SPEC, num_frames=8, mode="val", input_size=24, source="video"
    )
    assert broken.name in lst.read_text().splitlines()[0]
    loader = make_loader(dataset, batch_size=len(dataset), shuffle=False, num_workers=2)
    with caplog.at_level(logging.WARNING):
        clips, _ = next(iter(loader))
    assert clips.shape[0] == len(dataset)  # the bad video was replaced, the batch is full
    assert loader.dataset.num_skipped == 1


def test_isolated_reader_times_out_on_a_hanging_file_and_recovers(tiny_synthetic, tmp_path) -> None:
    fifo = tmp_path / "hangs.mp4"
    os.mkfifo(fifo)  # opening a FIFO without a writer blocks inside decord/FFmpeg
    reader = IsolatedVideoReader(timeout=2.0)
    plan = ClipPlan(family="sth", mode="val", num_frames=4)
    with pytest.raises(DecodeError, match=r"hangs.mp4: decoding timed out after 2 s"):
        reader.decode(fifo, plan)
    good = tiny_synthetic.root / tiny_synthetic.val_video_list.read_text().split()[0]
    frames, positions = reader.decode(good, plan)
    expected, _ = decode_video(good, plan)
    assert torch.equal(frames, expected)  # same bytes as decoding in this process
    assert len(positions[0]) == 4
    reader.close()


def test_isolated_reader_reports_a_killed_helper(tiny_synthetic) -> None:
    reader = IsolatedVideoReader(timeout=10.0)
    plan = ClipPlan(family="sth", mode="val", num_frames=4)
    good = tiny_synthetic.root / tiny_synthetic.val_video_list.read_text().split()[0]
    reader.decode(good, plan)
    reader._helper._proc.kill()  # stands in for a segfault inside decord
    reader._helper._proc.wait()
    with pytest.raises(DecodeError, match="decoder process died"):
        reader.decode(good, plan)
    assert reader.decode(good, plan)[0].shape[0] == 4  # a fresh helper takes over
    reader.close()
