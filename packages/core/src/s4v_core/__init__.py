"""s4v_core: frozen open_clip ViT backbones and the Side4Video side network."""

from s4v_core.backbone import (
    FrozenViT,
    ViTGeometry,
    build_backbone,
    create_clip,
    register_model_configs,
    vit_geometry,
)
from s4v_core.memory import SavedTensorMeter
from s4v_core.recompute import recompute
from s4v_core.side import SideNetwork, SideNetworkConfig

__all__ = [
    "FrozenViT",
    "SavedTensorMeter",
    "SideNetwork",
    "SideNetworkConfig",
    "ViTGeometry",
    "build_backbone",
    "create_clip",
    "recompute",
    "register_model_configs",
    "vit_geometry",
]
