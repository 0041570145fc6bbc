"""s4v_core: frozen open_clip ViT backbones and the Side4Video side network."""

from s4v_core.backbone import FrozenViT, build_backbone, create_clip, register_model_configs
from s4v_core.recompute import recompute
from s4v_core.side import SideNetwork, SideNetworkConfig

__all__ = [
    "FrozenViT",
    "SideNetwork",
    "SideNetworkConfig",
    "build_backbone",
    "create_clip",
    "recompute",
    "register_model_configs",
]
