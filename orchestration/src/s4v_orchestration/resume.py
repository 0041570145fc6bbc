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
from torch import nn

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


def restore_training_state(
    checkpoint: dict[str, Any],
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> None:
    """Load a checkpoint's optimizer, scheduler and gradient-scaler states into this run's.

    torch checks only that the optimizer's parameter groups have the same sizes; a moment tensor of
    another shape would fail at the first step, far from its cause. Here every per-parameter state
    tensor must have its parameter's shape.

    Raises:
        CheckpointError: naming ``path`` and the parameter (by its name in ``model``) or the part
            that does not fit.
    """
    names = {id(param): name for name, param in model.named_parameters()}
    saved = checkpoint["optimizer"]
    groups, saved_groups = optimizer.param_groups, saved.get("param_groups", [])
    sizes = [len(group["params"]) for group in groups]
    saved_sizes = [len(group["params"]) for group in saved_groups]
    if sizes != saved_sizes:
        raise CheckpointError(
            f"cannot resume from {path}: its optimizer has parameter groups of sizes "
            f"{saved_sizes}, this run's {sizes}"
        )
    params = [param for group in groups for param in group["params"]]
    saved_ids = [index for group in saved_groups for index in group["params"]]
    for param, index in zip(params, saved_ids, strict=True):
        for key, value in saved.get("state", {}).get(index, {}).items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                raise CheckpointError(
                    f"cannot resume from {path}: optimizer state {key!r} of "
                    f"{names.get(id(param), f'parameter {index}')} has shape "
                    f"{tuple(value.shape)}, the parameter {tuple(param.shape)}"
                )
    for part, target in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        try:
            target.load_state_dict(checkpoint[part])
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise CheckpointError(
                f"cannot resume from {path}: its {part} state does not load: {err}"
            ) from None


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
