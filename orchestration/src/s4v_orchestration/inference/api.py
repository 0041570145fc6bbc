"""The Python API: a trained recognizer or retriever, three lines from a file to an answer.

    from s4v_orchestration.inference import load_recognizer
    recognizer = load_recognizer("runs/recognition-synthetic-tiny-side4video/best.pt")
    recognizer.predict("my_video.mp4", k=5)   # [("moving left to right", 0.91), ...]

Both classes take the model from :func:`~s4v_orchestration.inference.loading.load_model` (a
checkpoint or an export) and the decoding and preprocessing from its config. ``s4v predict``,
``s4v index``/``search`` and the MLflow model are built on them.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from s4v_data import DecodeError, SignalSafeLoader
from s4v_orchestration.inference.loading import LoadedModel, ModelLoadError, load_model
from s4v_orchestration.inference.media import (
    ClipFiles,
    Clips,
    Preprocessing,
    Segment,
    first_item,
    read_clips,
)
from s4v_recognition.metrics import average_views
from s4v_retrieval import tokenizer_for
from s4v_retrieval.similarity import TextFeatures, VideoFeatures, WTISimilarity

Source = str | Path | torch.Tensor
Track = Callable[[Iterable, int], Iterable]


def _no_track(items: Iterable, total: int) -> Iterable:
    return items


@dataclass(kw_only=True)
class Result:
    """One input file's result: per segment, top-k ``(label, probability)`` (recognition) or the
    per-frame embeddings ``(T, E)`` (retrieval); ``error`` names why a file could not be read."""

    source: str
    segments: list[Segment] = field(default_factory=list)
    top_k: list[list[tuple[str, float]]] = field(default_factory=list)
    embeddings: torch.Tensor | None = None  # (segments, T, E) retrieval
    error: str | None = None


class _Model:
    """What the recognizer and the retriever share: the loaded model, decoding and batching."""

    task = ""

    def __init__(self, loaded: LoadedModel, *, precision: str = "fp32") -> None:
        if loaded.task != self.task:
            raise ModelLoadError(f"{loaded.source} is a {loaded.task} model, not a {self.task} one")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        self.loaded = loaded
        self.model = loaded.model
        self.preprocessing: Preprocessing = loaded.preprocessing
        self.precision = precision

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _encode(self, clips: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def _run(self, items: Iterable[Clips], batch_size: int) -> Iterator[tuple[Clips, torch.Tensor]]:
        """Every item with the model's output for each of its clips ``(segments * views, ...)``;
        clips of consecutive items share batches of ``batch_size``."""
        queue: deque[list] = deque()  # [item, flat clips, next clip to run, outputs]
        pending = 0

        def flush(limit: int) -> Iterator[tuple[Clips, torch.Tensor]]:
            nonlocal pending
            while pending >= limit and pending > 0:
                take, parts, owners = batch_size, [], []
                for entry in queue:
                    if take == 0:
                        break
                    _, flat, start, _ = entry
                    count = min(take, flat.shape[0] - start)
                    if count:
                        parts.append(flat[start : start + count])
                        owners.append((entry, count))
                        entry[2] += count
                        take -= count
                batch = torch.cat(parts).to(self.device)
                with self._autocast():
                    out = self._encode(batch).float().cpu()
                offset = 0
                for entry, count in owners:
                    entry[3].append(out[offset : offset + count])
                    offset += count
                pending -= batch.shape[0]
                yield from drain()
            yield from drain()

        def drain() -> Iterator[tuple[Clips, torch.Tensor]]:
            while queue and queue[0][2] == queue[0][1].shape[0]:
                item, _, _, outputs = queue.popleft()
                yield item, torch.cat(outputs)

        for item in items:
            if item.error is not None:
                if not queue:
                    yield item, torch.empty(0)
                    continue
                queue.append([item, torch.empty(0, 0), 0, [torch.empty(0)]])
            else:
                flat = item.views.flatten(0, 1)  # (segments * V, T, 3, S, S)
                queue.append([item, flat, 0, []])
                pending += flat.shape[0]
            yield from flush(batch_size)
        yield from flush(1)

    def _items(
        self,
        sources: Sequence[Source],
        *,
        window: float | None,
        stride: float | None,
        fps: float | None,
        num_workers: int,
        decode_timeout: float = 30.0,
    ) -> Iterator[Clips]:
        files = [s for s in sources if not isinstance(s, torch.Tensor)]
        if len(files) != len(sources) or num_workers == 0:
            for source in sources:
                yield _read_or_error(source, self.preprocessing, window, stride, fps)
            return
        dataset = ClipFiles(
            files, self.preprocessing, window=window, stride=stride, fps=fps,
            decode_timeout=decode_timeout,
        )  # fmt: skip
        yield from SignalSafeLoader(
            dataset, batch_size=1, num_workers=num_workers, collate_fn=first_item
        )


def _read_or_error(
    source: Source,
    prep: Preprocessing,
    window: float | None,
    stride: float | None,
    fps: float | None,
) -> Clips:
    try:
        return read_clips(source, prep, window=window, stride=stride, fps=fps)
    except DecodeError as err:
        return Clips(source=str(source), views=torch.empty(0), segments=[], error=str(err))


class Recognizer(_Model):
    """A trained action-recognition model: top-k ``(label, probability)`` per video.

    Probabilities are the softmax averaged over the test views (``crops x clips`` of the run's
    ``eval`` config), exactly as ``s4v eval recognition`` scores a video.
    """

    task = "recognition"

    @property
    def class_names(self) -> list[str]:
        return self.loaded.class_names

    def _encode(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model(clips)

    def probabilities(self, source: Source, *, fps: float | None = None) -> torch.Tensor:
        """Class probabilities ``(K,)`` of one whole video, frame folder or tensor."""
        item = read_clips(source, self.preprocessing, fps=fps)
        ((_, logits),) = self._run([item], batch_size=16)
        return self._average(item, logits)[0]

    def _average(self, item: Clips, logits: torch.Tensor) -> torch.Tensor:
        views = item.views.shape[1]
        return average_views(logits.reshape(-1, views, logits.shape[-1]))  # (segments, K)

    def predict(
        self, source: Source, k: int = 5, *, fps: float | None = None
    ) -> list[tuple[str, float]]:
        """Top-``k`` ``(label, probability)`` of one video file, frame folder or frames tensor."""
        return self._top_k(self.probabilities(source, fps=fps), k)

    def _top_k(self, probs: torch.Tensor, k: int) -> list[tuple[str, float]]:
        values, indices = probs.topk(min(k, probs.shape[-1]))
        return [
            (self.class_names[i], float(v)) for v, i in zip(values, indices.tolist(), strict=True)
        ]

    def predict_files(
        self,
        sources: Sequence[Source],
        *,
        k: int = 5,
        window: float | None = None,
        stride: float | None = None,
        fps: float | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        track: Track = _no_track,
    ) -> Iterator[Result]:
        """Top-``k`` per file (and per window of ``window`` seconds every ``stride`` seconds).

        Files are decoded in ``num_workers`` DataLoader processes and their clips batched
        ``batch_size`` at a time; an unreadable file yields a result with its ``error``.
        """
        items = self._items(sources, window=window, stride=stride, fps=fps, num_workers=num_workers)
        for item, logits in track(self._run(items, batch_size), len(sources)):
            if item.error is not None:
                yield Result(source=item.source, error=item.error)
                continue
            probs = self._average(item, logits)
            yield Result(
                source=item.source,
                segments=item.segments,
                top_k=[self._top_k(p, k) for p in probs],
            )


class Retriever(_Model):
    """A trained text-video retrieval model: embed videos and captions, score them, search."""

    task = "retrieval"

    def __init__(self, loaded: LoadedModel, *, precision: str = "fp32") -> None:
        super().__init__(loaded, precision=precision)
        self._tokenize = tokenizer_for(self.model)

    def _encode(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model.encode_video(clips).frames

    def embed_video(self, source: Source, *, fps: float | None = None) -> torch.Tensor:
        """Per-frame embeddings ``(T, E)`` of one video file, frame folder or tensor."""
        item = read_clips(source, self.preprocessing, fps=fps)
        ((_, frames),) = self._run([item], batch_size=1)
        return frames[0]

    def embed_videos(
        self,
        sources: Sequence[Source],
        *,
        window: float | None = None,
        stride: float | None = None,
        fps: float | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        track: Track = _no_track,
    ) -> Iterator[Result]:
        """Per-frame embeddings of every file (per window with ``window``/``stride`` seconds)."""
        items = self._items(sources, window=window, stride=stride, fps=fps, num_workers=num_workers)
        for item, frames in track(self._run(items, batch_size), len(sources)):
            if item.error is not None:
                yield Result(source=item.source, error=item.error)
            else:
                yield Result(source=item.source, segments=item.segments, embeddings=frames)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], *, batch_size: int = 128) -> TextFeatures:
        """Token features, mask and sentence embedding of every caption."""
        parts = []
        for start in range(0, len(texts), batch_size):
            tokens = self._tokenize(list(texts[start : start + batch_size])).to(self.device)
            with self._autocast():
                feats = self.model.encode_text(tokens)
            parts.append((feats.tokens.float().cpu(), feats.mask.cpu(), feats.pooled.float().cpu()))
        return TextFeatures(
            tokens=torch.cat([p[0] for p in parts]),
            mask=torch.cat([p[1] for p in parts]),
            pooled=torch.cat([p[2] for p in parts]),
        )

    @torch.no_grad()
    def frame_weights(self, frames: torch.Tensor, *, chunk: int = 512) -> torch.Tensor | None:
        """The ``wti`` head's frame weights ``(videos, T)`` of per-frame embeddings; they depend on
        the video alone, so an index stores them (None for ``meanP``, which has none)."""
        head = self.model.similarity
        if not isinstance(head, WTISimilarity):
            return None
        out = []
        for start in range(0, frames.shape[0], chunk):
            block = frames[start : start + chunk].float()
            mask = torch.ones(block.shape[:2], dtype=torch.bool)
            out.append(head.frame_weights(VideoFeatures(frames=block, mask=mask)).float())
        return torch.cat(out) if out else frames.new_empty(frames.shape[:2])

    @torch.no_grad()
    def scores(
        self,
        text: TextFeatures,
        frames: torch.Tensor | np.ndarray,
        *,
        frame_weights: torch.Tensor | np.ndarray | None = None,
        chunk: int = 512,
    ) -> torch.Tensor:
        """The model's similarity ``(captions, videos)`` of captions to per-frame embeddings
        ``(videos, T, E)`` (the head the run was evaluated with, ``wti`` or ``meanP``);
        ``frame_weights`` are the stored :meth:`frame_weights` of the same videos, if any."""
        out = []
        for start in range(0, frames.shape[0], chunk):
            block = _tensor(frames[start : start + chunk])
            weights = None
            if frame_weights is not None:
                weights = _tensor(frame_weights[start : start + chunk])
            video = VideoFeatures(
                frames=block,
                mask=torch.ones(block.shape[:2], dtype=torch.bool),
                frame_weights=weights,
            )
            out.append(self.model.similarity(text, video).float())
        return torch.cat(out, dim=1)

    def search(self, query: str, videos: Sequence[Source], k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` best-matching of ``videos`` for a caption, best first: ``(source, score)``."""
        results = [r for r in self.embed_videos(videos) if r.error is None]
        if not results:
            return []
        frames = torch.cat([r.embeddings[:1] for r in results])
        row = self.scores(self.embed_texts([query]), frames)[0]
        order = row.argsort(descending=True)[:k]
        return [(results[i].source, float(row[i])) for i in order.tolist()]


def load_recognizer(
    source: str | Path,
    *,
    device: str = "cpu",
    weights: str | Path | None = None,
    precision: str = "fp32",
) -> Recognizer:
    """A :class:`Recognizer` from an s4v checkpoint or export (see :func:`load_model`)."""
    return Recognizer(load_model(source, device=device, weights=weights), precision=precision)


def load_retriever(
    source: str | Path,
    *,
    device: str = "cpu",
    weights: str | Path | None = None,
    precision: str = "fp32",
) -> Retriever:
    """A :class:`Retriever` from an s4v checkpoint or export (see :func:`load_model`)."""
    return Retriever(load_model(source, device=device, weights=weights), precision=precision)


def _tensor(block: torch.Tensor | np.ndarray) -> torch.Tensor:
    """An fp32 tensor of ``block`` (a memory-mapped NumPy slice is read into memory once)."""
    if not isinstance(block, torch.Tensor):
        block = torch.from_numpy(np.array(block, dtype=np.float32))
    return block.float()
