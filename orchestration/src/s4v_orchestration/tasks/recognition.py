"""Action recognition: the task-specific parts of a run (data, model, loss, evaluation, report).

Data comes from ``s4v_data`` (clip datasets over rawframe or video lists), the model from
``s4v_recognition.build_model``; the best checkpoint is chosen by validation top-1. Validation runs
every epoch on one centre view, as the reference does; the final test uses ``eval.test_crops`` x
``eval.test_clips`` views averaged after a softmax, as the reference's ``Recognition/test_vision.py``
(github.com/HJYao00/Side4Video @ 5d72352) tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn
from torch.utils.data import DataLoader

from s4v_data import DATASETS, VideoClipDataset, VideoRecord, make_loader, read_labels
from s4v_data.dataset_file import read_dataset_file
from s4v_data.files import DataError, DataFiles, check_data_files, data_files, read_official
from s4v_data.specs import DatasetSpec
from s4v_data.synthetic import DIRECTION_PAIRS
from s4v_orchestration.config import RunConfig
from s4v_orchestration.reports import write_recognition_report
from s4v_orchestration.tasks.base import (
    Evaluation,
    RunContext,
    Task,
    TaskParts,
    build_from_seed,
    eval_batch_size,
    eval_sampler,
    generate_synthetic,
    train_sampling,
)
from s4v_recognition import PRESETS, build_model
from s4v_recognition.losses import classification_loss, mix_clips
from s4v_recognition.metrics import (
    average_views,
    mean_class_accuracy,
    pair_accuracy,
    topk_accuracy,
)


def dataset_spec(config: RunConfig) -> DatasetSpec:
    """The conventions of ``config.data``'s dataset: registered, or from its dataset file."""
    data = config.data
    if data.dataset_file is not None:
        return read_dataset_file(data.dataset_file).spec()
    return DATASETS[data.dataset]


def recognition_data_files(config: RunConfig) -> DataFiles:
    """Where the lists and the label file of ``config.data`` are (config values or defaults)."""
    data = config.data
    return data_files(
        dataset_spec(config),
        data.root,
        name=data.dataset,
        source=data.source,
        train_list=data.train_list,
        val_list=data.val_list,
        test_list=data.test_list,
        labels=data.labels,
        split=data.split,
        described_by=data.dataset_file,
    )


def _time_reversed_pairs(config: RunConfig) -> list[tuple[int, int]]:
    """Class pairs that differ only in the direction of time (the synthetic set's)."""
    return list(DIRECTION_PAIRS) if config.data.dataset == "synthetic" else []


def _num_classes(parts: TaskParts) -> int:
    return len(parts.extra["class_names"])


def build_recognition_model(config: RunConfig, num_classes: int) -> nn.Module:
    """The classifier ``config.model`` describes, with ``num_classes`` outputs, built exactly as a
    run builds it (a random backbone is seeded from ``config.seed``), before any weights load."""
    return build_from_seed(
        config,
        lambda: build_model(
            config.model.preset,
            num_classes,
            method=config.model.method,
            pretrained=config.model.pretrained,
            num_frames=config.data.num_frames,
            side_dim=config.model.side_dim,
            grad_checkpointing=config.model.grad_checkpointing,
            dropout=config.model.dropout,
            side_layers=config.model.side_layers,
        ),
    )


class RecognitionTask(Task):
    """Video classification with label-smoothed cross-entropy; best checkpoint by val top-1."""

    name = "recognition"
    best_metric = "top1"

    # -- data ------------------------------------------------------------------------------

    def prepare_data(
        self,
        config: RunConfig,
        *,
        announce: Callable[[str], None],
        with_train_data: bool = True,
    ) -> None:
        if config.data.dataset == "synthetic":
            generate_synthetic(config, announce)
        check_data_files(recognition_data_files(config), need_train=with_train_data)

    def _dataset(
        self, config: RunConfig, split: str, mode: str, num_classes: int
    ) -> VideoClipDataset:
        """The clips of ``split`` (train, val or test) from its list or official split file."""
        data = config.data
        files = recognition_data_files(config)
        records: list[VideoRecord] | None = None
        if files.official is not None:
            official = read_official(files, split)
            list_file, records = official.source, official.records
        else:
            list_file = {"train": files.train_list, "val": files.val_list}.get(
                split, files.test_list
            )
        return VideoClipDataset(
            list_file,
            data.root,
            records=records,
            spec=dataset_spec(config),
            num_frames=data.num_frames,
            mode=mode,
            input_size=data.input_size or PRESETS[config.model.preset].image_size,
            source=data.source,
            num_sample=data.num_sample,
            rand_augment=data.rand_augment,
            flip=data.flip,
            test_crops=config.eval.test_crops,
            test_clips=config.eval.test_clips,
            num_classes=num_classes,
        )

    def build(
        self, config: RunConfig, *, with_train_data: bool = True, model: nn.Module | None = None
    ) -> TaskParts:
        files = recognition_data_files(config)
        if files.official is not None:
            class_names = read_official(files, "test").class_names
            names_source = f"the {config.data.dataset} split files"
        else:
            class_names = read_labels(files.labels)
            names_source = str(files.labels)
        num_classes = len(class_names)
        if model is not None and model.num_classes != num_classes:
            raise DataError(
                f"the model predicts {model.num_classes} classes but {names_source} list "
                f"{num_classes}; evaluate it on the dataset it was trained for"
            )
        if model is None:
            model = build_recognition_model(config, num_classes)
        train_data = None
        if with_train_data:
            train_data = self._dataset(config, "train", "train", num_classes)
        return TaskParts(
            model=model,
            train_data=train_data,
            val_data=self._dataset(config, "val", "val", num_classes),
            backbone_identity=model.backbone_identity,
            extra={"class_names": list(class_names)},
        )

    def train_loader(self, run: RunContext, *, epoch: int) -> DataLoader:
        config = run.config
        items, sampler = train_sampling(run.parts.train_data, run, epoch=epoch)
        return make_loader(
            items,
            batch_size=config.data.batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=config.data.workers(),
            prefetch_factor=config.data.prefetch_factor,
            seed=config.seed + epoch,
            drop_last=True,
        )

    def eval_loader(self, dataset: VideoClipDataset, run: RunContext) -> DataLoader:
        """This rank's share of ``dataset`` in order, in evaluation batches."""
        config = run.config
        return make_loader(
            dataset,
            batch_size=eval_batch_size(config),
            shuffle=False,
            sampler=eval_sampler(dataset, run),
            num_workers=config.data.workers(),
            prefetch_factor=config.data.prefetch_factor,
            persistent_workers=config.data.persistent_workers,
            seed=config.seed,
            eval_items=True,
        )

    def val_loader(self, run: RunContext) -> DataLoader:
        return self.eval_loader(run.parts.val_data, run)

    # -- training --------------------------------------------------------------------------

    def loss(self, model: nn.Module, batch: Any, run: RunContext) -> tuple[torch.Tensor, int]:
        solver = run.config.solver
        clips, labels = (t.to(run.device, non_blocking=True) for t in batch)
        targets: torch.Tensor = labels
        if solver.mixup_alpha > 0 or solver.cutmix_alpha > 0:
            clips, targets = mix_clips(
                clips,
                labels,
                num_classes=_num_classes(run.parts),
                mixup_alpha=solver.mixup_alpha,
                cutmix_alpha=solver.cutmix_alpha,
                switch_prob=solver.mix_switch_prob,
                smoothing=solver.label_smoothing,
            )
        logits = model(clips)  # (B, K)
        return classification_loss(logits, targets, solver.label_smoothing), clips.shape[0]

    # -- evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def predict(
        self, model: nn.Module, loader: DataLoader, run: RunContext, *, description: str
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Scores of every decodable item over all ranks: (N, K) logits, or view-averaged
        probabilities when the loader yields views ``(B, V, T, 3, S, S)``; the (N,) labels; and
        the number of items left out because they could not be decoded (never replaced).

        Raises:
            DataError: more than ``eval.max_unreadable`` of the items (or all) are unreadable.
        """
        was_training = model.training
        model.eval()
        scores, labels, indices, unreadable = [], [], [], []
        for batch in run.track(loader, len(loader), description):
            unreadable += batch.unreadable
            if batch.clips is None:
                continue
            clips = batch.clips.to(run.device, non_blocking=True)
            if clips.ndim == 6:
                views = clips.shape[1]
                logits = model(rearrange(clips, "b v t c h w -> (b v) t c h w"))
                batch_scores = average_views(rearrange(logits, "(b v) k -> b v k", v=views))
            else:
                batch_scores = model(clips).float()
            scores.append(batch_scores.float().cpu())
            labels.append(batch.labels)
            indices.append(batch.indices)
        model.train(was_training)
        mine = (
            torch.cat(scores) if scores else torch.empty(0, _num_classes(run.parts)),
            torch.cat(labels) if labels else torch.empty(0, dtype=torch.long),
            torch.cat(indices) if indices else torch.empty(0, dtype=torch.long),
            unreadable,
        )
        gathered = run.env.all_gather(mine)
        unreadable = sorted(i for *_, bad in gathered for i in bad)
        _check_readable(loader.dataset, unreadable, run.config.eval.max_unreadable)
        # Restore the dataset order so every rank (and a single process) sees the same tensors.
        permutation = torch.cat([i for _, _, i, _ in gathered]).argsort()
        all_scores = torch.cat([s for s, _, _, _ in gathered])[permutation]
        all_labels = torch.cat([lab for _, lab, _, _ in gathered])[permutation]
        return all_scores, all_labels, len(unreadable)

    def metrics(
        self, scores: torch.Tensor, labels: torch.Tensor, run: RunContext, unreadable: int = 0
    ) -> dict[str, float]:
        """top1, top5, mean_class (percent), pair_acc for time-reversed class pairs, and the
        count of ``unreadable`` videos left out of them."""
        out = topk_accuracy(scores, labels, ks=(1, 5))
        out["mean_class"] = mean_class_accuracy(scores, labels, _num_classes(run.parts))
        pairs = _time_reversed_pairs(run.config)
        if pairs:
            out["pair_acc"] = pair_accuracy(scores, labels, pairs)
        out["unreadable"] = float(unreadable)
        return out

    def validate(self, model: nn.Module, loader: DataLoader, run: RunContext) -> dict[str, float]:
        scores, labels, unreadable = self.predict(model, loader, run, description="validate")
        return self.metrics(scores, labels, run, unreadable)

    def final_test(self, model: nn.Module, run: RunContext, out_dir: Path) -> Evaluation:
        config = run.config
        dataset = self._dataset(config, "test", "test", _num_classes(run.parts))
        views = f"{config.eval.test_crops}x{config.eval.test_clips}"
        scores, labels, unreadable = self.predict(
            model, self.eval_loader(dataset, run), run, description=f"test {views}"
        )
        metrics = self.metrics(scores, labels, run, unreadable)
        files = []
        if run.env.is_main:
            files = write_recognition_report(
                out_dir,
                scores=scores,
                labels=labels,
                class_names=run.parts.extra["class_names"],
                metrics=metrics,
                views=views,
            )
        return Evaluation(metrics=metrics, files=files)


def _check_readable(dataset: Any, unreadable: list[int], limit: float) -> None:
    """Fail when more than ``limit`` of the evaluated videos (or all) could not be decoded."""
    total = len(dataset)
    if not unreadable or (len(unreadable) < total and len(unreadable) <= limit * total):
        return
    examples = ", ".join(dataset.records[i].path for i in unreadable[:3])
    raise DataError(
        f"{len(unreadable)} of the {total} videos of {dataset.list_file} could not be decoded "
        f"(e.g. {examples}), more than eval.max_unreadable={limit:g} of them; repair or remove "
        "them (`s4v data check --depth all` lists every bad entry)"
    )
