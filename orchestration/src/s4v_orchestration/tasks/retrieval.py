"""Text-video retrieval: the task-specific parts of a run (data, model, loss, evaluation, report).

Annotations come from ``s4v_data``'s CLIP4Clip layouts (MSR-VTT, MSVD, VATEX) or the captioned
synthetic set, the model from ``s4v_retrieval.build_model``. Training pairs every video with one of
its captions and minimises the symmetric InfoNCE over the batch of all ranks; evaluation encodes
every video and caption once, then ranks the similarity matrix block by block (as ``eval_epoch`` in
the reference's ``Retrieval/main_task_retrieval.py``, github.com/HJYao00/Side4Video @ 5d72352).
The best checkpoint is the one with the highest text-to-video R@1.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from s4v_data.dataset_file import read_dataset_file
from s4v_data.files import DataNotFoundError
from s4v_data.loader import SignalSafeLoader
from s4v_data.retrieval import CaptionedVideos, Split
from s4v_data.retrieval_dataset import RetrievalVideos, VideoTextPairs
from s4v_data.specs import RETRIEVAL_LAYOUTS, RetrievalLayout
from s4v_orchestration.config import RunConfig
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
    worker_options,
)
from s4v_retrieval import PRESETS, build_model, tokenizer_for
from s4v_retrieval.loss import symmetric_infonce
from s4v_retrieval.metrics import dual_softmax_metrics, ranks_to_metrics, retrieval_ranks
from s4v_retrieval.model import RetrievalModel
from s4v_retrieval.similarity import TextFeatures, VideoFeatures, blockwise_scores

# Splits of a run: training, per-epoch validation and the final test. The reference validates on
# the test file (MSR-VTT 1k-A, MSVD/VATEX test lists); the synthetic set maps test to val.
TRAIN_SPLIT: Split = "train"
VAL_SPLIT: Split = "test"


def retrieval_layout(config: RunConfig) -> RetrievalLayout:
    """The layout of ``config.data``'s dataset: registered, or from its dataset file."""
    if config.data.dataset_file is not None:
        return read_dataset_file(config.data.dataset_file).layout()
    return RETRIEVAL_LAYOUTS[config.data.dataset]


def _unwrap(model: nn.Module) -> RetrievalModel:
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module


def build_retrieval_model(config: RunConfig) -> RetrievalModel:
    """The retrieval model ``config`` describes, built exactly as a run builds it (a random
    backbone is seeded from ``config.seed``), before any weights load."""
    retrieval = config.retrieval
    return build_from_seed(
        config,
        lambda: build_model(
            config.model.preset,
            method=config.model.method,
            pretrained=config.model.pretrained,
            num_frames=config.data.num_frames,
            side_dim=config.model.side_dim,
            max_words=retrieval.max_words,
            similarity=retrieval.similarity,
            train_text=retrieval.train_text,
            grad_checkpointing=config.model.grad_checkpointing,
        ),
    )


def _read_annotations(config: RunConfig, split: Split) -> CaptionedVideos:
    """The captions and videos of ``split`` of ``config.data``'s dataset."""
    try:
        return retrieval_layout(config).read(Path(config.data.root), split)
    except FileNotFoundError as err:
        raise DataNotFoundError(
            f"the {config.data.dataset} {split} annotations are not under "
            f"{config.data.root}: {err}.\nPoint --data-root at the folder that holds them "
            "(see the README's retrieval section), or use --dataset synthetic for a "
            "self-contained run."
        ) from err


class RetrievalTask(Task):
    """Video-text contrastive training; best checkpoint by validation text-to-video R@1."""

    name = "retrieval"
    best_metric = "t2v/R1"

    # -- data ------------------------------------------------------------------------------

    def prepare_data(
        self,
        config: RunConfig,
        *,
        announce: Callable[[str], None],
        with_train_data: bool = True,
    ) -> None:
        if config.data.dataset == "synthetic":
            generate_synthetic(config, announce, captions=True)
        splits = (TRAIN_SPLIT, VAL_SPLIT) if with_train_data else (VAL_SPLIT,)
        for split in splits:  # read now, so that a missing file stops the run before it builds
            _read_annotations(config, split)

    def _media_root(self, config: RunConfig) -> Path:
        media = config.retrieval.media_root
        return Path(media) if media is not None else Path(config.data.root)

    def _input_size(self, config: RunConfig) -> int:
        return config.data.input_size or PRESETS[config.model.preset].image_size

    def build(
        self, config: RunConfig, *, with_train_data: bool = True, model: nn.Module | None = None
    ) -> TaskParts:
        retrieval = config.retrieval
        if model is None:
            model = build_retrieval_model(config)
        layout = retrieval_layout(config)
        common = dict(
            num_frames=config.data.num_frames,
            input_size=self._input_size(config),
            source=config.data.source,
        )
        train_data = None
        if with_train_data:
            train_data = VideoTextPairs(
                _read_annotations(config, TRAIN_SPLIT),
                layout,
                self._media_root(config),
                TRAIN_SPLIT,
                tokenize=tokenizer_for(model),
                captions=retrieval.captions,
                **common,
            )
        val_data = RetrievalVideos(
            _read_annotations(config, VAL_SPLIT),
            layout,
            self._media_root(config),
            VAL_SPLIT,
            **common,
        )
        return TaskParts(
            model=model,
            train_data=train_data,
            val_data=val_data,
            backbone_identity=model.backbone_identity,
        )

    def parameter_groups(self, model: nn.Module, config: RunConfig) -> list[dict[str, Any]]:
        """The optimiser's groups: everything at ``solver.lr``, a trained text tower scaled."""
        groups = _unwrap(model).parameter_groups()
        out = [{"params": groups["main"], "lr": config.solver.lr}]
        if "text" in groups:
            lr = config.solver.lr * config.retrieval.text_lr_scale
            out.append({"params": groups["text"], "lr": lr})
        return out

    def train_loader(self, run: RunContext, *, epoch: int) -> DataLoader:
        # drop_last: every rank contributes a full batch to the gathered contrastive loss.
        items, sampler = train_sampling(run.parts.train_data, run, epoch=epoch)
        return SignalSafeLoader(
            items,
            batch_size=run.config.data.batch_size,
            sampler=sampler,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
            **worker_options(run.config),
        )

    def eval_loader(self, dataset: RetrievalVideos, run: RunContext) -> DataLoader:
        """This rank's share of ``dataset``'s videos in order, in evaluation batches."""
        config = run.config
        return SignalSafeLoader(
            dataset,
            batch_size=eval_batch_size(config),
            sampler=eval_sampler(dataset, run),
            pin_memory=torch.cuda.is_available(),
            **worker_options(config, persistent=config.data.persistent_workers),
        )

    def val_loader(self, run: RunContext) -> DataLoader:
        return self.eval_loader(run.parts.val_data, run)

    # -- training --------------------------------------------------------------------------

    def loss(self, model: nn.Module, batch: Any, run: RunContext) -> tuple[torch.Tensor, int]:
        clips, tokens = (t.to(run.device, non_blocking=True) for t in batch)
        logits = model(clips, tokens)  # (B_all, B_all), texts on rows
        return symmetric_infonce(logits.float()), clips.shape[0]

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Clamp the learned temperature to CLIP's cap after every step, as the reference does."""
        _unwrap(model).after_optimizer_step()

    # -- evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def encode(
        self,
        model: RetrievalModel,
        loader: DataLoader,
        run: RunContext,
        *,
        description: str = "validate",
    ) -> tuple[TextFeatures, VideoFeatures]:
        """Features of every caption and video of the loader's split, identical on every rank."""
        was_training = model.training
        model.eval()
        frames = []
        for clips, _ in run.track(loader, len(loader), f"{description}: videos"):
            frames.append(model.encode_video(clips.to(run.device, non_blocking=True)).frames.cpu())
        order = list(loader.sampler)  # the dataset indices this rank encoded, in order
        gathered = run.env.all_gather((torch.cat(frames), order))
        indices = torch.tensor([i for _, part in gathered for i in part])
        video_frames = torch.cat([f for f, _ in gathered])[indices.argsort()].float()
        video = VideoFeatures(
            frames=video_frames, mask=torch.ones(video_frames.shape[:2], dtype=torch.bool)
        )
        # Captions are cheap next to videos: every rank encodes all of them.
        tokenize = tokenizer_for(model)
        captions = [caption for _, caption in loader.dataset.annotations.pairs()]
        starts = range(0, len(captions), chunk := loader.batch_size * 8)
        parts = []
        for start in run.track(starts, len(starts), f"{description}: captions"):
            tokens = tokenize(captions[start : start + chunk]).to(run.device)
            feats = model.encode_text(tokens)
            parts.append((feats.tokens.float().cpu(), feats.mask.cpu(), feats.pooled.float().cpu()))
        text = TextFeatures(
            tokens=torch.cat([p[0] for p in parts]),
            mask=torch.cat([p[1] for p in parts]),
            pooled=torch.cat([p[2] for p in parts]),
        )
        model.train(was_training)
        return text, video

    def rank(
        self,
        model: RetrievalModel,
        text: TextFeatures,
        video: VideoFeatures,
        annotations: CaptionedVideos,
        config: RunConfig,
    ) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """Metrics (plain, and ``dsl/...`` if dual softmax is on) and the t2v and v2t ranks."""
        retrieval = config.retrieval
        # Similarity blocks computed on the model's device, returned on the CPU for ranking.
        device = model.logit_scale.log_scale.device
        on_device = blockwise_scores(
            model.similarity,
            text.to(device),
            video.to(device),
            video_chunk=retrieval.eval_video_chunk,
        )

        def score_block(start: int, stop: int) -> torch.Tensor:
            return on_device(start, stop).float().cpu()

        text_to_video = torch.tensor(annotations.text_to_video())
        num_videos = video.frames.shape[0]
        chunk = retrieval.eval_text_chunk
        t2v, v2t = retrieval_ranks(score_block, text_to_video, num_videos, chunk_size=chunk)
        metrics = ranks_to_metrics(t2v, v2t)
        if retrieval.dual_softmax:
            metrics |= dual_softmax_metrics(
                score_block, text_to_video, num_videos, chunk_size=chunk
            )
        return metrics, t2v, v2t

    def validate(self, model: nn.Module, loader: DataLoader, run: RunContext) -> dict[str, float]:
        model = _unwrap(model)
        text, video = self.encode(model, loader, run)
        metrics, _, _ = self.rank(model, text, video, loader.dataset.annotations, run.config)
        return metrics

    def final_test(self, model: nn.Module, run: RunContext, out_dir: Path) -> Evaluation:
        model = _unwrap(model)
        loader = self.eval_loader(run.parts.val_data, run)
        annotations = loader.dataset.annotations
        text, video = self.encode(model, loader, run, description="test")
        metrics, t2v, v2t = self.rank(model, text, video, annotations, run.config)
        files = []
        if run.env.is_main:
            files = write_retrieval_report(
                out_dir, annotations=annotations, t2v=t2v, v2t=v2t, metrics=metrics
            )
        return Evaluation(metrics=metrics, files=files)


def write_retrieval_report(
    out_dir: Path,
    *,
    annotations: CaptionedVideos,
    t2v: torch.Tensor,
    v2t: torch.Tensor,
    metrics: dict[str, float],
) -> list[Path]:
    """Write ``eval.json`` (metrics) and per-query ranks ``t2v_ranks.csv`` / ``v2t_ranks.csv``.

    Ranks are 1-based and pessimistic: a tie with the ground truth counts against the query.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = out_dir / "eval.json"
    summary.write_text(
        json.dumps(
            {
                "metrics": metrics,
                "num_videos": annotations.num_videos,
                "num_captions": annotations.num_captions,
                "tie_rule": "a query's rank counts every other candidate scoring >= its truth",
            },
            indent=2,
        )
    )
    t2v_path = out_dir / "t2v_ranks.csv"
    with t2v_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["caption_index", "video_id", "caption", "rank"])
        for index, ((video, caption), rank) in enumerate(
            zip(annotations.pairs(), t2v.tolist(), strict=True)
        ):
            writer.writerow([index, annotations.video_ids[video], caption, rank + 1])
    v2t_path = out_dir / "v2t_ranks.csv"
    with v2t_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_index", "video_id", "rank"])
        for index, rank in enumerate(v2t.tolist()):
            writer.writerow([index, annotations.video_ids[index], rank + 1])
    return [summary, t2v_path, v2t_path]
