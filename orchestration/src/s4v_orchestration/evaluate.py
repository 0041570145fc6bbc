"""Evaluate a saved checkpoint: rebuild its model from the config it stores, test it, report.

Works for checkpoints written by ``s4v run`` and for released Side4Video weights converted by
``s4v convert side4video`` (same file format). The test is the task's ``final_test``: for
recognition, ``crops x clips`` views per video averaged after a softmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from s4v_core.checkpoint import CheckpointError, SavedModel, is_self_contained, load_checkpoint
from s4v_data.dataset_file import is_dataset_file
from s4v_orchestration.config import RunConfig
from s4v_orchestration.overrides import Shortcut, apply_overrides, load_run_config
from s4v_orchestration.progress import RunProgress
from s4v_orchestration.recipes import dataset_fields, read_dataset
from s4v_orchestration.runtime import (
    close_distributed,
    init_distributed,
    local_rank_from_env,
    resolve_device,
    seed_everything,
)
from s4v_orchestration.tasks import Evaluation, RunContext, get_task
from s4v_orchestration.tracking import tracked_run
from s4v_recognition.checkpoints import build_saved_model


@dataclass(frozen=True, kw_only=True)
class EvaluationResult:
    evaluation: Evaluation
    config: RunConfig
    out_dir: Path
    run_id: str | None


def _dataset_shortcuts(stored: dict, dataset: str) -> list[Shortcut]:
    """``--dataset`` as shortcuts on a stored config: a registered name, or a dataset file's
    name, file, root, source, lists and labels."""
    if not is_dataset_file(dataset):
        return [
            ("data.dataset", dataset, "--dataset"),
            ("data.dataset_file", None, "--dataset"),
            ("data.recipe_base", None, "--dataset"),
        ]
    fields = dataset_fields(read_dataset(Path(dataset), stored.get("task", "recognition")))
    return [(f"data.{key}", value, "--dataset") for key, value in fields.items()]


def evaluate_checkpoint(
    checkpoint: Path,
    *,
    dataset: str | None = None,
    out_dir: Path | None = None,
    overrides: Sequence[str] = (),
    shortcuts: Sequence[Shortcut] = (),
    progress: bool = False,
) -> EvaluationResult:
    """Test the weights in ``checkpoint`` on a dataset's validation list.

    Args:
        checkpoint: an s4v checkpoint (``best.pt``, ``last.pt``) or a converted release.
        dataset: the dataset preset or a dataset file (``path/to/dataset.yaml``); needed for a
            converted release (which does not know its dataset), otherwise the one the
            checkpoint was trained on.
        out_dir: where the report goes; default ``<checkpoint folder>/eval-<CROPS>x<CLIPS>``.
        overrides, shortcuts: applied to the config (e.g. the data root, the test views, the
            device, the tracking store).
        progress: show progress bars.
    """
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    # A converted release carries its frozen backbone: use it as it is, so the file is
    # self-contained (no download, and the original release may have moved).
    saved = SavedModel.from_checkpoint(state, checkpoint) if is_self_contained(state) else None
    model = build_saved_model(saved, checkpoint) if saved is not None else None
    if "config" in state:  # written by a training run (or by `s4v convert --dataset`)
        if dataset is not None:
            shortcuts = [*_dataset_shortcuts(state["config"], dataset), *shortcuts]
        config = apply_overrides(state["config"], overrides, shortcuts)
    elif saved is not None:
        if dataset is None:
            raise CheckpointError(
                f"{checkpoint}: a converted Side4Video release that does not record its "
                "dataset: name it with --dataset (e.g. --dataset ssv2 --data-root /data/ssv2)"
            )
        config = load_run_config(
            saved.task, dataset, overrides=overrides,
            shortcuts=[*_saved_model_shortcuts(saved, checkpoint), *shortcuts],
        )  # fmt: skip
    else:
        raise CheckpointError(f"{checkpoint}: holds neither a run config nor a converted model")
    config = config.with_defaults()
    views = f"{config.eval.test_crops}x{config.eval.test_clips}"
    out_dir = Path(out_dir) if out_dir else checkpoint.parent / f"eval-{views}"

    task = get_task(config.task)
    device = resolve_device(config.device, local_rank_from_env())
    env = init_distributed(device)
    try:
        if config.cpu_threads is not None:
            torch.set_num_threads(config.cpu_threads)
        seed_everything(config.seed + env.rank)
        ui = RunProgress(enabled=progress and env.is_main)
        if env.is_main:
            task.prepare_data(config, announce=ui.note, with_train_data=False)
        env.barrier()
        parts = task.build(config, with_train_data=False, model=model)
        if parts.backbone_identity != state["backbone"]:
            raise CheckpointError(
                f"{checkpoint}: trained on backbone {state['backbone']} but the config builds "
                f"{parts.backbone_identity}; pass the same weights (--pretrained)"
            )
        model = parts.model
        model.load_trainable_state_dict(state["model"], str(checkpoint))
        model.to(device)
        tags = {
            "s4v.task": config.task,
            "s4v.dataset": config.data.dataset,
            "s4v.kind": "evaluation",
            "s4v.checkpoint": str(checkpoint.resolve()),
            "s4v.backbone": str(parts.backbone_identity.get("name")),
        }
        if state.get("mlflow_run_id"):
            tags["s4v.trained_in_run"] = state["mlflow_run_id"]
        with (
            tracked_run(
                enabled=config.tracking.enabled and env.is_main,
                tracking_uri=config.tracking.uri,
                experiment=config.tracking.experiment,
                run_name=f"eval {views} {config.model.preset} {checkpoint.name}",
                tags=tags,
                system_metrics=False,
            ) as tracker,
            ui,
        ):
            run = RunContext(config=config, parts=parts, device=device, env=env, track=ui.track)
            evaluation = task.final_test(model, run, out_dir)
            tracker.log_params({"views": views})  # the checkpoint path is the s4v.checkpoint tag
            tracker.log_metrics({f"test/{k}": v for k, v in evaluation.metrics.items()}, step=0)
            for path in evaluation.files:
                tracker.log_artifact(path, "eval")
        return EvaluationResult(
            evaluation=evaluation, config=config, out_dir=out_dir, run_id=tracker.run_id
        )
    finally:
        close_distributed(env)


def _saved_model_shortcuts(saved: SavedModel, checkpoint: Path) -> list[Shortcut]:
    """The run-config values that rebuild a self-contained checkpoint's model."""
    source = str(checkpoint)
    return [
        ("model.preset", saved.preset, source),
        ("model.method", saved.method, source),
        ("model.pretrained", saved.backbone.get("pretrained"), source),
        ("model.side_dim", saved.side_dim, source),
        ("data.num_frames", saved.num_frames, source),
    ]
