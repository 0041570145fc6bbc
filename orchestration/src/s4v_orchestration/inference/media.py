"""What a trained model's input looks like, and how a user's video becomes it.

:class:`Preprocessing` is read from a run config (the checkpoint's, or an export's ``config.json``):
frames per clip, the frame sampling of the model's test set, the resize, the crops and temporal
clips (the test views) and the normalisation. :func:`read_clips` applies it to a video file (decord,
in a helper process with a time-out), a folder of frame images or a tensor, optionally cut into
windows of ``window`` seconds every ``stride`` seconds, and returns the model-ready views of each
segment. :class:`ClipFiles` does the same for many files in DataLoader worker processes.

The views of a recognition video are exactly those ``s4v eval recognition`` builds for it
(``VideoClipDataset`` in test mode); a retrieval video gets the one clip ``s4v eval retrieval``
encodes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from s4v_data import DATASETS, RETRIEVAL_LAYOUTS, ClipPlan, ClipTransform, DecodeError
from s4v_data.decode import IsolatedVideoReader
from s4v_data.retrieval_dataset import RetrievalClipPlan
from s4v_data.transforms import CLIP_MEAN, CLIP_STD
from s4v_orchestration.config import MODEL_REGISTRIES, RunConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


def _preset_image_size(config: RunConfig) -> int:
    presets, _ = MODEL_REGISTRIES[config.task]
    return presets[config.model.preset].image_size


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """How frames become a model's input: sampling, resize, crops, clips and normalisation.

    ``sampling`` is ``"sth"`` or ``"kinetics"`` (a recognition dataset's test formulas, those of the
    reference's ``Recognition/datasets/sth.py`` and ``kinetics.py``)
    or a retrieval strategy (``"uniform-stride"``, ``"segment-centre"``).
    """

    task: str
    num_frames: int
    input_size: int
    sampling: str
    clips: int = 1
    crops: int = 1
    resize: str = "short-side"
    resize_size: tuple[int, int] = (256, 256)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    _transform: ClipTransform = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        transform = ClipTransform(
            input_size=self.input_size,
            resize=self.resize,
            resize_size=tuple(self.resize_size),
            test_crops=self.crops,
            mean=self.mean,
            std=self.std,
        )
        object.__setattr__(self, "_transform", transform)

    @classmethod
    def from_config(cls, config: RunConfig) -> Preprocessing:
        """The test-time preprocessing of a run: ``s4v eval``'s, view for view."""
        size = config.data.input_size or _preset_image_size(config)
        if config.task == "recognition":
            # A dataset file's data follows its recipe base's sampling and resizing.
            spec = DATASETS[config.data.recipe_base or config.data.dataset]
            return cls(
                task="recognition",
                num_frames=config.data.num_frames,
                input_size=size,
                sampling=spec.sampling,
                clips=config.eval.test_clips,
                crops=config.eval.test_crops,
                resize=spec.resize,
                resize_size=spec.resize_for(size),
            )
        layout = RETRIEVAL_LAYOUTS[config.data.recipe_base or config.data.dataset]
        return cls(
            task="retrieval",
            num_frames=config.data.num_frames,
            input_size=size,
            sampling=layout.test_sampling,
            resize="short-side",
            resize_size=(size, size),
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("_transform", None)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preprocessing:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)

    def with_views(self, crops: int, clips: int) -> Preprocessing:
        """The same preprocessing with other test views (recognition)."""
        data = self.to_json() | {"crops": crops, "clips": clips}
        return Preprocessing.from_json(data)

    @property
    def views(self) -> int:
        return self.crops * self.clips

    def indices(self, n: int) -> list[list[int]]:
        """Frame indices of each clip for a video (or segment) of ``n`` frames."""
        if self.task == "recognition":
            plan = ClipPlan(
                family=self.sampling, mode="test", num_frames=self.num_frames, clips=self.clips
            )
        else:
            plan = RetrievalClipPlan(strategy=self.sampling, num_frames=self.num_frames)
        return plan.indices(n)

    def views_of(self, frames: torch.Tensor, clips: list[list[int]]) -> torch.Tensor:
        """Model input ``(V, T, 3, S, S)`` float from uint8 frames ``(U, 3, H, W)`` and the
        positions of each clip in them (clip-major, crops inside, as ``VideoClipDataset``)."""
        if self.task == "retrieval":
            return self._transform.eval(frames[clips[0]])[:1]
        resized = self._transform.resize_frames(frames)
        return torch.cat([self._transform.crop_views(resized[p]) for p in clips])


@dataclass(frozen=True, slots=True)
class Segment:
    """Frames ``[first, stop)`` of a video, shown from ``start`` to ``end`` seconds."""

    first: int
    stop: int
    start: float | None
    end: float | None


def segments(
    n: int, fps: float | None, window: float | None, stride: float | None
) -> list[Segment]:
    """The whole video, or windows of ``window`` seconds every ``stride`` seconds.

    The last window ends at the last frame (it may overlap its predecessor more than the stride
    says), so every frame is covered and every window is full length when the video is.
    """
    duration = n / fps if fps else None
    if window is None:
        return [Segment(0, n, 0.0 if duration else None, duration)]
    if not fps:
        raise DecodeError("the frame rate is unknown; give --fps for frame folders")
    stride = stride or window
    span = max(1, round(window * fps))
    step = max(1, round(stride * fps))
    firsts = list(range(0, max(n - span, 0) + 1, step))
    if firsts[-1] + span < n:
        firsts.append(n - span)
    out = []
    for first in firsts:
        stop = min(first + span, n)
        out.append(Segment(first, stop, first / fps, stop / fps))
    return out


@dataclass(kw_only=True)
class Clips:
    """The model input of one file: ``views (segments, V, T, 3, S, S)`` and each segment's span."""

    source: str
    views: torch.Tensor
    segments: list[Segment]
    error: str | None = None


def list_frames(folder: Path) -> list[Path]:
    """The image files of a frame folder, in name order."""
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as err:
        raise DecodeError(f"{folder}: cannot list the frame folder ({err.strerror})") from None
    if not files:
        raise DecodeError(f"{folder}: no frame images ({', '.join(IMAGE_SUFFIXES)}) in it")
    return files


def _read_images(paths: list[Path]) -> torch.Tensor:
    arrays = []
    for path in paths:
        try:
            with Image.open(path) as image:
                arrays.append(np.asarray(image.convert("RGB")))
        except OSError as err:
            raise DecodeError(f"{path}: cannot decode the frame ({err})") from None
    if len({a.shape for a in arrays}) > 1:
        raise DecodeError(f"{paths[0].parent}: frames differ in size")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _plan(prep: Preprocessing, spans: list[Segment]) -> tuple[list[int], list[list[list[int]]]]:
    """Unique frame indices of every segment's clips, and each clip's positions in them."""
    absolute = [
        [[s.first + i for i in clip] for clip in prep.indices(s.stop - s.first)] for s in spans
    ]
    unique = sorted({i for clips in absolute for clip in clips for i in clip})
    where = {index: pos for pos, index in enumerate(unique)}
    return unique, [[[where[i] for i in clip] for clip in clips] for clips in absolute]


def read_clips(
    source: str | Path | torch.Tensor,
    prep: Preprocessing,
    *,
    window: float | None = None,
    stride: float | None = None,
    fps: float | None = None,
    reader: IsolatedVideoReader | None = None,
) -> Clips:
    """Decode and prepare one input: a video file, a frame folder or a tensor.

    A tensor is either uint8 frames ``(N, 3, H, W)`` of a video (sampled and prepared like a
    file) or prepared float views ``(T, 3, S, S)`` / ``(V, T, 3, S, S)``, used as they are.
    ``fps`` gives the frame rate of frame folders and tensors (needed for windows and times).

    Raises:
        DecodeError: naming the file, when it cannot be read.
    """
    if isinstance(source, torch.Tensor):
        if source.is_floating_point():
            views = source if source.ndim == 5 else source.unsqueeze(0)
            return Clips(
                source="<tensor>", views=views.unsqueeze(0), segments=[Segment(0, 0, None, None)]
            )
        n = source.shape[0]
        spans = segments(n, fps, window, stride)
        unique, positions = _plan(prep, spans)
        frames = source[unique]
        name = "<tensor>"
    else:
        path = Path(source)
        if path.is_dir():
            files = list_frames(path)
            spans = segments(len(files), fps, window, stride)
            unique, positions = _plan(prep, spans)
            frames = _read_images([files[i] for i in unique])
        elif path.is_file():
            reader = reader or IsolatedVideoReader()
            n, video_fps = reader.probe(path)
            spans = segments(n, fps or video_fps, window, stride)
            unique, positions = _plan(prep, spans)
            frames = reader.frames(path, unique)
        else:
            raise DecodeError(f"{path}: no such file or folder")
        name = str(path)
    views = torch.stack([prep.views_of(frames, clips) for clips in positions])
    return Clips(source=name, views=views, segments=spans)


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Video files and frame folders named on a command line; a folder that holds videos or
    frame folders (rather than frames) stands for all of them, in name order."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir() and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
            children = sorted(path.iterdir())
            out += [
                p
                for p in children
                if (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES) or p.is_dir()
            ]
        else:
            out.append(path)
    return out


class ClipFiles(Dataset):
    """Files decoded in DataLoader workers: item ``i`` is the :class:`Clips` of file ``i``.

    An unreadable file gives ``Clips`` with an ``error`` (and no views) instead of raising, so
    the others go on.
    """

    def __init__(
        self,
        files: list[str | Path],
        prep: Preprocessing,
        *,
        window: float | None = None,
        stride: float | None = None,
        fps: float | None = None,
        decode_timeout: float = 30.0,
    ) -> None:
        self.files = [str(f) for f in files]
        self.prep = prep
        self.window, self.stride, self.fps = window, stride, fps
        self.reader = IsolatedVideoReader(timeout=decode_timeout)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Clips:
        source = self.files[index]
        try:
            return read_clips(
                source,
                self.prep,
                window=self.window,
                stride=self.stride,
                fps=self.fps,
                reader=self.reader,
            )
        except DecodeError as err:
            return Clips(source=source, views=torch.empty(0), segments=[], error=str(err))


def first_item(batch: list[Clips]) -> Clips:
    """DataLoader collate for ``batch_size=1``: the item itself."""
    return batch[0]


def seconds(value: float | None) -> str:
    """``12.5`` -> ``"12.50"``; unknown times print as ``-``."""
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"
