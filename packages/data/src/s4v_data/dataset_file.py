"""``dataset.yaml``: a user's own dataset described in one file, without a registry entry.

Example (what ``s4v data prepare`` writes)::

    name: kitchen-actions         # runs, MLflow experiments and output folders use this name
    task: recognition             # or retrieval
    source: video                 # or rawframes (then frame_template names the frame files)
    lists:                        # annotation lists per split; test is optional
      train: train_videos.txt
      val: val_videos.txt
      test: test_videos.txt
    labels: labels.csv            # id,name
    num_classes: 5
    flip: true                    # horizontal flip in training
    flip_swap: {3: 4}             # classes that turn into each other when flipped
    recipe: appearance            # appearance (Kinetics-style) or motion (Something-style)

Relative paths resolve against the folder of the file; list entries are relative to ``root``
(default: that folder too). A retrieval dataset names a ``captions`` file instead of labels (CSV
``video,caption`` with one row per caption, or JSON ``{video: caption or [captions]}`` or a list of
``{"video", "caption"}`` objects); its lists hold one video per line, the video's path relative to
``root`` (a frame folder for rawframes). Every error names the file, the line and the field.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from s4v_data.annotations import AnnotationError, read_labels
from s4v_data.retrieval import CaptionedVideos, Split, read_id_list
from s4v_data.specs import DATASETS, TASK_DATASETS, DatasetSpec, RetrievalLayout

__all__ = [
    "RECIPE_BASES",
    "DatasetFile",
    "DatasetFileError",
    "is_dataset_file",
    "read_captions",
    "read_dataset_file",
]

# Which registered dataset's conventions (sampling, resize, grayscale, RandAugment) and run
# recipe a dataset file starts from.
RECIPE_BASES: dict[str, str] = {"appearance": "k400", "motion": "ssv2"}


class DatasetFileError(ValueError):
    """A dataset file that cannot be read or does not validate; the message names file and line."""


def is_dataset_file(dataset: str) -> bool:
    """Whether a ``--dataset`` value names a dataset file rather than a registered dataset."""
    return dataset.endswith((".yaml", ".yml")) or "/" in dataset or "\\" in dataset


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitLists(_Strict):
    """The annotation list of each split (relative to the dataset file's folder)."""

    train: Path
    val: Path
    test: Path | None = None  # None: the final test uses the val list


class DatasetFile(_Strict):
    """The contents of a ``dataset.yaml``, with its paths made absolute."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: Literal["recognition", "retrieval"] = "recognition"
    source: Literal["rawframes", "video"] = "video"
    frame_template: str = "img_{:05d}.jpg"  # 1-based frame file names (rawframes)
    root: Path | None = None  # the folder list entries are relative to; None: the file's folder
    lists: SplitLists
    labels: Path | None = None  # recognition: class names, CSV id,name
    num_classes: PositiveInt | None = None  # recognition: must match the labels file
    flip: bool = True
    # Label -> label under a horizontal flip (e.g. "left to right" <-> "right to left").
    flip_swap: dict[int, int] = Field(default_factory=dict)
    recipe: Literal["appearance", "motion"] = "appearance"
    captions: Path | None = None  # retrieval: CSV video,caption or JSON
    path: Path | None = Field(default=None, exclude=True)  # the file itself (set by the reader)

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) of every rule that spans fields; empty when the file is consistent."""
        found = []
        try:
            self.frame_template.format(1)
        except (IndexError, KeyError, ValueError) as err:
            found.append(("frame_template", f"{self.frame_template!r} is invalid: {err}"))
        if self.name in {name for registry in TASK_DATASETS.values() for name in registry}:
            found.append(("name", f"{self.name!r} is a registered dataset; choose another name"))
        if self.task == "recognition":
            for field in ("labels", "num_classes"):
                if getattr(self, field) is None:
                    found.append((field, "required for a recognition dataset"))
            if self.captions is not None:
                found.append(("captions", "only a retrieval dataset has captions (task)"))
        else:
            if self.captions is None:
                found.append(("captions", "required for a retrieval dataset"))
            for field in ("labels", "num_classes"):
                if getattr(self, field) is not None:
                    found.append((field, "only a recognition dataset has classes (task)"))
        if self.flip_swap and not self.flip:
            found.append(("flip_swap", "needs flip: true"))
        for a, b in self.flip_swap.items():
            if a == b or self.flip_swap.get(b, a) != a:
                found.append(("flip_swap", f"{a}: {b} is not a swap of two classes"))
            elif self.num_classes is not None and not (
                0 <= a < self.num_classes and 0 <= b < self.num_classes
            ):
                found.append(("flip_swap", f"{a}: {b} names a class outside 0..num_classes-1"))
        return found

    @property
    def media_root(self) -> Path:
        """The folder the list entries are relative to."""
        return self.root if self.root is not None else Path(".")

    def split_list(self, split: str) -> Path:
        """The list of ``split`` (train, val or test; test falls back to val)."""
        if split == "train":
            return self.lists.train
        if split == "test" and self.lists.test is not None:
            return self.lists.test
        return self.lists.val

    def flip_pairs(self) -> tuple[tuple[int, int], ...]:
        """The swapped classes as ordered pairs, each pair once."""
        return tuple(sorted({(min(a, b), max(a, b)) for a, b in self.flip_swap.items()}))

    def spec(self) -> DatasetSpec:
        """The recognition conventions: the recipe base's sampling and resizing, this file's rest."""
        base = DATASETS[RECIPE_BASES[self.recipe]]
        pairs = self.flip_pairs()
        return DatasetSpec(
            name=self.name,
            num_classes=self.num_classes or 1,
            frame_template=self.frame_template,
            sampling=base.sampling,
            resize=base.resize,
            resize_size=base.resize_size,
            crop_scale=base.crop_scale,
            flip="none" if not self.flip else ("swap-labels" if pairs else "plain"),
            flip_pairs=pairs,
            grayscale_p=base.grayscale_p,
            rand_augment=base.rand_augment,
        )

    def layout(self) -> RetrievalLayout:
        """The retrieval layout: list entries are paths relative to ``root``."""
        return RetrievalLayout(
            name=self.name,
            read=lambda _root, split: self.read_split(split),
            frame_dir="{video_id}",
            video_file="{video_id}",
            frame_template=self.frame_template,
            test_sampling="uniform-stride",
        )

    def read_split(self, split: Split) -> CaptionedVideos:
        """The videos of a retrieval split with their captions."""
        if self.captions is None:
            raise DatasetFileError(f"{self.path}: captions: required for a retrieval dataset")
        captions = read_captions(self.captions)
        list_path = self.split_list(split)
        ids = read_id_list(list_path)
        for lineno, video in ids:
            if not captions.get(video):
                raise AnnotationError(
                    f"{list_path}:{lineno}: video {video!r} has no caption in {self.captions}"
                )
        return CaptionedVideos(
            video_ids=tuple(video for _, video in ids),
            captions=tuple(tuple(captions[video]) for _, video in ids),
        )


# --- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Lines:
    """1-based line of every key path in a YAML document."""

    lines: dict[tuple[str, ...], int]

    def of(self, loc: tuple[Any, ...]) -> int | None:
        found, path = None, ()
        for part in loc:
            path = (*path, str(part))
            if path not in self.lines:
                break
            found = self.lines[path]
        return found


def _walk(node: yaml.Node, path: tuple[str, ...], source: str) -> Iterator[tuple[tuple, int]]:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            line = key.start_mark.line + 1
            if key.value in seen:
                raise DatasetFileError(
                    f"{source}:{line}: {'.'.join((*path, key.value))} repeats line "
                    f"{seen[key.value]}"
                )
            seen[key.value] = line
            yield (*path, key.value), line
            yield from _walk(value, (*path, key.value), source)


def read_dataset_file(path: str | Path) -> DatasetFile:
    """Read and validate a ``dataset.yaml``; relative paths resolve against its folder.

    Raises:
        DatasetFileError: the file is missing, not YAML, repeats a key, or a field is invalid;
            one line per problem, ``file:line: field: message``.
    """
    path = Path(path).expanduser().resolve()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetFileError(f"{path}: dataset file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetFileError(f"{path}: cannot read the dataset file: {err}") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DatasetFileError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise DatasetFileError(f"{path}: a dataset file is a mapping with name, lists, ...")
    lines = _Lines(dict(_walk(node, (), str(path))))
    try:
        parsed = DatasetFile.model_validate(data)
    except ValidationError as err:
        problems = []
        for item in err.errors():
            loc = tuple(item["loc"])
            line = lines.of(loc)
            where = f"{path}:{line}" if line else str(path)
            field = ".".join(str(part) for part in loc) or "(top level)"
            message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
            problems.append(f"{where}: {field}: {message.removeprefix('Value error, ')}")
        raise DatasetFileError("\n".join(problems)) from None
    problems = []
    for field, message in parsed.problems():
        line = lines.of((field,))
        problems.append(
            f"{path}:{line}: {field}: {message}" if line else f"{path}: {field}: {message}"
        )
    if problems:
        raise DatasetFileError("\n".join(problems))
    return _resolved(parsed, path, lines)


def _resolved(parsed: DatasetFile, path: Path, lines: _Lines) -> DatasetFile:
    """Paths made absolute and the label file checked against ``num_classes``."""
    folder = path.parent

    def absolute(value: Path | None) -> Path | None:
        return None if value is None else (folder / value.expanduser()).resolve()

    lists = SplitLists(
        train=absolute(parsed.lists.train),
        val=absolute(parsed.lists.val),
        test=absolute(parsed.lists.test),
    )
    resolved = parsed.model_copy(
        update={
            "root": absolute(parsed.root) or folder,
            "lists": lists,
            "labels": absolute(parsed.labels),
            "captions": absolute(parsed.captions),
            "path": path,
        }
    )
    if resolved.labels is not None and resolved.labels.is_file():
        try:
            names = read_labels(resolved.labels)
        except AnnotationError as err:
            raise DatasetFileError(f"{path}:{lines.of(('labels',))}: labels: {err}") from None
        if len(names) != resolved.num_classes:
            raise DatasetFileError(
                f"{path}:{lines.of(('num_classes',))}: num_classes: {resolved.num_classes} but "
                f"{resolved.labels} lists {len(names)} classes"
            )
    return resolved


def read_captions(path: Path) -> dict[str, list[str]]:
    """Video -> captions from a CSV (``video,caption`` header, a row per caption) or a JSON file.

    JSON may be ``{video: caption}``, ``{video: [captions]}`` or ``[{"video", "caption"}, ...]``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: captions file not found")
    captions: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as err:
            raise AnnotationError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if isinstance(data, dict):
            items = [(video, caps) for video, caps in data.items()]
        elif isinstance(data, list) and all(
            isinstance(row, dict) and {"video", "caption"} <= row.keys() for row in data
        ):
            items = [(row["video"], row["caption"]) for row in data]
        else:
            raise AnnotationError(
                f"{path}: expected {{video: caption or [captions]}} or a list of "
                '{"video": ..., "caption": ...} objects'
            )
        for video, caps in items:
            texts = [caps] if isinstance(caps, str) else caps
            if not isinstance(texts, list) or not all(isinstance(c, str) for c in texts):
                raise AnnotationError(f"{path}: captions of {video!r} are not strings")
            captions.setdefault(str(video), []).extend(c.strip() for c in texts if c.strip())
        return captions
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        if [name.strip() for name in reader.fieldnames or []][:2] != ["video", "caption"]:
            raise AnnotationError(f"{path}:1: expected the header 'video,caption'")
        for row in reader:
            video, caption = (row.get("video") or "").strip(), (row.get("caption") or "").strip()
            if not video or not caption:
                raise AnnotationError(f"{path}:{reader.line_num}: empty video or caption")
            captions.setdefault(video, []).append(caption)
    return captions
