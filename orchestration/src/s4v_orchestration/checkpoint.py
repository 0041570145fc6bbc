"""Training checkpoints: atomic writes, safe loads and a compatibility check before resuming.

A checkpoint holds only what was trained (side network, head, BatchNorm statistics; never the frozen
backbone), the optimizer, scheduler and gradient-scaler states, the RNG states, the epoch and step
counters, the resolved run config and the backbone's identity. It is a plain dict of tensors and
Python primitives, so it loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "s4v-checkpoint"
VERSION = 1

# Config fields that may differ between a checkpoint and the run that resumes it: they change where
# things are written or read and how the run is watched, never the numbers it computes.
RESUME_INDEPENDENT_FIELDS = (
    "output_dir",
    "resume",
    "device",
    "cpu_threads",
    "tracking",
    "eval",
    "data.root",
    "data.num_workers",
    "solver.max_steps",
)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not belong to this run."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then rename.

    A run killed while saving leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format": FORMAT, "version": VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read an s4v checkpoint on the CPU with ``weights_only=True`` (no arbitrary code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise CheckpointError(
            f"{path} is not a readable s4v checkpoint (or holds objects that are not plain "
            f"tensors and Python values): {err}"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an s4v checkpoint; released Side4Video weights must first be "
            "converted with `s4v convert side4video`"
        )
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {state.get('version')}, this s4v reads {VERSION}"
        )
    return state


def _without(tree: dict[str, Any], dotted: tuple[str, ...]) -> dict[str, Any]:
    tree = {**tree}
    for name in dotted:
        *parents, leaf = name.split(".")
        node = tree
        for part in parents:
            if not isinstance(node.get(part), dict):
                break
            node[part] = {**node[part]}
            node = node[part]
        else:
            node.pop(leaf, None)
    return tree


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if a == b else [(prefix, a, b)]


def check_resumable(
    checkpoint: dict[str, Any], path: Path, config: dict[str, Any], backbone: dict[str, Any]
) -> None:
    """Refuse to resume from a checkpoint made by a different config or backbone.

    Args:
        checkpoint: the loaded checkpoint.
        path: where it was read from (for the message).
        config: this run's resolved config, ``RunConfig.model_dump(mode="json")``.
        backbone: this run's backbone identity (name, pretrained tag, weights-file hash).

    Raises:
        CheckpointError: listing every differing field with both values.
    """
    if checkpoint.get("backbone") != backbone:
        raise CheckpointError(
            f"cannot resume from {path}: it was trained on backbone {checkpoint.get('backbone')} "
            f"but this run builds {backbone}"
        )
    diffs = _differences(
        _without(checkpoint.get("config", {}), RESUME_INDEPENDENT_FIELDS),
        _without(config, RESUME_INDEPENDENT_FIELDS),
    )
    if diffs:
        listed = "\n".join(
            f"  {field}: {old!r} (checkpoint) vs {new!r} (this run)" for field, old, new in diffs
        )
        raise CheckpointError(
            f"cannot resume from {path}: it was written by a different configuration:\n{listed}\n"
            "Resume with the same settings, or start a new run in another --output-dir."
        )


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) random states, as weights-only-loadable values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
