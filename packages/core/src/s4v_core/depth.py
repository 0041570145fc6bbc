"""An open_clip model whose image tower has fewer (or more) layers, built as open_clip builds it.

:func:`random_clip` with ``layers`` builds open_clip ``name`` from its own config with one change,
the image tower's depth: the config's ``layers`` for an open_clip ``VisionTransformer``, and for a
timm trunk (the ``EVA02-*`` models) a timm entrypoint that builds the configured trunk with timm's
own ``depth`` argument (:func:`trunk_of_depth`). Every width, head count, patch, grid and block
option stays the model's, and the weights get the libraries' own random initialisation.

The memory plan (``s4v_recognition.bench.memory_plan``) measures such copies to extrapolate to a
tower too large to build on the machine at hand (EVA02-E-14: 64 layers, 4.35 B parameters).
"""

from __future__ import annotations

from typing import Any

import open_clip
import timm
import torch
from timm.models import register_model
from torch import nn

__all__ = ["random_clip", "trunk_of_depth", "vision_config_of_depth"]


def trunk_of_depth(timm_name: str, layers: int) -> str:
    """The name of a timm entrypoint building trunk ``timm_name`` with ``layers`` blocks.

    Registered with timm on first use (idempotent); random weights only.
    """
    if layers < 1:
        raise ValueError(f"a tower needs at least one layer, got {layers}")
    name = f"s4v_{timm_name}_depth{layers}"
    if timm.is_model(name):
        return name

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise ValueError(f"{name} has random weights only (a depth-changed {timm_name})")
        return timm.create_model(timm_name, pretrained=False, depth=layers, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    globals()[name] = entrypoint  # timm lists the name in this module's __all__
    register_model(entrypoint)
    return name


def vision_config_of_depth(name: str, layers: int) -> dict:
    """open_clip ``name``'s ``vision_cfg`` with ``layers`` blocks (pass as ``vision_cfg=``)."""
    if layers < 1:
        raise ValueError(f"a tower needs at least one layer, got {layers}")
    config = open_clip.get_model_config(name)
    if config is None:
        raise ValueError(f"unknown open_clip model {name!r}; see open_clip.list_models()")
    vision = dict(config["vision_cfg"])
    if "timm_model_name" in vision:
        vision["timm_model_name"] = trunk_of_depth(vision["timm_model_name"], layers)
    else:
        vision["layers"] = layers
    return vision


def random_clip(name: str, layers: int | None = None) -> open_clip.CLIP:
    """open_clip ``name`` with random weights and ``layers`` image-tower blocks (None: the model's).

    Built on the default device, so that under ``with torch.device("meta")`` nothing is allocated
    (counting the parameters of a large model; open_clip moves the model to ``device``).
    """
    depth = {} if layers is None else {"vision_cfg": vision_config_of_depth(name, layers)}
    return open_clip.create_model(name, pretrained=None, device=torch.get_default_device(), **depth)
