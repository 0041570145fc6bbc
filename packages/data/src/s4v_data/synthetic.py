"""The project's own small video dataset: classes defined by motion over time.

Eight classes in four time-reversed pairs (left<->right, down<->up, clockwise<->anticlockwise,
approaching<->receding): the frames of class ``a`` played backwards are exactly the frames of its
partner ``b`` (same object, background and noise), so a model that ignores frame order cannot tell
a pair apart, as with Something-Something's direction classes. Objects vary in colour and shape, so
the optional captions ("a red square moves from left to right") are informative for retrieval.

Layout under ``root`` (the same as the real datasets, list entries relative to ``root``)::

    videos/<id>.mp4                H.264 (libx264 via PyAV)
    rawframes/<id>/img_00001.jpg   the same frames as JPEG
    train_rawframes.txt, val_rawframes.txt   "rawframes/<id> <num_frames> <label>"
    train_videos.txt, val_videos.txt         "videos/<id>.mp4 <label>"
    labels.csv                     "id,name"
    captions.json, train_ids.txt, val_ids.txt   (captions=True) video id -> captions; id splits
    synthetic.json                 the parameters; written last, marks the folder complete
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from s4v_data._worker import open_reader
from s4v_data.annotations import VideoRecord, write_labels, write_rawframe_list, write_video_list

__all__ = [
    "CLASS_NAMES",
    "DIRECTION_PAIRS",
    "SyntheticInfo",
    "VideoParams",
    "generate",
    "render_video",
    "sample_params",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the rendering changes, so cached folders are regenerated
FRAME_TEMPLATE = "img_{:05d}.jpg"
METADATA = "synthetic.json"

# (motion, played backwards) per class; a pair shares the motion and differs in direction.
_CLASSES = (
    ("horizontal", False),
    ("horizontal", True),
    ("vertical", False),
    ("vertical", True),
    ("orbit", False),
    ("orbit", True),
    ("scale", False),
    ("scale", True),
)
CLASS_NAMES = (
    "moving left to right",
    "moving right to left",
    "moving top to bottom",
    "moving bottom to top",
    "circling clockwise",
    "circling anticlockwise",
    "approaching",
    "receding",
)
DIRECTION_PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7))

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (60, 100, 240),
    "yellow": (235, 215, 40),
    "cyan": (40, 210, 220),
    "magenta": (210, 50, 200),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "diamond")

_CAPTIONS = {
    0: ("a {c} {s} moves from left to right", "a {c} {s} slides to the right",
        "the {s} in {c} travels rightwards across the frame"),
    1: ("a {c} {s} moves from right to left", "a {c} {s} slides to the left",
        "the {s} in {c} travels leftwards across the frame"),
    2: ("a {c} {s} moves from top to bottom", "a {c} {s} falls downwards",
        "the {s} in {c} travels down the frame"),
    3: ("a {c} {s} moves from bottom to top", "a {c} {s} rises upwards",
        "the {s} in {c} travels up the frame"),
    4: ("a {c} {s} circles clockwise", "a {c} {s} moves around in a clockwise circle",
        "the {s} in {c} orbits the centre clockwise"),
    5: ("a {c} {s} circles anticlockwise", "a {c} {s} moves around in an anticlockwise circle",
        "the {s} in {c} orbits the centre counterclockwise"),
    6: ("a {c} {s} approaches the camera", "a {c} {s} grows larger as it comes closer",
        "the {s} in {c} gets bigger"),
    7: ("a {c} {s} moves away from the camera", "a {c} {s} shrinks as it recedes",
        "the {s} in {c} gets smaller"),
}  # fmt: skip


@dataclass(frozen=True, kw_only=True, slots=True)
class VideoParams:
    """Everything random about one video except its class (fractions are of the frame size)."""

    colour: str
    shape: str
    background: tuple[int, int, int]
    start: float  # position along the motion axis at t=0 (horizontal/vertical)
    end: float  # ... and at t=1
    lateral: float  # position across the motion axis
    radius: float  # object radius (all motions but scale)
    orbit_start: float  # start angle of the orbit, radians
    orbit_sweep: float  # swept angle, radians (< 2 pi so the direction is visible)
    small: float  # scale motion: radius at t=0
    large: float  # ... and at t=1
    noise_seed: int  # per-pixel background noise


def sample_params(rng: np.random.Generator) -> VideoParams:
    """Draw the appearance and trajectory of one video."""
    return VideoParams(
        colour=str(rng.choice(list(COLOURS))),
        shape=str(rng.choice(SHAPES)),
        background=tuple(int(v) for v in rng.integers(10, 70, size=3)),
        start=float(rng.uniform(0.12, 0.28)),
        end=float(rng.uniform(0.72, 0.88)),
        lateral=float(rng.uniform(0.3, 0.7)),
        radius=float(rng.uniform(0.11, 0.16)),
        orbit_start=float(rng.uniform(0, 2 * np.pi)),
        orbit_sweep=float(rng.uniform(1.25, 1.6) * np.pi),
        small=float(rng.uniform(0.05, 0.08)),
        large=float(rng.uniform(0.28, 0.36)),
        noise_seed=int(rng.integers(2**31)),
    )


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float):
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.2 * r
    # triangle pointing up: apex at cy - r, base at cy + 0.7 r with half-width r
    return (dy >= -r) & (dy <= 0.7 * r) & (np.abs(dx) <= (dy + r) / 1.7)


def _position(motion: str, p: VideoParams, t: float) -> tuple[float, float, float]:
    """Object centre (x, y) and radius at time t in [0, 1], as fractions of the frame size."""
    if motion == "horizontal":
        return p.start + (p.end - p.start) * t, p.lateral, p.radius
    if motion == "vertical":
        return p.lateral, p.start + (p.end - p.start) * t, p.radius
    if motion == "orbit":
        # Image y grows downwards, so a growing angle turns clockwise on screen.
        angle = p.orbit_start + p.orbit_sweep * t
        return 0.5 + 0.28 * np.cos(angle), 0.5 + 0.28 * np.sin(angle), 0.9 * p.radius
    return 0.5 + 0.3 * (p.lateral - 0.5), 0.5, p.small + (p.large - p.small) * t


def render_video(class_id: int, params: VideoParams, *, num_frames: int, size: int) -> np.ndarray:
    """Render one video of class ``class_id`` -> ``(num_frames, size, size, 3)`` uint8.

    The partner class of a direction pair renders the same frames in reverse order.
    """
    motion, backwards = _CLASSES[class_id]
    noise = np.random.default_rng(params.noise_seed).normal(0, 6, (num_frames, size, size, 3))
    if backwards:
        noise = noise[::-1]  # the noise follows the motion's time, so reversal is exact
    times = np.linspace(0, 1, num_frames)[::-1] if backwards else np.linspace(0, 1, num_frames)
    # Render at 2x and average 2x2 blocks: anti-aliased edges make sub-pixel motion visible.
    fine = 2 * size
    coords = (np.arange(fine) + 0.5) / fine
    x, y = np.meshgrid(coords, coords)
    colour = np.array(COLOURS[params.colour], dtype=np.float64)
    background = np.array(params.background, dtype=np.float64)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for f, t in enumerate(times):
        cx, cy, r = _position(motion, params, float(t))
        mask = _shape_mask(params.shape, x, y, cx, cy, r).astype(np.float64)
        cover = mask.reshape(size, 2, size, 2).mean(axis=(1, 3))[..., None]  # (size, size, 1)
        image = background + noise[f] + cover * (colour - background)
        frames[f] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return frames


def captions_for(class_id: int, params: VideoParams) -> list[str]:
    """English captions naming the object's colour, shape and motion."""
    texts = [text.format(c=params.colour, s=params.shape) for text in _CAPTIONS[class_id]]
    return [t.replace("a orange", "an orange") for t in texts]


@dataclass(frozen=True, kw_only=True, slots=True)
class SyntheticInfo:
    """Where a generated synthetic dataset lives and what it holds."""

    root: Path
    train_list: Path  # rawframe lists
    val_list: Path
    train_video_list: Path
    val_video_list: Path
    labels_csv: Path
    num_classes: int
    class_names: tuple[str, ...]
    frame_template: str
    direction_pairs: tuple[tuple[int, int], ...]  # classes that are time reversals of each other
    num_frames: int
    size: int
    captions_json: Path | None  # only with captions=True
    train_ids: Path | None
    val_ids: Path | None


def _info(root: Path, params: dict) -> SyntheticInfo:
    captions = bool(params["captions"])
    return SyntheticInfo(
        root=root,
        train_list=root / "train_rawframes.txt",
        val_list=root / "val_rawframes.txt",
        train_video_list=root / "train_videos.txt",
        val_video_list=root / "val_videos.txt",
        labels_csv=root / "labels.csv",
        num_classes=len(CLASS_NAMES),
        class_names=CLASS_NAMES,
        frame_template=FRAME_TEMPLATE,
        direction_pairs=DIRECTION_PAIRS,
        num_frames=int(params["num_frames"]),
        size=int(params["size"]),
        captions_json=root / "captions.json" if captions else None,
        train_ids=root / "train_ids.txt" if captions else None,
        val_ids=root / "val_ids.txt" if captions else None,
    )


def _read_metadata(root: Path) -> dict | None:
    try:
        return json.loads((root / METADATA).read_text())
    except (OSError, ValueError):
        return None


def _other_parameters(root: Path, existing: dict, wanted: dict) -> str:
    differences = ", ".join(
        f"{key} {existing.get(key)}, not {value}"
        for key, value in wanted.items()
        if existing.get(key) != value
    )
    return (
        f"{root} holds a synthetic dataset made with other parameters: {differences}. "
        "It is left as it is: choose another folder (--data-root) or remove this one"
    )


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "17", "preset": "veryfast"}
        stream.codec_context.thread_count = 1  # no oversubscription
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _check_decodable(path: Path, size: int) -> None:
    """decord 0.6.0 mis-sizes frames of some small widths (16, 24, 48, 72 px): refuse those.

    The check decodes with the default backend (PyAV, where decord is not installed, reads
    every width).
    """
    try:
        shape = open_reader(path, 1).get_batch([0]).shape
    except Exception:  # decord and PyAV raise their own error types
        shape = None
    if shape != (1, size, size, 3):
        raise ValueError(
            f"decord cannot decode {size}-pixel-wide H.264 video correctly (a decord 0.6.0 bug "
            f"with some small widths); choose another size, e.g. 32 or 40"
        )


def _write_dataset(tmp: Path, params: dict) -> None:
    num_frames, size, fps = params["num_frames"], params["size"], params["fps"]
    per_class = params["videos_per_class"]
    num_val = round(per_class * params["val_fraction"])
    (tmp / "videos").mkdir(parents=True)
    (tmp / "rawframes").mkdir()
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": []}
    captions: dict[str, list[str]] = {}
    for class_id in range(len(CLASS_NAMES)):
        for index in range(per_class):
            rng = np.random.default_rng([params["seed"], class_id, index])
            video = sample_params(rng)
            frames = render_video(class_id, video, num_frames=num_frames, size=size)
            video_id = f"vid_{class_id:02d}_{index:04d}"
            _write_mp4(tmp / "videos" / f"{video_id}.mp4", frames, fps)
            if class_id == index == 0:
                _check_decodable(tmp / "videos" / f"{video_id}.mp4", size)
            frame_dir = tmp / "rawframes" / video_id
            frame_dir.mkdir()
            for f, array in enumerate(frames):
                Image.fromarray(array).save(frame_dir / FRAME_TEMPLATE.format(f + 1), quality=95)
            splits["val" if index < num_val else "train"].append((video_id, class_id))
            captions[video_id] = captions_for(class_id, video)
    for split, items in splits.items():
        write_rawframe_list(
            tmp / f"{split}_rawframes.txt",
            [VideoRecord(path=f"rawframes/{v}", num_frames=num_frames, label=c) for v, c in items],
        )
        write_video_list(
            tmp / f"{split}_videos.txt",
            [VideoRecord(path=f"videos/{v}.mp4", label=c) for v, c in items],
        )
        if params["captions"]:
            (tmp / f"{split}_ids.txt").write_text("".join(f"{v}\n" for v, _ in items))
    write_labels(tmp / "labels.csv", CLASS_NAMES)
    if params["captions"]:
        (tmp / "captions.json").write_text(json.dumps(captions, indent=1))
    (tmp / METADATA).write_text(json.dumps(params, indent=2, sort_keys=True))


def generate(
    out_dir: str | Path,
    *,
    seed: int = 0,
    videos_per_class: int = 60,
    num_frames: int = 16,
    size: int = 40,
    val_fraction: float = 0.2,
    fps: int = 8,
    captions: bool = False,
) -> SyntheticInfo:
    """Generate the synthetic dataset in ``out_dir``, or reuse it if it was made the same way.

    The folder is written under a temporary name and renamed when complete, so an interrupted
    run never leaves a half-written dataset. An existing folder is never deleted or rewritten:
    one made with other parameters, or any other non-empty folder, is refused.

    Args:
        out_dir: dataset root.
        seed: the same seed and parameters give the same frames: byte-identical JPEG frames,
            lists and labels. The MP4 files are encoded from those frames, but x264's output
            (bytes and lossy decisions) can differ from one encoding to the next here.
        videos_per_class: videos per class (train + val).
        num_frames: frames per video.
        size: frame height and width in pixels (even, >= 16, for H.264 4:2:0).
        val_fraction: share of each class's videos in the val split.
        fps: frame rate written into the MP4 files.
        captions: also write ``captions.json`` and ``train_ids.txt`` / ``val_ids.txt``.
    """
    if size < 16 or size % 2:
        raise ValueError(f"size must be even and at least 16 (H.264 4:2:0), got {size}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be at least 2 to show motion, got {num_frames}")
    if videos_per_class < 2:
        raise ValueError(f"videos_per_class must be at least 2, got {videos_per_class}")
    num_val = round(videos_per_class * val_fraction)
    if not 0 < num_val < videos_per_class:
        raise ValueError(
            f"val_fraction {val_fraction} leaves no train or no val videos "
            f"with videos_per_class={videos_per_class}"
        )
    root = Path(out_dir).expanduser().resolve()
    params = {
        "format": FORMAT_VERSION,
        "seed": seed,
        "videos_per_class": videos_per_class,
        "num_frames": num_frames,
        "size": size,
        "val_fraction": val_fraction,
        "fps": fps,
        "captions": captions,
    }
    existing = _read_metadata(root)
    if existing == params:
        return _info(root, params)
    if existing is not None:
        raise FileExistsError(_other_parameters(root, existing, params))
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists and is not a synthetic dataset made by s4v; choose an empty folder"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        log.info("generating the synthetic dataset in %s", root)
        _write_dataset(tmp, params)
        if root.exists() and any(root.iterdir()):
            existing = _read_metadata(root)  # another process finished first
            if existing == params:
                return _info(root, params)
            raise FileExistsError(_other_parameters(root, existing or {}, params))
        os.replace(tmp, root)  # an empty folder is replaced
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return _info(root, params)
