"""Data-loading throughput: rawframes vs decoding videos, against decord's raw decode rate.

All three read the same frames (deterministic val sampling of the same videos) in this process:

* ``rawframes``: :class:`VideoClipDataset` from JPEG folders through :func:`make_loader`;
* ``video``: the same dataset decoding the MP4 files with decord in its helper process;
* ``video-in-process``: the same, with decord called directly in this process;
* ``decord-raw``: the raw reader (:func:`s4v_data.decode.open_reader`; decord, or PyAV where
  decord is not installed) + ``get_batch`` of the same frame indices, nothing else (no resize,
  crop, normalisation or collation) - the floor a video loader cannot beat.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from s4v_data._worker import open_reader
from s4v_data.annotations import read_video_list
from s4v_data.dataset import Source, VideoClipDataset, make_loader
from s4v_data.sampling import ClipPlan
from s4v_data.specs import DATASETS
from s4v_data.synthetic import SyntheticInfo

__all__ = ["BenchRow", "WorkerRow", "bench_data", "bench_workers", "workers_to_feed"]


@dataclass(frozen=True, kw_only=True, slots=True)
class BenchRow:
    """Throughput of one way of loading clips (median over repeats)."""

    name: str
    clips_per_s: float
    frames_per_s: float
    runs: tuple[float, ...]  # clips/s of every timed repeat


def _timed(run: Callable[[], int], repeats: int) -> list[float]:
    run()  # warm-up: page cache, helper process start, lazy imports
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        clips = run()
        rates.append(clips / (time.perf_counter() - start))
    return rates


def bench_data(
    info: SyntheticInfo,
    *,
    num_frames: int = 8,
    input_size: int | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    repeats: int = 5,
) -> dict[str, BenchRow]:
    """Time the ways of loading the val clips of a generated dataset.

    Args:
        info: a dataset from :func:`s4v_data.synthetic.generate` (MP4 files and rawframes).
        num_frames: frames per clip (T).
        input_size: crop size; default the frame size scaled by 224/256 (a resize-free pipeline
            for the synthetic spec's short-side policy).
        batch_size: clips per loader batch.
        num_workers: loader processes (decord-raw always runs in this process).
        repeats: timed passes over the list; rows report the median.

    Returns:
        Rows keyed ``rawframes``, ``video``, ``video-in-process``, ``decord-raw``.
    """
    spec = DATASETS["synthetic"]
    size = input_size or round(info.size * 224 / 256)

    def loader_pass(source: Source, isolate: bool) -> Callable[[], int]:
        dataset = VideoClipDataset(
            info.val_list if source == "rawframes" else info.val_video_list,
            info.root,
            spec=spec,
            num_frames=num_frames,
            mode="val",
            input_size=size,
            source=source,
            isolate_decoding=isolate,
        )
        loader = make_loader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            pin_memory=False,
            persistent_workers=True,
        )
        return lambda: sum(len(labels) for _, labels in loader)

    def decord_pass() -> int:
        plan = ClipPlan(family=spec.sampling, mode="val", num_frames=num_frames)
        videos = read_video_list(info.val_video_list)
        for record in videos:
            reader = open_reader(Path(info.root) / record.path, 1)
            reader.get_batch(sorted(set(plan.indices(len(reader))[0])))
        return len(videos)

    runs = {
        "rawframes": loader_pass("rawframes", isolate=True),
        "video": loader_pass("video", isolate=True),
        "video-in-process": loader_pass("video", isolate=False),
        "decord-raw": decord_pass,
    }
    rows = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # decord-raw decodes on one thread; compare like with like
    try:
        for name, run in runs.items():
            rates = _timed(run, repeats)
            median = statistics.median(rates)
            rows[name] = BenchRow(
                name=name,
                clips_per_s=median,
                frames_per_s=median * num_frames,
                runs=tuple(rates),
            )
    finally:
        torch.set_num_threads(threads)
    return rows


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerRow:
    """Loader throughput with ``workers`` processes (median over repeats)."""

    source: Source
    workers: int
    clips_per_s: float

    @property
    def per_worker(self) -> float:
        """Clips/s each worker adds (the in-process loader counts as one worker)."""
        return self.clips_per_s / max(1, self.workers)


def bench_workers(
    info: SyntheticInfo,
    workers: Sequence[int],
    *,
    sources: Sequence[Source] = ("rawframes", "video"),
    num_frames: int = 8,
    batch_size: int = 8,
    repeats: int = 3,
) -> list[WorkerRow]:
    """Training-mode clips/s of the loader at each worker count, for sizing ``data.num_workers``.

    Training clips (random sampling and augmentation, as a training run loads them) of the
    generated dataset's training list, through :func:`make_loader` with persistent workers.
    """
    spec = DATASETS["synthetic"]
    size = round(info.size * 224 / 256)
    rows = []
    for source in sources:
        dataset = VideoClipDataset(
            info.train_list if source == "rawframes" else info.train_video_list,
            info.root,
            spec=spec,
            num_frames=num_frames,
            mode="train",
            input_size=size,
            source=source,
        )
        for count in workers:
            loader = make_loader(
                dataset,
                batch_size=batch_size,
                shuffle=True,
                num_workers=count,
                pin_memory=False,
                persistent_workers=True,
            )
            rates = _timed(lambda loader=loader: sum(len(y) for _, y in loader), repeats)
            rows.append(
                WorkerRow(source=source, workers=count, clips_per_s=statistics.median(rates))
            )
    return rows


def workers_to_feed(rows: Sequence[WorkerRow], source: Source, clips_per_s: float) -> int | None:
    """Workers needed to load ``clips_per_s`` (e.g. a GPU's training rate) from ``source``.

    Extrapolated from the best per-worker rate measured with workers; None without such a row.
    """
    rates = [r.per_worker for r in rows if r.source == source and r.workers > 0]
    if not rates:
        return None
    return max(1, math.ceil(clips_per_s / max(rates)))
