"""Reading torch weight files and loading state dicts strictly: the one place both happen.

Every torch file s4v reads (a CLIP weights file, a released Side4Video checkpoint, an s4v checkpoint)
goes through :func:`read_torch_file`, which always uses ``torch.load(weights_only=True)``: tensors,
plain containers and numbers only, never arbitrary pickled objects, so a file from the internet
cannot run code. Every state dict s4v loads into a module goes through :func:`check_state_dict`,
which lists the missing, unexpected and wrongly shaped keys. Errors are :class:`WeightsFileError`,
one line that names the file (and the key where one is at fault).
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

_LISTED = 5  # keys named per kind of problem; the count says how many more there are


# The format tag of s4v's own checkpoints (s4v_core.checkpoint.FORMAT), told apart from weights.
CHECKPOINT_FORMAT = "s4v-checkpoint"


class WeightsFileError(ValueError):
    """A weights file that is missing, unreadable, or whose content does not fit: the message is
    one line naming the file (or other source) and, where one is at fault, the key."""


def _first_line(error: BaseException) -> str:
    """The informative line of a torch loading error (``weights_only`` refusals span many)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error"):
            return line
    return lines[0] if lines else type(error).__name__


def read_torch_file(path: str | Path) -> Any:
    """What ``torch.save`` wrote to ``path``, read on the CPU with ``weights_only=True``.

    Raises:
        WeightsFileError: the file does not exist, is not a torch file, or holds objects other
            than tensors and plain Python values (``weights_only=True`` refused it).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise WeightsFileError(
            f"{path}: not a torch checkpoint of tensors (weights_only=True refused it: "
            f"{_first_line(error)})"
        ) from error


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (OpenAI's CLIP ``.pt`` files are)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def read_state_dict(
    path: str | Path,
    *,
    wrappers: tuple[str, ...] = ("state_dict", "model_state_dict"),
    torchscript: bool = False,
) -> dict[str, torch.Tensor]:
    """The tensor state dict in a weights file, with a DDP ``module.`` prefix removed.

    Args:
        path: a ``torch.save`` file of a state dict, bare or under one of ``wrappers``' keys
            (``{"model_state_dict": ...}`` for released Side4Video checkpoints).
        wrappers: keys under which the state dict may sit, looked up in order.
        torchscript: also accept TorchScript archives (read with ``torch.jit.load``, which runs no
            Python pickle), as OpenAI's CLIP releases are.

    Raises:
        WeightsFileError: for an unreadable file, one that holds no dict, an empty one, or an entry
            that is not a tensor (naming its key).
    """
    path = Path(path)
    if torchscript and path.is_file() and is_torchscript_archive(path):
        with warnings.catch_warnings():
            # torch.jit is deprecated; OpenAI's files are TorchScript all the same.
            warnings.simplefilter("ignore", FutureWarning)
            content: Any = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        content = read_torch_file(path)
    for wrapper in wrappers:
        if isinstance(content, dict) and isinstance(content.get(wrapper), dict):
            content = content[wrapper]
            break
    if not isinstance(content, dict) or not content:
        expected = " or ".join(repr(w) for w in wrappers) or "tensors"
        raise WeightsFileError(
            f"{path}: expected a state dict (a dict of tensors, or one under {expected}), "
            f"found {'an empty dict' if isinstance(content, dict) else type(content).__name__}"
        )
    if content.get("format") == CHECKPOINT_FORMAT:
        raise WeightsFileError(
            f"{path} is already an s4v checkpoint (written by s4v run or s4v convert): use it "
            f"as it is, e.g. s4v eval recognition --checkpoint {path}"
        )
    state = {}
    for key, value in content.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsFileError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        state[str(key).removeprefix("module.")] = value
    return state


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return ", ".join(keys[:_LISTED]) + more


def check_state_dict(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    source: str,
    *,
    may_miss: tuple[str, ...] = (),
) -> None:
    """Refuse ``state`` unless it has exactly ``expected``'s keys, each with its shape.

    Args:
        state: the tensors to load.
        expected: the target's tensors (a module's ``state_dict()``, or a part of it).
        source: where ``state`` came from (a file path), to start the message.
        may_miss: keys of ``expected`` that ``state`` may lack.

    Raises:
        WeightsFileError: one line listing the missing keys, the unexpected keys and the keys
            whose shape differs (``key (file shape) vs (model shape)``).
    """
    missing = sorted(set(expected) - set(state) - set(may_miss))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and tuple(state[key].shape) != tuple(value.shape)
    ]
    problems = [
        f"{label} {_listed(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes (file vs model)", wrong),
        )
        if keys
    ]
    if problems:
        raise WeightsFileError(f"{source}: weights do not fit the model: " + "; ".join(problems))


def load_state_dict_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    may_miss: tuple[str, ...] = (),
) -> None:
    """``module.load_state_dict(state)`` after :func:`check_state_dict` against its own state.

    Keys in ``may_miss`` may be absent from ``state``; they keep their current values.

    Raises:
        WeightsFileError: naming ``source`` and every missing, unexpected or misshapen key.
    """
    check_state_dict(state, module.state_dict(), source, may_miss=may_miss)
    module.load_state_dict(state, strict=False)
