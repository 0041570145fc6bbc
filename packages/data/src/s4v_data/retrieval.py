"""Text-video retrieval annotations in the CLIP4Clip layouts, and retrieval frame sampling.

Side4Video's retrieval code (github.com/HJYao00/Side4Video at 5d723523, ``Retrieval/``) inherits
CLIP4Clip's data layouts, which the field reuses verbatim:

* **MSR-VTT**: ``MSRVTT_data.json`` (``{"videos": [...], "sentences": [{"video_id", "caption"}]}``),
  the 9k train list ``MSRVTT_train.9k.csv`` (column ``video_id``; every (video, caption) pair of the
  JSON is a sample) and the 1k-A test ``MSRVTT_JSFUSION_test.csv`` (columns ``video_id`` and
  ``sentence``; one caption per video). The reference validates on the test file.
* **MSVD**: ``{train,val,test}_list.txt`` (one video id per line) and ``raw-captions.pkl`` (video id ->
  list of token lists; a caption is its tokens joined by spaces). Many captions per video.
* **VATEX**: ``{train,val,test}_list.txt`` and ``vatex_data.json`` (video id -> ``{"enCap": [...]}``).
  Many captions per video.
* **synthetic**: the captioned set of ``s4v_data.synthetic.generate(captions=True)``
  (``captions.json`` and ``{train,val}_ids.txt``), so that demos and tests need no download.

Frames are pre-extracted as ``<frames>/<video_id>/img_%05d.jpg`` (or decoded from the videos). The
sampling functions implement the reference's (``Retrieval/dataloaders/rawframes_util.py``,
``RawFramesExtractorCV2``): a random frame per segment for training (``--strategy 3``),
every ``n // T``-th frame thinned to ``T`` for MSR-VTT/MSVD test (``--strategy 1`` with
``--slice_framepos 2``), segment centres for VATEX test (``--strategy 4``).

Defaults: 12 frames per video, 32 text tokens (start + at most 30 word pieces + end).
"""

from __future__ import annotations

import csv
import json
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from s4v_data.annotations import AnnotationError

DEFAULT_NUM_FRAMES = 12
DEFAULT_MAX_WORDS = 32

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")


# --- the parsed form -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaptionedVideos:
    """The videos of one split and their captions, in file order.

    ``captions[i]`` holds every caption of ``video_ids[i]`` (at least one). Captions are numbered
    video by video (all of video 0's first), which is the order :meth:`pairs` and
    :meth:`text_to_video` use and the order retrieval metrics expect.
    """

    video_ids: tuple[str, ...]
    captions: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.video_ids) != len(self.captions):
            raise ValueError("video_ids and captions must have the same length")
        if len(set(self.video_ids)) != len(self.video_ids):
            raise ValueError("video ids must be unique")
        if any(not caps for caps in self.captions):
            raise ValueError("every video needs at least one caption")

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    @property
    def num_captions(self) -> int:
        return sum(len(caps) for caps in self.captions)

    @property
    def multi_caption(self) -> bool:
        return any(len(caps) > 1 for caps in self.captions)

    def pairs(self) -> list[tuple[int, str]]:
        """Every (video index, caption), grouped by video."""
        return [(i, cap) for i, caps in enumerate(self.captions) for cap in caps]

    def text_to_video(self) -> list[int]:
        """The video index of every caption, in :meth:`pairs` order."""
        return [i for i, caps in enumerate(self.captions) for _ in caps]


def _grouped(ids_in_order: list[str], captions: dict[str, list[str]]) -> CaptionedVideos:
    return CaptionedVideos(
        video_ids=tuple(ids_in_order),
        captions=tuple(tuple(captions[vid]) for vid in ids_in_order),
    )


# --- small readers ---------------------------------------------------------------------------------


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    return path


def read_id_list(path: Path) -> list[tuple[int, str]]:
    """Video ids of a split list (one per line, blanks skipped) as ``(line number, id)``."""
    ids, seen = [], {}
    for lineno, line in enumerate(_require(path).read_text().splitlines(), start=1):
        vid = line.strip()
        if not vid:
            continue
        if vid in seen:
            raise AnnotationError(f"{path}:{lineno}: video id {vid!r} repeats line {seen[vid]}")
        seen[vid] = lineno
        ids.append((lineno, vid))
    if not ids:
        raise AnnotationError(f"{path}: no video ids")
    return ids


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    with _require(path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise AnnotationError(
                f"{path}:1: missing column(s) {', '.join(missing)} (header: {reader.fieldnames})"
            )
        return [(reader.line_num, row) for row in reader]


def _read_json(path: Path) -> object:
    try:
        return json.loads(_require(path).read_text())
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err


_BUILTIN_CONTAINERS = ("dict", "list", "tuple", "set", "frozenset", "str", "unicode")


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles builtin containers, strings and numbers only; refuses every other class.

    A pickle can name any importable callable and run it while loading; caption files only ever
    need dicts, lists, tuples and strings, which pickle builds without looking any class up.
    """

    _ALLOWED = frozenset(
        {(module, name) for module in ("builtins", "__builtin__") for name in _BUILTIN_CONTAINERS}
        | {("collections", "OrderedDict")}
    )

    def __init__(self, file, path: Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise AnnotationError(
            f"{self._path}: refusing to unpickle {module}.{name}; caption pickles may only "
            "hold dicts, lists and strings"
        )


def load_plain_pickle(path: Path) -> object:
    """Load a pickle that holds only builtin containers and strings (never runs foreign code)."""
    with _require(path).open("rb") as handle:
        try:
            return _PlainDataUnpickler(handle, path).load()
        except (pickle.UnpicklingError, EOFError) as err:
            raise AnnotationError(f"{path}: not a readable pickle ({err})") from err


def _captions_for(
    ids: list[tuple[int, str]], captions: dict[str, list[str]], list_path: Path, source: Path
) -> CaptionedVideos:
    for lineno, vid in ids:
        if not captions.get(vid):
            raise AnnotationError(f"{list_path}:{lineno}: video {vid!r} has no caption in {source}")
    return _grouped([vid for _, vid in ids], captions)


# --- MSR-VTT ---------------------------------------------------------------------------------------


def read_msrvtt_captions(data_json: Path) -> dict[str, list[str]]:
    """Video id -> captions from ``MSRVTT_data.json`` (the ``sentences`` list, in file order)."""
    data = _read_json(data_json)
    if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
        raise AnnotationError(f"{data_json}: expected an object with a 'sentences' list")
    captions: dict[str, list[str]] = {}
    for index, sentence in enumerate(data["sentences"]):
        if not isinstance(sentence, dict) or not {"video_id", "caption"} <= sentence.keys():
            raise AnnotationError(
                f"{data_json}: sentences[{index}] needs 'video_id' and 'caption' fields"
            )
        captions.setdefault(str(sentence["video_id"]), []).append(str(sentence["caption"]))
    return captions


def read_msrvtt_train(train_csv: Path, data_json: Path) -> CaptionedVideos:
    """The videos of a train CSV (column ``video_id``) with all their captions from the JSON."""
    rows = _read_csv(train_csv, ("video_id",))
    ids, seen = [], set()
    for lineno, row in rows:
        vid = row["video_id"].strip()
        if vid and vid not in seen:
            seen.add(vid)
            ids.append((lineno, vid))
    if not ids:
        raise AnnotationError(f"{train_csv}: no video ids")
    return _captions_for(ids, read_msrvtt_captions(data_json), train_csv, data_json)


def read_msrvtt_test(test_csv: Path) -> CaptionedVideos:
    """The 1k-A ``JSFUSION`` test: one ``(video_id, sentence)`` row per caption."""
    captions: dict[str, list[str]] = {}
    for lineno, row in _read_csv(test_csv, ("video_id", "sentence")):
        vid, sentence = row["video_id"].strip(), row["sentence"].strip()
        if not vid or not sentence:
            raise AnnotationError(f"{test_csv}:{lineno}: empty video_id or sentence")
        captions.setdefault(vid, []).append(sentence)
    if not captions:
        raise AnnotationError(f"{test_csv}: no rows")
    return _grouped(list(captions), captions)


# --- MSVD ------------------------------------------------------------------------------------------


def read_msvd_captions(captions_pkl: Path) -> dict[str, list[str]]:
    """Video id -> captions from ``raw-captions.pkl`` (each caption a list of tokens)."""
    raw = load_plain_pickle(captions_pkl)
    if not isinstance(raw, dict):
        raise AnnotationError(f"{captions_pkl}: expected a dict of video id -> token lists")
    captions: dict[str, list[str]] = {}
    for vid, token_lists in raw.items():
        if not isinstance(token_lists, list) or not all(
            isinstance(tokens, list | tuple) and all(isinstance(t, str) for t in tokens)
            for tokens in token_lists
        ):
            raise AnnotationError(f"{captions_pkl}: captions of {vid!r} are not lists of tokens")
        captions[str(vid)] = [" ".join(tokens) for tokens in token_lists if tokens]
    return captions


def read_msvd(root: Path, split: Split) -> CaptionedVideos:
    """MSVD ``<root>/<split>_list.txt`` with captions from ``<root>/raw-captions.pkl``."""
    list_path, pkl = root / f"{split}_list.txt", root / "raw-captions.pkl"
    return _captions_for(read_id_list(list_path), read_msvd_captions(pkl), list_path, pkl)


# --- VATEX -----------------------------------------------------------------------------------------


def read_vatex_captions(data_json: Path) -> dict[str, list[str]]:
    """Video id -> English captions from ``vatex_data.json`` (``{id: {"enCap": [...]}}``)."""
    data = _read_json(data_json)
    if not isinstance(data, dict):
        raise AnnotationError(f"{data_json}: expected an object of video id -> {{'enCap': [...]}}")
    captions: dict[str, list[str]] = {}
    for vid, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("enCap"), list):
            raise AnnotationError(f"{data_json}: entry {vid!r} has no 'enCap' list")
        captions[vid] = [str(c).strip() for c in entry["enCap"] if str(c).strip()]
    return captions


def read_vatex(root: Path, split: Split) -> CaptionedVideos:
    """VATEX ``<root>/<split>_list.txt`` with captions from ``<root>/vatex_data.json``."""
    list_path, data_json = root / f"{split}_list.txt", root / "vatex_data.json"
    return _captions_for(
        read_id_list(list_path), read_vatex_captions(data_json), list_path, data_json
    )


def read_msrvtt(root: Path, split: Split) -> CaptionedVideos:
    """MSR-VTT 9k train / 1k-A test; ``val`` is the test file, as in the reference."""
    if split == "train":
        return read_msrvtt_train(root / "MSRVTT_train.9k.csv", root / "MSRVTT_data.json")
    return read_msrvtt_test(root / "MSRVTT_JSFUSION_test.csv")


def read_synthetic(root: Path, split: Split) -> CaptionedVideos:
    """The captioned synthetic set (``s4v_data.synthetic.generate(captions=True)``).

    ``<root>/<split>_ids.txt`` with captions from ``<root>/captions.json`` (video id -> captions);
    ``test`` is the ``val`` split (the generator writes two splits).
    """
    list_path = root / f"{'val' if split == 'test' else split}_ids.txt"
    data_json = root / "captions.json"
    data = _read_json(data_json)
    if not isinstance(data, dict) or not all(
        isinstance(caps, list) and all(isinstance(c, str) for c in caps) for caps in data.values()
    ):
        raise AnnotationError(f"{data_json}: expected an object of video id -> list of captions")
    return _captions_for(read_id_list(list_path), data, list_path, data_json)


# --- frame sampling (reference Retrieval/dataloaders/rawframes_util.py) ---------------------------

# The strategies a RetrievalLayout names for its validation and test clips.
SamplingName = Literal["random-segment", "uniform-stride", "segment-centre"]


def _check_counts(num_total: int, num_frames: int) -> None:
    if num_total < 1:
        raise ValueError(f"a video needs at least one frame, got {num_total}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


def segment_centre_indices(num_total: int, num_frames: int) -> list[int]:
    """Centre frame of each of ``num_frames`` equal segments (VATEX test, ``--strategy 4``)."""
    _check_counts(num_total, num_frames)
    return [int((i + 0.5) * num_total / num_frames) for i in range(num_frames)]


def random_segment_indices(num_total: int, num_frames: int, rng: random.Random) -> list[int]:
    """One random frame in each of ``num_frames`` segments of ``num_total // num_frames`` frames.

    Training sampling (``--strategy 3``). A video shorter than ``num_frames`` repeats frames evenly
    (segment centres); the reference would repeat the first frame ``num_frames`` times.
    """
    _check_counts(num_total, num_frames)
    seg = num_total // num_frames
    if seg == 0:
        return segment_centre_indices(num_total, num_frames)
    return [i * seg + rng.randrange(seg) for i in range(num_frames)]


def uniform_stride_indices(num_total: int, num_frames: int) -> list[int]:
    """Every ``num_total // num_frames``-th frame from 0, thinned evenly to ``num_frames``.

    MSR-VTT / MSVD test sampling (``--strategy 1`` then ``--slice_framepos 2``). A video shorter
    than ``num_frames`` repeats frames evenly, so every clip has exactly ``num_frames`` frames.
    """
    _check_counts(num_total, num_frames)
    stride = num_total // num_frames
    if stride == 0:
        return segment_centre_indices(num_total, num_frames)
    picked = np.arange(0, num_total, stride)
    keep = np.linspace(0, len(picked) - 1, num=num_frames).astype(int)
    return picked[keep].tolist()


def sample_retrieval_indices(
    strategy: SamplingName, num_total: int, num_frames: int, rng: random.Random | None = None
) -> list[int]:
    """0-based frame indices for one clip under a named strategy (``rng`` for random-segment)."""
    if strategy == "random-segment":
        if rng is None:
            raise ValueError("random-segment sampling needs an rng")
        return random_segment_indices(num_total, num_frames, rng)
    if strategy == "uniform-stride":
        return uniform_stride_indices(num_total, num_frames)
    if strategy == "segment-centre":
        return segment_centre_indices(num_total, num_frames)
    raise ValueError(
        f"unknown sampling {strategy!r}; choose random-segment, uniform-stride or segment-centre"
    )
