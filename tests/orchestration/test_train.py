"""The training loop on the tiny preset: exact resume, non-finite loss, refusing a foreign checkpoint."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

from s4v_core.checkpoint import CheckpointError, load_checkpoint
from s4v_orchestration.tasks.recognition import RecognitionTask
from s4v_orchestration.train import NonFiniteLossError, train


def _weights(path):
    return load_checkpoint(path)["model"]


def test_kill_and_resume_reproduces_the_uninterrupted_run(
    tiny_config, tmp_path, monkeypatch
) -> None:
    full_config = tiny_config("full")
    full = train(full_config)

    def kill_after_first_epoch(epoch, metrics, checkpoint, run_id):
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)  # MLflow artifacts
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed_config = tiny_config("killed", **{"tracking.enabled": True, "tracking.uri": store})
    with pytest.raises(KeyboardInterrupt):
        train(killed_config, on_epoch_end=kill_after_first_epoch)
    last = killed_config.with_defaults().output_dir / "last.pt"
    assert load_checkpoint(last)["epoch"] == 1
    run_id = load_checkpoint(last)["mlflow_run_id"]
    client = MlflowClient(store)
    assert client.get_run(run_id).info.status == "KILLED"

    resumed = train(killed_config.model_copy(update={"resume": last}))
    timings = ("epoch/time_s", "epoch/peak_mem_mb", "train/epoch_clips_per_s")
    assert {k: v for k, v in resumed.items() if k not in timings} == {
        k: v for k, v in full.items() if k not in timings
    }  # every other metric, bit for bit
    full_weights = _weights(full_config.with_defaults().output_dir / "last.pt")
    resumed_weights = _weights(last)
    assert full_weights.keys() == resumed_weights.keys()
    for key, value in full_weights.items():
        assert torch.equal(value, resumed_weights[key]), key
    # The resumed training continued the same MLflow run, which now ends FINISHED.
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "val/top1")] == [1, 2]


def test_run_returns_validation_and_test_metrics_and_writes_checkpoints(tiny_config) -> None:
    config = tiny_config("metrics", **{"solver.epochs": 1})
    seen = []
    metrics = train(config, on_epoch_end=lambda *args: seen.append(args))
    out = config.with_defaults().output_dir
    for key in ("train/epoch_loss", "val/top1", "val/top5", "val/mean_class", "val/pair_acc",
                "val/best_top1", "test/top1", "test/pair_acc", "epoch/time_s"):  # fmt: skip
        assert key in metrics, key
    # One epoch: the best weights are the last, and the synthetic set's test (one centre view,
    # the validation frames) scores them exactly as validation did.
    assert metrics["val/best_top1"] == metrics["val/top1"]
    assert metrics["test/top1"] == pytest.approx(metrics["val/top1"])
    assert metrics["test/pair_acc"] == pytest.approx(metrics["val/pair_acc"])
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    assert {p.name for p in (out / "eval").iterdir()} == {
        "eval.json",
        "per_class.csv",
        "confusion.png",
    }
    [(epoch, epoch_metrics, path, run_id)] = seen
    assert (epoch, path, run_id) == (1, out / "last.pt", None)
    assert epoch_metrics["val/top1"] == metrics["val/top1"]


def test_the_task_hook_runs_after_every_optimizer_step(tiny_config, monkeypatch) -> None:
    config = tiny_config(
        "hook", **{"solver.epochs": 1, "solver.max_steps": 3, "eval.final_test": False}
    )
    steps = []
    real_step = torch.optim.AdamW.step

    def counted_step(self, *args, **kwargs):
        steps.append("optimizer")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counted_step)
    monkeypatch.setattr(
        RecognitionTask, "after_optimizer_step", lambda self, m: steps.append("hook")
    )
    train(config)
    assert steps == ["optimizer", "hook"] * 3


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(
    tiny_config, monkeypatch
) -> None:
    config = tiny_config("nan")
    calls = {"n": 0}
    real_loss = RecognitionTask.loss
    steps_per_epoch = 32 // 4

    def loss_that_diverges_in_epoch_two(self, model, batch, run):
        loss, clips = real_loss(self, model, batch, run)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > steps_per_epoch + 2 else loss), clips

    monkeypatch.setattr(RecognitionTask, "loss", loss_that_diverges_in_epoch_two)
    with pytest.raises(
        NonFiniteLossError, match=r"loss became nan at epoch 2.*last\.pt \(after epoch 1\)"
    ):
        train(config)
    assert load_checkpoint(config.with_defaults().output_dir / "last.pt")["epoch"] == 1


def test_a_loss_that_diverges_in_the_first_epoch_names_no_checkpoint(
    tiny_config, monkeypatch
) -> None:
    config = tiny_config("nan-first")
    real_loss = RecognitionTask.loss

    def diverged(self, model, batch, run):
        loss, clips = real_loss(self, model, batch, run)
        return loss * float("nan"), clips

    monkeypatch.setattr(RecognitionTask, "loss", diverged)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1\. No epoch finished, so there "):
        train(config)
    assert not (config.with_defaults().output_dir / "last.pt").exists()


def test_resume_refuses_a_checkpoint_of_another_config(tiny_config) -> None:
    config = tiny_config("other", **{"solver.epochs": 1})
    train(config)
    last = config.with_defaults().output_dir / "last.pt"
    changed = tiny_config("other", **{"solver.epochs": 1, "solver.lr": 0.5, "resume": last})
    with pytest.raises(
        CheckpointError, match=rf"solver.lr: {config.solver.lr} \(checkpoint\) vs 0.5"
    ):
        train(changed)


def test_a_resumed_partial_epoch_logs_its_step_metrics_once(tiny_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow artifacts
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny_config(
        "partial", **{"tracking.enabled": True, "tracking.uri": store, "tracking.log_every": 1}
    )
    last = config.with_defaults().output_dir / "last.pt"
    after_first = tmp_path / "after-first.pt"

    def killed_late_in_epoch_two(epoch, metrics, checkpoint, run_id):
        if epoch == 1:
            after_first.write_bytes(checkpoint.read_bytes())
        else:  # epoch 2 logged its steps; its checkpoint is lost with the kill
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, on_epoch_end=killed_late_in_epoch_two)
    run_id = load_checkpoint(last)["mlflow_run_id"]
    train(config.model_copy(update={"resume": after_first}))
    steps = [m.step for m in MlflowClient(store).get_metric_history(run_id, "train/loss")]
    assert steps == sorted(set(steps)) and len(steps) > 2
