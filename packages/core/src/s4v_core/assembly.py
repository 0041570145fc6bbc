"""What every task's model assembly shares: registry lookups, preset overrides, wiring a side network
to its backbone, counting parameters without allocating them, and the trainable-state contract.

The recognition and retrieval packages each keep one registry of named presets and methods; their
``build_model`` functions are short because the steps they have in common live here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

import torch
from torch import nn

from s4v_core.backbone import create_clip
from s4v_core.side import SideNetworkConfig
from s4v_core.tower import FrozenTower
from s4v_core.weights import check_state_dict

logger = logging.getLogger(__name__)

_Value = TypeVar("_Value")
_Spec = TypeVar("_Spec")
_Side = TypeVar("_Side", bound=nn.Module)


def lookup(registry: Mapping[str, _Value], name: str, what: str) -> _Value:
    """``registry[name]``, or a ValueError that lists the known names of ``what``."""
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(registry)}") from None


def with_overrides(spec: _Spec, **overrides: Any) -> _Spec:
    """A copy of the frozen dataclass ``spec`` with every override that is not None applied."""
    return replace(spec, **{key: value for key, value in overrides.items() if value is not None})


def check_image_size(image_size: int, backbone: str, backbone_size: int) -> None:
    """Refuse a preset whose input resolution is not its backbone's."""
    if image_size != backbone_size:
        raise ValueError(
            f"preset image_size {image_size} differs from {backbone}'s {backbone_size}"
        )


def side_network_on(
    cls: Callable[..., _Side], config: SideNetworkConfig, backbone: FrozenTower, *, num_frames: int
) -> _Side:
    """A side network of class ``cls`` shaped for ``backbone`` (its width, depth, patch and grid)."""
    return cls(
        config,
        backbone_width=backbone.width,
        num_layers=backbone.num_layers,
        patch_size=backbone.patch_size,
        grid=backbone.grid,
        num_frames=num_frames,
    )


def trainable_parameters(model: nn.Module) -> int:
    """The number of parameters of ``model`` that train (``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_on_meta(build: Callable[[], nn.Module]) -> tuple[int, int]:
    """(trainable, total) parameters of the model ``build()`` makes, built on the meta device.

    Nothing is allocated and no weights are read, so counting a ViT-L model takes no memory.
    """
    with torch.device("meta"):
        model = build()
    return trainable_parameters(model), sum(p.numel() for p in model.parameters())


def image_tower_parameters(backbone: str) -> int:
    """Parameters of open_clip model ``backbone``'s whole image tower, counted on the meta device."""
    return count_on_meta(lambda: create_clip(backbone)[0].visual)[1]


def log_built(what: str, model: nn.Module) -> None:
    logger.info("built %s: %d trainable parameters", what, trainable_parameters(model))


class TrainableModule(nn.Module):
    """A task model with the checkpoint contract: it saves and loads only what trains.

    Saved are the parameters that train (``requires_grad``) and the buffers (BatchNorm
    statistics) outside the frozen towers (:class:`~s4v_core.tower.FrozenTower`); frozen
    weights, even those that gradients flow through (adapter methods), are rebuilt from the
    backbone's identity instead.
    """

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Trained parameters and buffers; nothing of the frozen weights."""
        frozen = [f"{name}." for name, m in self.named_modules() if isinstance(m, FrozenTower)]
        trained = {name for name, p in self.named_parameters() if p.requires_grad}
        buffers = {
            name
            for name, _ in self.named_buffers()
            if not any(name.startswith(prefix) for prefix in frozen)
        }
        return {
            key: value
            for key, value in self.state_dict().items()
            if key in trained or key in buffers
        }

    def load_trainable_state_dict(
        self, state: dict[str, torch.Tensor], source: str = "trainable state"
    ) -> None:
        """Load what :meth:`trainable_state_dict` saved; every key must match, with its shape.

        Raises:
            WeightsFileError: starting with ``source`` (the file it came from), listing the
                missing, unexpected and wrongly shaped keys.
        """
        check_state_dict(state, self.trainable_state_dict(), source)
        self.load_state_dict(state, strict=False)
