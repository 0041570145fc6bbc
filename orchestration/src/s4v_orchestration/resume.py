"""Resuming training: the compatibility check of a checkpoint against the run, and RNG states.

The file format (fields, atomic save, validated load) is :mod:`s4v_core.checkpoint`'s; a training
run's checkpoint adds the optimizer, scheduler and gradient-scaler states, the RNG states of
every rank (:func:`rng_state`), the epoch and step counters and the resolved run config.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s4v_core.checkpoint import CheckpointError

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
    "data.prefetch_factor",
    "data.persistent_workers",
    "solver.max_steps",
)


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
