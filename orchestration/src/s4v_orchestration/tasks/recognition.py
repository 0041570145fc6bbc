"""Action recognition: the task-specific parts of a run (data, model, loss, evaluation, report).

Data comes from ``s4v_data`` (clip datasets over rawframe or video lists), the model from
``s4v_recognition.build_model``; the best checkpoint is chosen by validation top-1. Validation runs
every epoch on one centre view, as the reference does; the final test uses ``eval.test_crops`` x
``eval.test_clips`` views averaged after a softmax, as the reference's ``Recognition/test_vision.py``
(github.com/HJYao00/Side4Video @ 5d72352) tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn
from torch.utils.data import DataLoader

from s4v_data import DATASETS, VideoClipDataset, VideoRecord, make_loader, read_labels
from s4v_data.dataset_file import read_dataset_file
from s4v_data.public import SplitRecords
from s4v_data.specs import DatasetSpec
from s4v_data.synthetic import DIRECTION_PAIRS
from s4v_orchestration.config import RunConfig
from s4v_orchestration.reports import write_recognition_report
from s4v_orchestration.runtime import DistEnv
from s4v_orchestration.tasks.base import (
    Evaluation,
    Task,
    TaskParts,
    Track,
    build_from_seed,
    eval_batch_size,
    eval_sampler,
    generate_synthetic,
    no_track,
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


class DataError(RuntimeError):
    """The data cannot serve this run; the message says what is wrong and what to do."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A real dataset's files are missing; the message says what was looked for and what to do."""


def dataset_spec(config: RunConfig) -> DatasetSpec:
    """The conventions of ``config.data``'s dataset: registered, or from its dataset file."""
    data = config.data
    if data.dataset_file is not None:
        return read_dataset_file(data.dataset_file).spec()
    return DATASETS[data.dataset]


@dataclass(frozen=True, kw_only=True, slots=True)
class DataFiles:
    root: Path
    train_list: Path
    val_list: Path
    test_list: Path
    labels: Path
    # Reads the dataset's official split files instead of the lists (UCF101, HMDB51, Kinetics
    # videos): (root, split, split number) -> records and class names.
    official: Callable[[Path, str, int], SplitRecords] | None = None


def data_files(config: RunConfig) -> DataFiles:
    """Where the lists and the label file of ``config.data`` are (config values or the defaults)."""
    data = config.data
    spec = dataset_spec(config)
    root = Path(data.root)
    videos = data.source == "video"
    train_list = root / (data.train_list or (spec.train_video_list if videos else spec.train_list))
    val_list = root / (data.val_list or (spec.val_video_list if videos else spec.val_list))
    # The official split files serve videos unless lists are given or the default lists exist.
    lists_given = data.train_list is not None or data.val_list is not None
    official = spec.official if videos and not lists_given and not train_list.is_file() else None
    return DataFiles(
        root=root,
        train_list=train_list,
        val_list=val_list,
        test_list=root / data.test_list if data.test_list else val_list,
        labels=root / (data.labels or spec.label_file),
        official=official,
    )


def read_official(config: RunConfig, split: str) -> SplitRecords:
    """One split of a dataset read from its official split files (``data.split`` picks which)."""
    files = data_files(config)
    if files.official is None:
        raise DataError(f"the {config.data.dataset} dataset has no official split files")
    try:
        return files.official(files.root, split, config.data.split)
    except FileNotFoundError as err:
        raise DataNotFoundError(
            f"the {config.data.dataset} dataset is not prepared under {files.root}: {err}.\n"
            "Unpack its videos and official split files there (see the README's section on "
            "public datasets), or point --data-root at the folder that holds them."
        ) from None


def check_data_files(config: RunConfig, *, need_train: bool = True) -> None:
    """Fail at once, before any model is built, when a real dataset is not prepared."""
    files = data_files(config)
    if files.official is not None:
        for split in ("train", "test") if need_train else ("test",):
            read_official(config, split)
        return
    wanted = {"validation list": files.val_list, "label file": files.labels}
    if need_train:
        wanted = {"training list": files.train_list, **wanted}
    if files.test_list != files.val_list:
        wanted["test list"] = files.test_list
    missing = [f"{what} {path}" for what, path in wanted.items() if not path.is_file()]
    if missing:
        name = config.data.dataset
        raise DataNotFoundError(
            f"the {name} dataset is not prepared under {files.root}: missing "
            + "; ".join(missing)
            + ".\nPrepare it with `s4v data extract` (see `s4v data --help`), or point "
            "--data-root at the folder that holds it. For a self-contained run that needs no "
            "download, use --dataset synthetic."
        )


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

    def __init__(self) -> None:
        self.config: RunConfig | None = None
        self.num_classes = 0
        self.pairs: list[tuple[int, int]] = []  # time-reversed class pairs (synthetic data)

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
        check_data_files(config, need_train=with_train_data)

    def _dataset(self, config: RunConfig, split: str, mode: str) -> VideoClipDataset:
        """The clips of ``split`` (train, val or test) from its list or official split file."""
        data = config.data
        files = data_files(config)
        records: list[VideoRecord] | None = None
        if files.official is not None:
            official = read_official(config, split)
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
            num_classes=self.num_classes,
        )

    def build(
        self, config: RunConfig, *, with_train_data: bool = True, model: nn.Module | None = None
    ) -> TaskParts:
        self.config = config
        files = data_files(config)
        if files.official is not None:
            class_names = read_official(config, "test").class_names
            names_source = f"the {config.data.dataset} split files"
        else:
            class_names = read_labels(files.labels)
            names_source = str(files.labels)
        self.num_classes = len(class_names)
        if model is not None and model.num_classes != self.num_classes:
            raise DataError(
                f"the model predicts {model.num_classes} classes but {names_source} list "
                f"{self.num_classes}; evaluate it on the dataset it was trained for"
            )
        if model is None:
            model = build_recognition_model(config, self.num_classes)
        self.pairs = list(DIRECTION_PAIRS) if config.data.dataset == "synthetic" else []
        return TaskParts(
            model=model,
            train_data=self._dataset(config, "train", "train") if with_train_data else None,
            val_data=self._dataset(config, "val", "val"),
            backbone_identity=model.backbone_identity,
            extra={"class_names": list(class_names)},
        )

    def train_loader(
        self, parts: TaskParts, config: RunConfig, *, epoch: int, env: DistEnv
    ) -> DataLoader:
        items, sampler = train_sampling(parts.train_data, config, epoch=epoch, env=env)
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

    def _eval_loader(
        self, dataset: VideoClipDataset, config: RunConfig, env: DistEnv
    ) -> DataLoader:
        return make_loader(
            dataset,
            batch_size=eval_batch_size(config),
            shuffle=False,
            sampler=eval_sampler(dataset, env),
            num_workers=config.data.workers(),
            prefetch_factor=config.data.prefetch_factor,
            persistent_workers=config.data.persistent_workers,
            seed=config.seed,
        )

    def val_loader(self, parts: TaskParts, config: RunConfig, *, env: DistEnv) -> DataLoader:
        return self._eval_loader(parts.val_data, config, env)

    # -- training --------------------------------------------------------------------------

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int]:
        solver = self.config.solver
        clips, labels = (t.to(device, non_blocking=True) for t in batch)
        targets: torch.Tensor = labels
        if solver.mixup_alpha > 0 or solver.cutmix_alpha > 0:
            clips, targets = mix_clips(
                clips,
                labels,
                num_classes=self.num_classes,
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
        self,
        model: nn.Module,
        loader: DataLoader,
        device: torch.device,
        env: DistEnv,
        *,
        track: Track = no_track,
        description: str = "evaluate",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of every item over all ranks: (N, K) logits, or view-averaged probabilities
        when the loader yields views ``(B, V, T, 3, S, S)``; and the (N,) labels."""
        was_training = model.training
        model.eval()
        scores, labels = [], []
        for clips, batch_labels in track(loader, len(loader), description):
            clips = clips.to(device, non_blocking=True)
            if clips.ndim == 6:
                views = clips.shape[1]
                logits = model(rearrange(clips, "b v t c h w -> (b v) t c h w"))
                batch_scores = average_views(rearrange(logits, "(b v) k -> b v k", v=views))
            else:
                batch_scores = model(clips).float()
            scores.append(batch_scores.float().cpu())
            labels.append(batch_labels.cpu())
        order = list(loader.sampler)  # the dataset indices this rank saw, in order
        model.train(was_training)
        gathered = env.all_gather((torch.cat(scores), torch.cat(labels), order))
        # Restore the dataset order so every rank (and a single process) sees the same tensors.
        indices = torch.tensor([i for _, _, o in gathered for i in o])
        permutation = indices.argsort()
        all_scores = torch.cat([s for s, _, _ in gathered])[permutation]
        all_labels = torch.cat([lab for _, lab, _ in gathered])[permutation]
        return all_scores, all_labels

    def metrics(self, scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """top1, top5, mean_class (percent), and pair_acc for time-reversed class pairs."""
        out = topk_accuracy(scores, labels, ks=(1, 5))
        out["mean_class"] = mean_class_accuracy(scores, labels, self.num_classes)
        if self.pairs:
            out["pair_acc"] = pair_accuracy(scores, labels, self.pairs)
        return out

    def validate(
        self,
        model: nn.Module,
        loader: DataLoader,
        device: torch.device,
        env: DistEnv,
        *,
        track: Track = no_track,
    ) -> dict[str, float]:
        scores, labels = self.predict(
            model, loader, device, env, track=track, description="validate"
        )
        return self.metrics(scores, labels)

    def final_test(
        self,
        model: nn.Module,
        config: RunConfig,
        parts: TaskParts,
        device: torch.device,
        env: DistEnv,
        out_dir: Path,
        *,
        track: Track = no_track,
    ) -> Evaluation:
        dataset = self._dataset(config, "test", "test")
        loader = self._eval_loader(dataset, config, env)
        views = f"{config.eval.test_crops}x{config.eval.test_clips}"
        scores, labels = self.predict(
            model, loader, device, env, track=track, description=f"test {views}"
        )
        metrics = self.metrics(scores, labels)
        files = []
        if env.is_main:
            files = write_recognition_report(
                out_dir,
                scores=scores,
                labels=labels,
                class_names=parts.extra["class_names"],
                metrics=metrics,
                views=views,
            )
        return Evaluation(metrics=metrics, files=files)
