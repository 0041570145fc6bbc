"""``s4v data prepare``: a folder of class sub-folders of videos -> lists, labels, dataset.yaml."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()

MAX_LISTED = 20  # problems printed in full; the rest are counted


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def prepare(
    folder: Annotated[
        Path,
        typer.Argument(
            help="Folder with one sub-folder of videos per class (FOLDER/<class>/<video>), or "
            "with train/, val/, test/ sub-folders of such class folders."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder for the lists, labels.csv, dataset.yaml.")
    ],
    split: Annotated[
        str,
        typer.Option(
            help="Train,val[,test] fractions of each class when FOLDER has no split folders."
        ),
    ] = "0.8,0.1,0.1",
    seed: Annotated[
        int, typer.Option(help="Seed of the split; the same folder and seed give the same lists.")
    ] = 0,
    name: Annotated[
        str | None,
        typer.Option(help="Dataset name for runs and MLflow (default: the folder's name)."),
    ] = None,
    recipe: Annotated[
        str,
        typer.Option(
            help="Reference recipe to start from: appearance (Kinetics-style, the default) or "
            "motion (Something-Something-style, for classes told apart by motion direction)."
        ),
    ] = "appearance",
    flip: Annotated[
        bool,
        typer.Option(
            "--flip/--no-flip",
            help="Allow horizontal flips in training (turn off when left and right matter).",
        ),
    ] = True,
    extract: Annotated[
        bool,
        typer.Option(
            "--extract",
            help="Also extract JPEG frames into OUT/rawframes (resumable) and train from them.",
        ),
    ] = False,
    short_side: Annotated[
        int, typer.Option(help="With --extract: shorter frame side in pixels (0: keep).")
    ] = 256,
    workers: Annotated[int, typer.Option(help="With --extract: videos decoded in parallel.")] = 2,
    timeout: Annotated[
        float, typer.Option(help="With --extract: seconds per video before it counts as broken.")
    ] = 120.0,
) -> None:
    """Make a dataset from a folder of videos: seeded stratified split, lists, labels, dataset.yaml.

    Then train with `s4v run recognition --dataset OUT/dataset.yaml`.
    """
    from s4v_data.dataset_file import DatasetFileError, read_dataset_file
    from s4v_data.prepare import (
        PrepareError,
        dataset_name_for,
        parse_fractions,
        scan_folder,
        split_videos,
        write_dataset_yaml,
        write_lists,
    )

    if recipe not in ("appearance", "motion"):
        raise _fail(f"--recipe must be appearance or motion, not {recipe!r}")
    if workers < 1:
        raise _fail("--workers must be at least 1")
    out = out.expanduser().resolve()
    try:
        fractions = parse_fractions(split)
        scanned = scan_folder(folder)
        splits = split_videos(scanned, fractions, seed)
        if out == scanned.root or scanned.root in out.parents:
            raise PrepareError(f"--out {out} must not be inside {scanned.root}")
    except PrepareError as err:
        raise _fail(str(err)) from None
    if "val" not in splits and "test" not in splits:
        raise _fail(f"{scanned.root}/train needs a val/ or test/ folder beside it")
    names = write_lists(out, splits, scanned.class_names)
    root, source, template = scanned.root, "video", None
    failed: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    if extract:
        splits, failed, counts = _extract(scanned.root, out, splits, short_side, workers, timeout)
        names = write_lists(out, splits, scanned.class_names, rawframes=True)
        root, source, template = out / "rawframes", "rawframes", "img_{:05d}.jpg"
    lists = {"val": names.get("val", names.get("test")), **names}
    how = "its own split folders" if scanned.presplit else f"split {split} with seed {seed}"
    dataset_yaml = write_dataset_yaml(
        out,
        name=name or dataset_name_for(scanned.root),
        root=root,
        lists=lists,
        num_classes=len(scanned.class_names),
        source=source,
        frame_template=template,
        recipe=recipe,
        flip=flip,
        origin=f"Written by `s4v data prepare` from {scanned.root} ({how}).",
    )
    try:
        read_dataset_file(dataset_yaml)  # what `s4v run --dataset` will read
    except DatasetFileError as err:
        raise _fail(str(err)) from None
    _summary(scanned, splits, dataset_yaml, failed, counts)


def _extract(
    root: Path,
    out: Path,
    splits: dict,
    short_side: int,
    workers: int,
    timeout: float,
) -> tuple[dict, list[tuple[str, str]], dict[str, int]]:
    """Frames of every listed video in ``out/rawframes``; broken videos leave the lists.

    Returns the rawframe records per split, the broken videos with their errors, and how many
    videos were extracted now and how many were already there (a rerun resumes).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from s4v_data.annotations import VideoRecord
    from s4v_data.extract import CacheMismatchError, ExtractConfig, extract_videos

    logging.getLogger("s4v_data.extract").setLevel(logging.ERROR)  # the summary lists failures
    records = [r for split in splits.values() for r in split]
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
    )
    with progress:
        task = progress.add_task("extracting frames", total=len(records))
        try:
            report = extract_videos(
                records,
                root,
                out / "rawframes",
                ExtractConfig(short_side=short_side or None),
                workers=workers,
                timeout=timeout,
                on_result=lambda _: progress.advance(task),
            )
        except (CacheMismatchError, ValueError) as err:
            raise _fail(str(err)) from None
    by_path = {r.path: r for r in report.results}
    extracted = {
        split: [
            VideoRecord(
                path=by_path[r.path].frame_dir, num_frames=by_path[r.path].num_frames, label=r.label
            )
            for r in records_
            if by_path[r.path].status != "failed"
        ]
        for split, records_ in splits.items()
    }
    failed = [(r.path, r.error or "unreadable") for r in report.failed]
    empty = [split for split, records_ in extracted.items() if not records_]
    if empty:
        raise _fail(f"no video of the {', '.join(empty)} split could be extracted", code=1)
    counts = {"extracted now": report.count("extracted"), "already there": report.count("skipped")}
    return extracted, failed, counts


def _summary(
    scanned,
    splits: dict,
    dataset_yaml: Path,
    failed: list[tuple[str, str]],
    counts: dict[str, int],
) -> None:
    table = Table(title=f"dataset {dataset_yaml}", show_header=False)
    table.add_row("classes", str(len(scanned.class_names)))
    for split, records in splits.items():
        table.add_row(split, f"{len(records)} videos")
    table.add_row("skipped (not videos)", str(len(scanned.skipped)))
    for what, count in counts.items():
        table.add_row(f"frames {what}", f"{count} videos")
    if failed:
        table.add_row("broken (left out)", str(len(failed)))
    console.print(table)
    for path, error in failed[:MAX_LISTED]:
        console.print(f"  broken: {path}: {error}", soft_wrap=True, highlight=False)
    if len(failed) > MAX_LISTED:
        console.print(f"  ... and {len(failed) - MAX_LISTED} more")
    console.print(
        f"train with: s4v run recognition --dataset {dataset_yaml}", soft_wrap=True, highlight=False
    )
