"""Multi-view evaluation: view shapes and softmax averaging through the real dataset and model."""

from __future__ import annotations

import torch

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
    scores, labels = task.predict(model, task.eval_loader(dataset, run), run, description="test")
    assert scores.shape == (len(dataset), 8)
    assert labels.tolist() == [r.label for r in dataset.records]
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(len(dataset)))
    with torch.no_grad():
        expected = model(views).softmax(dim=-1).mean(dim=0)  # each view is its own forward
    torch.testing.assert_close(scores[0], expected, atol=1e-5, rtol=1e-4)
    assert labels[0] == label
