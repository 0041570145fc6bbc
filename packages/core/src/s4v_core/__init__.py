"""s4v_core: frozen open_clip ViT backbones and the Side4Video side network."""

from s4v_core.backbone import build_backbone, create_clip
from s4v_core.backbone_eva import FrozenEVA, ViTGeometry
from s4v_core.backbone_vit import FrozenViT
from s4v_core.clip_configs import register_model_configs
from s4v_core.memory import SavedTensorMeter
from s4v_core.recompute import recompute
from s4v_core.side import SideNetwork, SideNetworkConfig

__all__ = [
    "FrozenEVA",
    "FrozenViT",
    "SavedTensorMeter",
    "SideNetwork",
    "SideNetworkConfig",
    "ViTGeometry",
    "build_backbone",
    "create_clip",
    "recompute",
    "register_model_configs",
]
