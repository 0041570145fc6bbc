"""decord and PyAV behind one reader interface: same counts, same frames, same clips.

decord's wheels exist only for Linux x86_64 and Windows, so elsewhere PyAV decodes. Both use
FFmpeg's H.264 decoder and its YUV->RGB conversion, so on the synthetic MP4s every frame is
bit-identical (measured on all 24 videos of the tiny dataset: maximum difference 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s4v_data import VideoClipDataset, default_backend, open_reader, read_video_list
from s4v_data.decode import DecodeError, IsolatedVideoReader, decode_video
from s4v_data.extract import ExtractConfig, extract_video
from s4v_data.sampling import ClipPlan
from s4v_data.specs import DATASETS

decord = pytest.importorskip("decord")  # the comparison needs both backends installed


@pytest.fixture(scope="module")
def video_path(tiny_synthetic):
    return tiny_synthetic.root / read_video_list(tiny_synthetic.val_video_list)[0].path


def test_default_backend_is_decord_where_it_is_installed() -> None:
    assert default_backend() == "decord"


def test_both_backends_count_the_same_frames_and_fps(tiny_synthetic) -> None:
    for record in read_video_list(tiny_synthetic.val_video_list):
        path = tiny_synthetic.root / record.path
        a, b = open_reader(path, backend="decord"), open_reader(path, backend="pyav")
        assert len(a) == len(b) == 12
        assert a.fps == pytest.approx(b.fps)


def test_both_backends_decode_the_same_frames(video_path) -> None:
    indices = [0, 5, 5, 11, 3]  # unsorted, with a repeat: get_batch keeps the order asked for
    a = open_reader(video_path, backend="decord").get_batch(indices)
    b = open_reader(video_path, backend="pyav").get_batch(indices)
    assert a.shape == b.shape == (5, 32, 32, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(b[0], b[3])  # different frames really differ (the clip moves)


def test_pyav_reader_streams_sorted_indices_and_refuses_frames_past_the_end(video_path) -> None:
    reader = open_reader(video_path, backend="pyav")
    streamed = np.stack(list(reader.iter_frames([1, 2, 2, 9])))
    assert np.array_equal(streamed, reader.get_batch([1, 2, 2, 9]))
    with pytest.raises(RuntimeError, match="past the last decodable frame"):
        list(reader.iter_frames([3, 12]))


def test_decode_video_and_the_helper_give_the_same_clip_with_pyav(video_path) -> None:
    plan = ClipPlan(family="sth", mode="val", num_frames=8)
    frames_d, pos_d = decode_video(video_path, plan, backend="decord")
    frames_p, pos_p = decode_video(video_path, plan, backend="pyav")
    assert pos_d == pos_p
    assert torch.equal(frames_d, frames_p)
    reader = IsolatedVideoReader(timeout=20, backend="pyav")
    try:
        isolated, positions = reader.decode(video_path, plan)
    finally:
        reader.close()
    assert positions == pos_p and torch.equal(isolated, frames_p)


def test_pyav_names_an_unreadable_file(tmp_path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    plan = ClipPlan(family="sth", mode="val", num_frames=4)
    with pytest.raises(DecodeError, match=r"broken\.mp4"):
        decode_video(broken, plan, backend="pyav")


def test_unknown_backend_is_refused(video_path) -> None:
    with pytest.raises(ValueError, match="unknown video backend 'torchcodec'"):
        open_reader(video_path, backend="torchcodec")


def test_dataset_val_clip_agrees_across_backends(tiny_synthetic) -> None:
    def clip(backend: str) -> torch.Tensor:
        dataset = VideoClipDataset(
            tiny_synthetic.val_video_list,
            tiny_synthetic.root,
            spec=DATASETS["synthetic"],
            num_frames=8,
            mode="val",
            input_size=28,
            source="video",
            isolate_decoding=False,
            video_backend=backend,
        )
        return dataset[0][0]

    assert torch.equal(clip("decord"), clip("pyav"))


def test_extraction_with_pyav_matches_decord_counts(video_path, tmp_path) -> None:
    counts = {}
    for backend in ("decord", "pyav"):
        config = ExtractConfig(short_side=None, backend=backend)
        assert config.cache_key()["extractor"].startswith(backend)
        counts[backend] = extract_video(video_path, tmp_path / backend / "v", config, tmp_path)
        assert len(list((tmp_path / backend / "v").iterdir())) == counts[backend]
    assert counts["decord"] == counts["pyav"] == 12
