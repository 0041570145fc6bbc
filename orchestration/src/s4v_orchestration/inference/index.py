"""A searchable index of a folder of videos, built with a trained retrieval model.

An index folder holds:

* ``frames.npy`` ``(N, T, E)`` float32: the per-frame embeddings of every video segment (what the
  model's similarity head compares, ``wti`` or ``meanP``);
* ``embeddings.npy`` ``(N, E)`` float32: one L2-normalised embedding per segment (the mean of its
  frames), for a fast first pass over large indexes;
* ``manifest.json``: the model (path and fingerprint), the segmenting settings and, per file, its
  path, size, modification time, rows and segment times.

Both arrays are read with ``np.load(mmap_mode="r")``, so searching does not load the index into
memory. Re-indexing encodes only files that are new or whose size or modification time changed,
and drops files that are gone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from s4v_orchestration.inference.api import Retriever
from s4v_orchestration.inference.loading import ModelLoadError, load_model
from s4v_orchestration.inference.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from s4v_retrieval.similarity import TextFeatures

INDEX_FORMAT = "s4v-index"
INDEX_VERSION = 2  # 2: frame_weights.npy (the wti head's frame weights, stored)
MANIFEST = "manifest.json"
FRAMES = "frames.npy"
EMBEDDINGS = "embeddings.npy"
FRAME_WEIGHTS = "frame_weights.npy"  # wti models only


class VideoIndexError(RuntimeError):
    """An index folder that cannot be used; the message says why and what to do."""


def model_fingerprint(retriever: Retriever) -> str:
    """sha256 of what decides the embeddings: backbone, model config, preprocessing, weights."""
    loaded = retriever.loaded
    digest = hashlib.sha256()
    described = {
        "backbone": loaded.backbone,
        "model": loaded.config.model.model_dump(mode="json"),
        "retrieval": loaded.config.retrieval.model_dump(
            mode="json", include={"similarity", "max_words"}
        ),
        "preprocessing": loaded.preprocessing.to_json(),
        "frozen": loaded.frozen_sha256,
    }
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    for name, tensor in sorted(loaded.model.trainable_state_dict().items()):
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def find_videos(folder: Path) -> list[Path]:
    """Every video file and frame folder under ``folder`` (a frame folder is not descended)."""
    out: list[Path] = []
    for current, dirs, files in os.walk(folder, followlinks=True):
        here = Path(current)
        if any(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in files) and here != folder:
            out.append(here)
            dirs.clear()
            continue
        out += [here / f for f in files if Path(f).suffix.lower() in VIDEO_SUFFIXES]
        dirs.sort()
    return sorted(out)


def file_state(path: Path) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of a video file or a frame folder's images."""
    if path.is_file():
        stat = path.stat()
        return stat.st_size, stat.st_mtime_ns
    stats = [p.stat() for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    return sum(s.st_size for s in stats), max(
        [path.stat().st_mtime_ns, *(s.st_mtime_ns for s in stats)]
    )


@dataclass(kw_only=True)
class IndexUpdate:
    """What one ``index`` call did."""

    encoded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, error)
    rebuilt: bool = False  # the model or the settings changed: everything was encoded again


def read_manifest(index_dir: Path) -> dict[str, Any] | None:
    path = index_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise VideoIndexError(f"{path}: not a readable index manifest ({err})") from None
    if manifest.get("format") != INDEX_FORMAT or manifest.get("version") != INDEX_VERSION:
        raise VideoIndexError(f"{path}: not an s4v index of format version {INDEX_VERSION}")
    return manifest


def _save_array(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        np.save(handle, array)
    os.replace(tmp, path)


def build_index(
    retriever: Retriever,
    model_source: str | Path,
    folder: str | Path,
    index_dir: str | Path,
    *,
    window: float | None = None,
    stride: float | None = None,
    fps: float | None = None,
    batch_size: int = 16,
    num_workers: int = 0,
    track: Callable[[Iterable, int], Iterable] | None = None,
) -> IndexUpdate:
    """Index (or update the index of) every video and frame folder under ``folder``."""
    folder, index_dir = Path(folder).resolve(), Path(index_dir)
    if not folder.is_dir():
        raise VideoIndexError(f"{folder}: no such folder")
    index_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "model_fingerprint": model_fingerprint(retriever),
        "window": window,
        "stride": stride,
        "fps": fps,
    }
    old = read_manifest(index_dir)
    update = IndexUpdate()
    reusable: dict[str, dict[str, Any]] = {}
    if old is not None:
        if all(old.get(k) == v for k, v in settings.items()):
            reusable = {entry["path"]: entry for entry in old["files"]}
        else:
            update.rebuilt = True
    old_frames = np.load(index_dir / FRAMES, mmap_mode="r") if reusable else None

    found = find_videos(folder)
    states = {str(p): file_state(p) for p in found}
    todo = []
    for path in found:
        entry = reusable.get(str(path))
        if entry is None or (entry["size"], entry["mtime_ns"]) != states[str(path)]:
            todo.append(path)
    update.removed = sorted(set(reusable) - set(states))

    encoded: dict[str, tuple[torch.Tensor, list]] = {}
    results = retriever.embed_videos(
        todo,
        window=window,
        stride=stride,
        fps=fps,
        batch_size=batch_size,
        num_workers=min(num_workers, len(todo)),
        track=track or (lambda items, total: items),
    )
    for result in results:
        if result.error is not None:
            update.failed.append((result.source, result.error))
        else:
            spans = [[s.start, s.end] for s in result.segments]
            encoded[result.source] = (result.embeddings, spans)
            update.encoded.append(result.source)

    entries, blocks, row = [], [], 0
    for path in found:
        key = str(path)
        if key in encoded:
            frames, spans = encoded[key]
        elif key in reusable and path not in todo:
            entry = reusable[key]
            frames = torch.from_numpy(np.array(old_frames[entry["rows"][0] : entry["rows"][1]]))
            spans = entry["segments"]
            update.kept.append(key)
        else:
            continue
        size, mtime = states[key]
        entries.append(
            {
                "path": key,
                "size": size,
                "mtime_ns": mtime,
                "rows": [row, row + len(frames)],
                "segments": spans,
            }
        )
        blocks.append(frames.float())
        row += len(frames)
    if blocks:
        frames = torch.cat(blocks)
    else:
        width = retriever.model.video.embed_dim
        frames = torch.empty(0, retriever.preprocessing.num_frames, width)
    embeddings = F.normalize(frames.mean(dim=1), dim=-1) if len(frames) else frames[:, 0]
    del old_frames
    _save_array(index_dir / FRAMES, frames.numpy().astype(np.float32))
    _save_array(index_dir / EMBEDDINGS, embeddings.numpy().astype(np.float32))
    weights = retriever.frame_weights(frames)
    if weights is not None:
        _save_array(index_dir / FRAME_WEIGHTS, weights.numpy().astype(np.float32))
    else:
        (index_dir / FRAME_WEIGHTS).unlink(missing_ok=True)
    manifest = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "model": str(Path(model_source).resolve()),
        **settings,
        "similarity": retriever.loaded.config.retrieval.similarity
        or retriever.model.preset.similarity,
        "root": str(folder),
        "rows": row,
        "files": entries,
    }
    tmp = index_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, index_dir / MANIFEST)
    return update


@dataclass(frozen=True, kw_only=True)
class Hit:
    """One search result: a file, its best segment's score and time span."""

    path: str
    score: float
    start: float | None
    end: float | None


class VideoIndex:
    """An index folder opened for searching (arrays memory-mapped)."""

    def __init__(
        self, index_dir: str | Path, retriever: Retriever | None = None, *, device: str = "cpu"
    ) -> None:
        self.dir = Path(index_dir)
        manifest = read_manifest(self.dir)
        if manifest is None:
            raise VideoIndexError(f"{self.dir}: no index here (build one with `s4v index`)")
        self.manifest = manifest
        if retriever is None:
            try:
                retriever = Retriever(load_model(manifest["model"], device=device))
            except ModelLoadError as err:
                raise VideoIndexError(
                    f"{self.dir}: cannot load the model it was built with: {err}"
                ) from None
            if model_fingerprint(retriever) != manifest["model_fingerprint"]:
                raise VideoIndexError(
                    f"{self.dir}: the model {manifest['model']} changed since the index was built; "
                    "run `s4v index` again"
                )
        self.retriever = retriever
        self.frames = np.load(self.dir / FRAMES, mmap_mode="r")
        self.embeddings = np.load(self.dir / EMBEDDINGS, mmap_mode="r")
        weights = self.dir / FRAME_WEIGHTS
        self.frame_weights = np.load(weights, mmap_mode="r") if weights.is_file() else None
        files = manifest["files"]
        self.paths = [f["path"] for f in files]
        owner = np.zeros(manifest["rows"], dtype=np.int64)
        spans: list[list] = []
        for number, entry in enumerate(files):
            first, stop = entry["rows"]
            owner[first:stop] = number
            spans += entry["segments"]
        self.owner = torch.from_numpy(owner)
        self.spans = spans

    def __len__(self) -> int:
        return len(self.paths)

    @torch.no_grad()
    def segment_scores(self, queries: list[str], *, shortlist: int = 1000) -> torch.Tensor:
        """The model's similarity ``(queries, segments)``; -inf for segments left out.

        With more segments than ``shortlist``, a first pass ranks every segment by the cosine of
        the caption's embedding to the segment's mean-frame embedding, and the model's head
        scores the ``shortlist`` best of them (exact for ``meanP``; for ``wti`` the first pass
        decides which segments are scored).
        """
        return self.scores_for(self.retriever.embed_texts(queries), shortlist=shortlist)

    @torch.no_grad()
    def scores_for(self, text: TextFeatures, *, shortlist: int = 1000) -> torch.Tensor:
        """:meth:`segment_scores` of captions already encoded (``Retriever.embed_texts``)."""
        queries = len(text)
        rows = self.frames.shape[0]
        if rows <= shortlist:
            return self.retriever.scores(text, self.frames, frame_weights=self.frame_weights)
        query = F.normalize(text.pooled, dim=-1).numpy()
        first = torch.from_numpy(query @ self.embeddings.T)  # reads the mapped file, no copy
        out = torch.full((queries, rows), -torch.inf)
        candidates = first.topk(shortlist, dim=1).indices
        for q in range(queries):
            chosen = candidates[q].sort().values.numpy()
            weights = None if self.frame_weights is None else self.frame_weights[chosen]
            exact = self.retriever.scores(
                text[q : q + 1], self.frames[chosen], frame_weights=weights
            )
            out[q, torch.from_numpy(chosen)] = exact[0]
        return out

    def file_scores(self, segment_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per file, the best segment's score ``(queries, files)`` and that segment's row."""
        queries = segment_scores.shape[0]
        best = torch.full((queries, len(self.paths)), -torch.inf)
        best = best.scatter_reduce(1, self.owner.expand(queries, -1), segment_scores, "amax")
        hit = segment_scores == best.gather(1, self.owner.expand(queries, -1))
        rows = torch.full((queries, len(self.paths)), -1, dtype=torch.long)
        positions = torch.arange(segment_scores.shape[1]).expand(queries, -1)
        rows = rows.scatter_reduce(
            1, self.owner.expand(queries, -1), torch.where(hit, positions, -1), "amax"
        )
        return best, rows

    def search(self, query: str, k: int = 10, *, shortlist: int = 1000) -> list[Hit]:
        """The ``k`` best-matching files for a caption, best first."""
        if not self.paths:
            return []
        return self.search_text(self.retriever.embed_texts([query]), k, shortlist=shortlist)

    def search_text(self, text: TextFeatures, k: int = 10, *, shortlist: int = 1000) -> list[Hit]:
        """:meth:`search` for one caption already encoded."""
        if not self.paths:
            return []
        scores = self.scores_for(text, shortlist=shortlist)[0]
        rows = torch.isfinite(scores).nonzero()[:, 0]  # the scored segments (all, or a shortlist)
        values = scores[rows]
        files, where = torch.unique(self.owner[rows], return_inverse=True)
        best = torch.full((len(files),), -torch.inf).scatter_reduce(0, where, values, "amax")
        # Each file's best-scoring segment (the last one on a tie).
        is_best = values == best[where]
        best_row = torch.full((len(files),), -1).scatter_reduce(
            0, where, torch.where(is_best, rows, -1), "amax"
        )
        order = best.argsort(descending=True)[:k]
        hits = []
        for position in order.tolist():
            start, end = self.spans[int(best_row[position])]
            path = self.paths[int(files[position])]
            hits.append(Hit(path=path, score=float(best[position]), start=start, end=end))
        return hits
