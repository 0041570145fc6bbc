"""Turn a folder of class sub-folders of videos into a dataset: lists, labels and ``dataset.yaml``.

The layout is torchvision's ``DatasetFolder`` convention (UCF101's download is laid out this way)::

    FOLDER/<class>/<video>            one sub-folder per class, videos anywhere below it
    FOLDER/{train,val,test}/<class>/<video>   or the folder's own splits (val and test optional)

Without split folders the videos are split per class (stratified) with a seeded shuffle: the same
folder and seed give the same lists. Files that are not videos are skipped and counted. The output
folder gets ``{train,val,test}_videos.txt`` (paths relative to FOLDER), ``labels.csv`` (the sorted
class names) and ``dataset.yaml`` (:mod:`s4v_data.dataset_file`); with extraction also the frame
folders and ``{split}_rawframes.txt``, and ``dataset.yaml`` then points at the frames.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from s4v_data.annotations import VideoRecord, write_labels, write_rawframe_list, write_video_list

__all__ = [
    "SPLITS",
    "VIDEO_EXTENSIONS",
    "PrepareError",
    "ScannedFolder",
    "dataset_name_for",
    "parse_fractions",
    "scan_folder",
    "split_videos",
    "write_dataset_yaml",
    "write_lists",
]

# File extensions read as videos (what FFmpeg-based decoders open); everything else is skipped.
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}
)
SPLITS = ("train", "val", "test")


class PrepareError(ValueError):
    """The folder cannot become a dataset; the message says which class or video and why."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ScannedFolder:
    """The videos found under a folder, by split (``"all"`` without split folders) and class."""

    root: Path
    class_names: list[str]  # sorted; a class's label is its index
    videos: dict[str, dict[str, list[str]]]  # split -> class -> video paths relative to root
    skipped: list[str] = field(default_factory=list)  # files that are not videos

    @property
    def presplit(self) -> bool:
        """Whether the folder brought its own train/val/test sub-folders."""
        return "all" not in self.videos


def _videos_below(folder: Path, root: Path, skipped: list[str]) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        if path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith("."):
            found.append(relative)
        else:
            skipped.append(relative)
    return found


def _class_folders(folder: Path, root: Path, skipped: list[str]) -> dict[str, list[str]]:
    """Class name -> its videos, for every sub-folder of ``folder``; loose files are skipped."""
    classes = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            classes[entry.name] = _videos_below(entry, root, skipped)
        elif entry.is_file():
            skipped.append(entry.relative_to(root).as_posix())
    return classes


def scan_folder(folder: str | Path) -> ScannedFolder:
    """Find the classes and videos under ``folder`` (class sub-folders, or split folders of them).

    Raises:
        PrepareError: no class folder, a class without videos, or the same video in two splits.
    """
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise PrepareError(f"{root} is not a folder")
    skipped: list[str] = []
    if (root / "train").is_dir():
        videos = {
            split: _class_folders(root / split, root, skipped)
            for split in SPLITS
            if (root / split).is_dir()
        }
        for entry in sorted(root.iterdir()):
            if entry.name not in videos and not entry.name.startswith("."):
                skipped.append(entry.name + ("/" if entry.is_dir() else ""))
    else:
        videos = {"all": _class_folders(root, root, skipped)}
    class_names = sorted({name for classes in videos.values() for name in classes})
    if not class_names:
        raise PrepareError(f"{root} has no class sub-folders (expected FOLDER/<class>/<video>)")
    for split, classes in videos.items():
        where = root if split == "all" else root / split
        for name in class_names:
            if not classes.get(name) and (split in ("all", "train") or name in classes):
                raise PrepareError(
                    f"class {name!r} has no videos in {where / name} (video files end in "
                    f"{', '.join(sorted(VIDEO_EXTENSIONS))})"
                )
    _refuse_shared_videos(videos)
    spaced = [
        p
        for classes in videos.values()
        for ps in classes.values()
        for p in ps
        if re.search(r"\s", p)
    ]
    if spaced:
        raise PrepareError(
            f"{len(spaced)} video path(s) under {root} contain white space, which annotation lists "
            f"cannot hold (entries are space separated), e.g. {spaced[0]!r}: rename them "
            "(e.g. spaces to underscores)"
        )
    return ScannedFolder(root=root, class_names=class_names, videos=videos, skipped=skipped)


def _refuse_shared_videos(videos: Mapping[str, Mapping[str, list[str]]]) -> None:
    """The same file name under the same class in two split folders is one video in two splits."""
    seen: dict[tuple[str, str], str] = {}
    for classes in videos.values():
        for name, paths in classes.items():
            for path in paths:
                key = (name, Path(path).name)
                if key in seen:
                    raise PrepareError(
                        f"video {Path(path).name!r} of class {name!r} is in two splits: "
                        f"{seen[key]} and {path}"
                    )
                seen[key] = path


def parse_fractions(text: str) -> tuple[float, ...]:
    """``"0.8,0.1,0.1"`` -> train/val/test fractions (two or three, summing to 1)."""
    try:
        fractions = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise PrepareError(f"--split {text!r}: expected fractions such as 0.8,0.1,0.1") from None
    if len(fractions) not in (2, 3) or any(f < 0 for f in fractions) or fractions[0] <= 0:
        raise PrepareError(
            f"--split {text!r}: expected two or three fractions train,val[,test] with train > 0"
        )
    if abs(sum(fractions) - 1) > 1e-6:
        raise PrepareError(f"--split {text!r}: the fractions sum to {sum(fractions):g}, not 1")
    if fractions[1] <= 0:
        raise PrepareError(f"--split {text!r}: the validation fraction must be positive")
    return fractions


def split_videos(
    scanned: ScannedFolder, fractions: Sequence[float], seed: int
) -> dict[str, list[VideoRecord]]:
    """Video records per split: the folder's own splits, or a seeded stratified split.

    Each class is shuffled with its own generator (seeded by ``seed`` and the class name), so a
    class's split does not change when another class gains videos. A class gets at least one video
    in every split with a positive fraction, and the rest goes to training.

    Raises:
        PrepareError: a class has too few videos for the split.
    """
    labels = {name: index for index, name in enumerate(scanned.class_names)}
    if scanned.presplit:
        return {split: _records(classes, labels) for split, classes in scanned.videos.items()}
    names = SPLITS[: len(fractions)]
    out: dict[str, dict[str, list[str]]] = {split: {} for split in names}
    for name, paths in scanned.videos["all"].items():
        held_out = [max(1, round(len(paths) * f)) if f > 0 else 0 for f in fractions[1:]]
        if len(paths) - sum(held_out) < 1:
            needed = sum(held_out) + 1
            raise PrepareError(
                f"class {name!r} has {len(paths)} video(s); the split "
                f"{','.join(f'{f:g}' for f in fractions)} needs at least {needed} "
                "(one per split)"
            )
        order = sorted(paths)
        random.Random(f"{seed}/{name}").shuffle(order)
        start = 0
        for split, count in zip(names[1:], held_out, strict=True):
            out[split][name] = order[start : start + count]
            start += count
        out["train"][name] = order[start:]
    return {split: _records(classes, labels) for split, classes in out.items() if classes}


def _records(classes: Mapping[str, list[str]], labels: Mapping[str, int]) -> list[VideoRecord]:
    return sorted(
        (
            VideoRecord(path=path, label=labels[name])
            for name, paths in classes.items()
            for path in paths
        ),
        key=lambda r: (r.label, r.path),
    )


def dataset_name_for(folder: Path) -> str:
    """A dataset name from a folder name (letters, digits, ``_ . -``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder.name).strip("-.")
    return name or "my-dataset"


def write_lists(
    out: Path,
    splits: Mapping[str, Sequence[VideoRecord]],
    class_names: Sequence[str],
    *,
    rawframes: bool = False,
) -> dict[str, str]:
    """Write ``<split>_videos.txt`` (or ``_rawframes.txt``) and ``labels.csv``; split -> file name."""
    out.mkdir(parents=True, exist_ok=True)
    names = {}
    for split, records in splits.items():
        name = f"{split}_{'rawframes' if rawframes else 'videos'}.txt"
        (write_rawframe_list if rawframes else write_video_list)(out / name, records)
        names[split] = name
    write_labels(out / "labels.csv", class_names)
    return names


def write_dataset_yaml(
    out: Path,
    *,
    name: str,
    root: Path,
    lists: Mapping[str, str],
    num_classes: int,
    source: str,
    frame_template: str | None = None,
    recipe: str = "appearance",
    flip: bool = True,
    origin: str = "",
) -> Path:
    """Write ``out/dataset.yaml`` (commented, field order as :mod:`s4v_data.dataset_file`)."""
    lines = [
        f"# {origin}"
        if origin
        else "# A dataset for s4v (see the README's section 'Your own data').",
        f"name: {name}",
        "task: recognition",
        f"source: {source}",
    ]
    if frame_template is not None:
        lines.append(f"frame_template: '{frame_template}'")
    lines += [
        f"root: {_yaml_path(root)}  # list entries are relative to this folder",
        "lists:",
        *(f"  {split}: {lists[split]}" for split in SPLITS if split in lists),
        "labels: labels.csv",
        f"num_classes: {num_classes}",
        f"flip: {'true' if flip else 'false'}  # horizontal flip in training",
        "flip_swap: {}  # classes a flip turns into each other, e.g. {3: 4, 4: 3}",
        f"recipe: {recipe}  # appearance (Kinetics-style) or motion (Something-style)",
    ]
    path = out / "dataset.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _yaml_path(path: Path) -> str:
    """A path as a YAML scalar, quoted when plain YAML would misread it."""
    text = path.as_posix()
    if re.fullmatch(r"[A-Za-z0-9_./-]+", text):
        return text
    return "'" + text.replace("'", "''") + "'"
