"""``s4v data``: generate the synthetic dataset, extract frames from videos, check a dataset."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from s4v_orchestration.commands.data_prepare import prepare
from s4v_orchestration.commands.options import dataset_names
from s4v_orchestration.paths import default_cache_dir

data_app = typer.Typer(
    help="Prepare and check datasets: your own videos, synthetic videos, frame extraction, "
    "validation.",
    no_args_is_help=True,
)
data_app.command("prepare")(prepare)
console = Console()

MAX_LISTED = 20  # problems printed in full; the rest are counted


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


@data_app.command("synth")
def synth(
    out_dir: Annotated[
        Path | None,
        typer.Argument(help="Dataset folder (default: <cache dir>/synthetic)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 0,
    videos_per_class: Annotated[
        int, typer.Option(help="Videos per class (train + val), 8 classes.")
    ] = 60,
    num_frames: Annotated[int, typer.Option(help="Frames per video.")] = 16,
    size: Annotated[int, typer.Option(help="Frame height and width in pixels (even).")] = 40,
    val_fraction: Annotated[float, typer.Option(help="Share of each class in val.")] = 0.2,
    captions: Annotated[
        bool, typer.Option(help="Also write captions.json and train/val id lists (retrieval).")
    ] = False,
) -> None:
    """Generate the synthetic motion dataset: H.264 videos, JPEG frames, lists and labels."""
    from s4v_data.synthetic import generate

    root = out_dir if out_dir is not None else default_cache_dir() / "synthetic"
    try:
        with console.status("generating the synthetic dataset"):
            info = generate(
                root,
                seed=seed,
                videos_per_class=videos_per_class,
                num_frames=num_frames,
                size=size,
                val_fraction=val_fraction,
                captions=captions,
            )
    except (ValueError, FileExistsError) as e:
        raise _fail(str(e)) from None
    table = Table(title=f"synthetic dataset in {info.root}", show_header=False)
    for label, path in [
        ("rawframe lists", f"{info.train_list.name}, {info.val_list.name}"),
        ("video lists", f"{info.train_video_list.name}, {info.val_video_list.name}"),
        ("labels", info.labels_csv.name),
        ("captions", info.captions_json.name if info.captions_json else "-"),
    ]:
        table.add_row(label, path)
    table.add_row("classes", ", ".join(info.class_names))
    table.add_row("videos", f"{videos_per_class} per class, {num_frames} frames of {size}x{size}")
    console.print(table)


@data_app.command("extract")
def extract(
    video_dir: Annotated[
        Path, typer.Argument(help="Folder the video list's paths are relative to.")
    ],
    out_dir: Annotated[Path, typer.Argument(help="Output folder for the frames (the cache).")],
    list_file: Annotated[
        Path, typer.Option("--list", help="Video list: 'relative_video_path label' per line.")
    ],
    output_list: Annotated[
        Path | None,
        typer.Option(help="Rawframe list to write (default: OUT_DIR/<list>_rawframes.txt)."),
    ] = None,
    fps: Annotated[
        float | None, typer.Option(help="Resample to this frame rate (default: keep all frames).")
    ] = None,
    short_side: Annotated[
        int, typer.Option(help="Resize so the shorter side has this many pixels (0: keep).")
    ] = 256,
    frame_template: Annotated[
        str, typer.Option(help="Frame file names, 1-based (SSv2: '{:06d}.jpg').")
    ] = "img_{:05d}.jpg",
    quality: Annotated[int, typer.Option(help="JPEG quality 1-100.")] = 90,
    workers: Annotated[int, typer.Option(help="Videos decoded in parallel.")] = 2,
    timeout: Annotated[
        float, typer.Option(help="Seconds per video before its decoder is killed.")
    ] = 120.0,
    strict: Annotated[
        bool, typer.Option(help="Exit non-zero if any video could not be extracted.")
    ] = False,
) -> None:
    """Decode videos into JPEG frame folders and write the rawframe list with true frame counts.

    Resumable: finished videos are skipped; an interrupted video leaves no folder behind.
    """
    from s4v_data import AnnotationError, read_video_list, write_rawframe_list
    from s4v_data.extract import CacheMismatchError, ExtractConfig, extract_videos

    try:
        records = read_video_list(list_file)
        config = ExtractConfig(
            fps=fps,
            short_side=short_side or None,
            frame_template=frame_template,
            jpeg_quality=quality,
        )
    except (AnnotationError, FileNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    if not records:
        raise _fail(f"{list_file} lists no videos")
    if not video_dir.is_dir():
        raise _fail(f"video folder {video_dir} does not exist")
    if workers < 1:
        raise _fail("--workers must be at least 1")
    # Per-video warnings would break the progress bar; the summary lists the failures.
    logging.getLogger("s4v_data.extract").setLevel(logging.ERROR)
    with _progress() as progress:
        task = progress.add_task("extracting", total=len(records))
        try:
            report = extract_videos(
                records,
                video_dir,
                out_dir,
                config,
                workers=workers,
                timeout=timeout,
                on_result=lambda _: progress.advance(task),
            )
        except (CacheMismatchError, ValueError) as e:
            raise _fail(str(e)) from None
    if output_list is None:
        stem = list_file.stem.removesuffix("_videos").removesuffix("_video")
        output_list = out_dir / f"{stem}_rawframes.txt"
    usable = report.records()
    if usable:
        write_rawframe_list(output_list, usable)
    table = Table(title=f"frames in {out_dir}", show_header=False)
    table.add_row("extracted now", str(report.count("extracted")))
    table.add_row("already there (skipped)", str(report.count("skipped")))
    table.add_row("unreadable", str(report.count("failed")))
    table.add_row("frames listed", str(sum(r.num_frames or 0 for r in usable)))
    table.add_row("rawframe list", str(output_list) if usable else "not written (no frames)")
    console.print(table)
    failed = report.failed
    if failed:
        console.print(f"[yellow]{len(failed)} unreadable videos[/yellow]:")
        for result in failed[:MAX_LISTED]:
            console.print(f"  {result.path}: {result.error}", soft_wrap=True, highlight=False)
        if len(failed) > MAX_LISTED:
            console.print(f"  ... and {len(failed) - MAX_LISTED} more")
    if not usable:
        raise _fail("no video could be extracted", code=1)
    if strict and failed:
        raise _fail(f"{len(failed)} videos could not be extracted (--strict)", code=1)


@data_app.command("check")
def check(
    list_file: Annotated[
        Path | None,
        typer.Option(
            "--list", help="Rawframe list or video list to validate (not with a dataset file)."
        ),
    ] = None,
    root: Annotated[
        Path | None, typer.Option(help="Folder the list's paths are relative to.")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Label CSV (id,name); labels must be among its ids.")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help=f"Dataset ({dataset_names('recognition')}) for frame names and classes, or a "
            "dataset file path/to/dataset.yaml: then every list it names is checked."
        ),
    ] = None,
    frame_template: Annotated[
        str | None,
        typer.Option(help="Frame file names (default: the preset's, or img_{:05d}.jpg)."),
    ] = None,
    depth: Annotated[
        str,
        typer.Option(
            help="Decode 'none', the first and last frame ('ends'), or 'all'; the frames "
            "opened must all have one size (a rawframe folder)."
        ),
    ] = "ends",
    timeout: Annotated[float, typer.Option(help="Seconds per video decode.")] = 60.0,
) -> None:
    """Validate a dataset: missing folders, frame counts, unreadable files, frames of another size,
    labels out of range."""
    from s4v_data import DATASETS, AnnotationError, read_labels
    from s4v_data.dataset_file import DatasetFileError, is_dataset_file, read_dataset_file

    if depth not in ("none", "ends", "all"):
        raise _fail(f"--depth must be none, ends or all, not {depth!r}")
    if dataset is not None and is_dataset_file(dataset):
        if list_file is not None or root is not None:
            raise _fail("--list and --root come from the dataset file; give one or the other")
        try:
            described = read_dataset_file(dataset)
            if described.task == "retrieval":
                if _check_retrieval(described):
                    raise typer.Exit(1)
                return
            num_classes = described.num_classes
            if described.labels is not None:
                num_classes = len(read_labels(described.labels))
        except (DatasetFileError, AnnotationError, FileNotFoundError) as e:
            raise _fail(str(e)) from None
        lists = dict.fromkeys([described.lists.train, described.lists.val, described.lists.test])
        jobs = [
            (path, described.media_root, described.frame_template, num_classes)
            for path in lists
            if path is not None
        ]
    else:
        if list_file is None or root is None:
            raise _fail("give --list and --root, or --dataset path/to/dataset.yaml")
        spec = None
        if dataset is not None:
            if dataset not in DATASETS:
                raise _fail(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
            spec = DATASETS[dataset]
        template = frame_template or (spec.frame_template if spec else "img_{:05d}.jpg")
        try:
            num_classes = (
                len(read_labels(labels)) if labels else (spec.num_classes if spec else None)
            )
        except (AnnotationError, FileNotFoundError) as e:
            raise _fail(str(e)) from None
        jobs = [(list_file, root, template, num_classes)]
    problems = [_check_list(*job, depth=_depth(depth), timeout=timeout) for job in jobs]
    if any(problems):
        raise typer.Exit(1)


def _check_retrieval(described) -> bool:
    """Each split of a retrieval dataset file: captions for every video, every video on disk."""
    problems = False
    for split in ("train", "val", "test"):
        if split == "test" and described.lists.test is None:
            continue
        videos = described.read_split(split)
        media = described.layout()
        template = media.frame_dir if described.source == "rawframes" else media.video_file
        missing = [
            video
            for video in videos.video_ids
            if not (described.media_root / template.format(video_id=video, split=split)).exists()
        ]
        table = Table(
            title=f"{described.split_list(split)} ({described.source})", show_header=False
        )
        table.add_row("videos", str(videos.num_videos))
        table.add_row("captions", str(videos.num_captions))
        table.add_row("missing", str(len(missing)))
        console.print(table)
        for video in missing[:MAX_LISTED]:
            console.print(f"  missing: {described.media_root / video}", soft_wrap=True)
        problems = problems or bool(missing)
    return problems


def _check_list(
    list_file: Path,
    root: Path,
    template: str,
    num_classes: int | None,
    *,
    depth: Literal["none", "ends", "all"],
    timeout: float,
) -> bool:
    """Check one list and print its table; whether it has problems."""
    from s4v_data import AnnotationError
    from s4v_data.check import check_dataset

    try:
        with _progress() as progress:
            task = progress.add_task("checking", total=None)
            report = check_dataset(
                list_file,
                root,
                frame_template=template,
                num_classes=num_classes,
                depth=depth,
                timeout=timeout,
                on_entry=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except (AnnotationError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    table = Table(title=f"{list_file} ({report.source})", show_header=False)
    table.add_row("entries", str(report.entries))
    table.add_row("ok", str(report.ok))
    for kind in ("missing", "frame-count", "unreadable", "frame-size", "label"):
        table.add_row(kind, str(report.count(kind)))
    table.add_row("frames", str(report.frames))
    table.add_row("classes checked", str(num_classes) if num_classes else "no (give --labels)")
    if report.extraction:
        table.add_row("extracted with", ", ".join(f"{k}={v}" for k, v in report.extraction.items()))
    console.print(table)
    for problem in report.problems[:MAX_LISTED]:
        console.print(
            f"  {problem.kind}: {problem.path}: {problem.detail}", soft_wrap=True, highlight=False
        )
    if len(report.problems) > MAX_LISTED:
        console.print(f"  ... and {len(report.problems) - MAX_LISTED} more")
    return bool(report.problems)


def _depth(value: str) -> Literal["none", "ends", "all"]:
    return value  # type: ignore[return-value]  # validated above
