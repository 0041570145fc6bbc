"""Retrieval datasets: the captioned synthetic set and a CLIP4Clip rawframe layout, both sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from s4v_data.retrieval import read_msrvtt, read_synthetic
from s4v_data.retrieval_dataset import RetrievalClipPlan, RetrievalVideos, VideoTextPairs
from s4v_data.specs import RETRIEVAL_LAYOUTS

SYNTHETIC = RETRIEVAL_LAYOUTS["synthetic"]


def _fake_tokenize(captions: list[str]) -> torch.Tensor:
    return torch.tensor([[len(c), len(c.split())] for c in captions])


def test_synthetic_splits_carry_the_generated_captions(tiny_synthetic) -> None:
    root = tiny_synthetic.root
    train, val = read_synthetic(root, "train"), read_synthetic(root, "val")
    captions = json.loads((root / "captions.json").read_text())
    assert (train.num_videos, val.num_videos) == (16, 8)
    assert read_synthetic(root, "test") == val
    assert all(list(c) == captions[v] for v, c in zip(val.video_ids, val.captions, strict=True))
    assert train.num_captions == 3 * 16 and val.multi_caption


def test_training_pairs_cover_every_caption_with_a_normalised_clip(tiny_synthetic) -> None:
    root = tiny_synthetic.root
    annotations = read_synthetic(root, "train")
    pairs = VideoTextPairs(
        annotations,
        SYNTHETIC,
        root,
        "train",
        num_frames=4,
        input_size=24,
        tokenize=_fake_tokenize,
    )
    assert len(pairs) == annotations.num_captions
    clip, tokens = pairs[4]  # video 1, caption 1
    assert clip.shape == (4, 3, 24, 24) and clip.dtype == torch.float32
    assert tokens.tolist() == _fake_tokenize([annotations.captions[1][1]])[0].tolist()
    clips, token_batch = next(iter(DataLoader(pairs, batch_size=5)))
    assert clips.shape == (5, 4, 3, 24, 24) and token_batch.shape == (5, 2)


def test_random_caption_mode_gives_one_sample_per_video(tiny_synthetic) -> None:
    root = tiny_synthetic.root
    annotations = read_synthetic(root, "train")
    pairs = VideoTextPairs(
        annotations,
        SYNTHETIC,
        root,
        "train",
        num_frames=4,
        input_size=24,
        captions="random-caption",
    )
    assert len(pairs) == annotations.num_videos
    torch.manual_seed(0)
    seen = {pairs[2][1] for _ in range(12)}
    assert seen <= set(annotations.captions[2]) and len(seen) > 1


def test_evaluation_videos_are_deterministic_and_decode_alike_from_frames_and_mp4(
    tiny_synthetic,
) -> None:
    root = tiny_synthetic.root
    val = read_synthetic(root, "val")
    common = dict(num_frames=6, input_size=32)
    from_jpeg = RetrievalVideos(val, SYNTHETIC, root, "val", **common)
    from_mp4 = RetrievalVideos(val, SYNTHETIC, root, "val", source="video", **common)
    clip, index = from_jpeg[3]
    assert index == 3 and clip.shape == (6, 3, 32, 32)
    torch.testing.assert_close(from_jpeg[3][0], clip)
    # JPEG and H.264 compress differently; the same frames must still agree closely.
    assert (from_mp4[3][0] - clip).abs().mean() < 0.1


def test_train_sampling_draws_one_frame_per_segment() -> None:
    plan = RetrievalClipPlan(strategy="random-segment", num_frames=4, seed=3)
    (indices,) = plan.indices(16)
    assert [i // 4 for i in indices] == [0, 1, 2, 3]
    assert plan.indices(16) == [indices]  # the seed fixes the draw


def _write_frames(folder: Path, count: int, value: int) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        image = np.full((20, 30, 3), value + i, dtype=np.uint8)
        Image.fromarray(image).save(folder / f"img_{i + 1:05d}.jpg", quality=100)


def test_msrvtt_rawframe_layout_with_short_videos(tmp_path: Path) -> None:
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nret0,msr1,video1,a dog\nret1,msr2,video2,a cat\n"
    )
    frames = tmp_path / "frames"
    _write_frames(frames / "video1", 30, 10)
    _write_frames(frames / "video2", 5, 100)  # fewer frames than T: evenly repeated
    test = read_msrvtt(tmp_path, "test")
    videos = RetrievalVideos(
        test,
        RETRIEVAL_LAYOUTS["msrvtt"],
        frames,
        "test",
        num_frames=12,
        input_size=16,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    clip, _ = videos[0]
    assert clip.shape == (12, 3, 16, 16)
    # uniform-stride on 30 frames: 0, 2, 4, 6, 10, ...; pixel value = 10 + frame index.
    levels = (clip[:, 0, 8, 8] * 255).round().tolist()
    assert levels[:5] == pytest.approx([10, 12, 14, 16, 20], abs=1.5)
    short, _ = videos[1]
    assert short.shape == (12, 3, 16, 16)
    with pytest.raises(ValueError, match="deterministic"):
        RetrievalVideos(
            test,
            RETRIEVAL_LAYOUTS["msrvtt"],
            frames,
            "test",
            num_frames=12,
            input_size=16,
            sampling="random-segment",
        )
