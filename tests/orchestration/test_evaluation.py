"""Multi-view evaluation: view shapes and softmax averaging through the real dataset and model."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from s4v_data.annotations import read_rawframe_list, write_rawframe_list
from s4v_data.files import DataError
from s4v_data.synthetic import FRAME_TEMPLATE
from s4v_orchestration.runtime import DistEnv
from s4v_orchestration.tasks import RunContext
from s4v_orchestration.tasks.recognition import RecognitionTask


def test_multi_view_scores_average_the_softmax_of_every_view(tiny_config) -> None:
    config = tiny_config("views", **{"eval.test_crops": 3, "eval.test_clips": 2}).with_defaults()
    task = RecognitionTask()
    parts = task.build(config, with_train_data=False)
    model = parts.model.eval()
    dataset = task._dataset(config, "test", "test", num_classes=8)
    views, label = dataset[0]
    assert views.shape == (6, config.data.num_frames, 3, 32, 32)  # 3 crops x 2 clips

    run = RunContext(config=config, parts=parts, device=torch.device("cpu"), env=DistEnv())
    scores, labels, unreadable = task.predict(
        model, task.eval_loader(dataset, run), run, description="test"
    )
    assert unreadable == 0
    assert scores.shape == (len(dataset), 8)
    assert labels.tolist() == [r.label for r in dataset.records]
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(len(dataset)))
    with torch.no_grad():
        expected = model(views).softmax(dim=-1).mean(dim=0)  # each view is its own forward
    torch.testing.assert_close(scores[0], expected, atol=1e-5, rtol=1e-4)
    assert labels[0] == label


@pytest.fixture
def damaged_root(synthetic_root, tmp_path) -> Path:
    """A copy of the session's synthetic set whose first validation video has a zero-byte frame."""
    root = tmp_path / "damaged"
    shutil.copytree(synthetic_root, root)
    first = read_rawframe_list(root / "val_rawframes.txt")[0]
    (root / first.path / FRAME_TEMPLATE.format(1)).write_bytes(b"")
    return root


def _val_run(config) -> tuple[RecognitionTask, RunContext]:
    task = RecognitionTask()
    parts = task.build(config.with_defaults(), with_train_data=False)
    run = RunContext(
        config=config.with_defaults(), parts=parts, device=torch.device("cpu"), env=DistEnv()
    )
    return task, run


def test_an_unreadable_video_is_left_out_counted_and_never_replaced(tiny_config, damaged_root):
    task, run = _val_run(tiny_config(**{"data.root": damaged_root, "eval.max_unreadable": 0.5}))
    records = run.parts.val_data.records
    loader = task.val_loader(run)
    scores, labels, unreadable = task.predict(run.parts.model, loader, run, description="val")
    assert unreadable == 1
    assert labels.tolist() == [r.label for r in records[1:]]  # no other video in its place
    assert scores.shape[0] == len(records) - 1
    assert task.validate(run.parts.model, loader, run)["unreadable"] == 1


def test_more_unreadable_videos_than_allowed_fail_the_evaluation(tiny_config, damaged_root):
    task, run = _val_run(tiny_config(**{"data.root": damaged_root, "eval.max_unreadable": 0.1}))
    with pytest.raises(DataError, match=r"1 of the 8 videos of .*val_rawframes.txt.*max_unread"):
        task.validate(run.parts.model, task.val_loader(run), run)


def test_zero_frame_entries_are_kept_alike_in_val_and_test(tiny_config, synthetic_root, tmp_path):
    records = read_rawframe_list(synthetic_root / "val_rawframes.txt")
    zero = tmp_path / "zero.txt"
    write_rawframe_list(zero, [replace(r, num_frames=0) for r in records])
    task, run = _val_run(tiny_config(**{"data.val_list": zero}))
    test_set = task._dataset(run.config, "val", "test", num_classes=8)
    assert len(run.parts.val_data) == len(test_set) == len(records)  # the folders hold frames
    assert task.validate(run.parts.model, task.val_loader(run), run)["unreadable"] == 0
