"""Building the frozen image towers: an open_clip CLIP with its weights, then its frozen wrapper.

Side4Video (arXiv 2311.15769; reference github.com/HJYao00/Side4Video @ 5d72352,
``Recognition/clip/model.py``) runs a CLIP image tower frozen beside a trainable side network.
:func:`create_clip` builds the open_clip model and loads its weights; :func:`build_backbone` wraps
its image tower as a :class:`~s4v_core.backbone_vit.FrozenViT` (CLIP ViT) or a
:class:`~s4v_core.backbone_eva.FrozenEVA` (EVA-02), both read block by block.

Weights come from an open_clip pretrained tag (``openai``, ``laion2b_s34b_b88k``, ...), from a local
file (an OpenAI-format ``.pt``, TorchScript or plain state dict, or an open_clip state dict), or
nowhere (random initialisation). OpenAI weights need the ``-quickgelu`` model names.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import open_clip
import torch
from torch import nn

from s4v_core.backbone_eva import FrozenEVA, eva_head_keys, is_eva_tower
from s4v_core.backbone_vit import FrozenViT
from s4v_core.clip_configs import register_model_configs
from s4v_core.depth import random_clip
from s4v_core.eva_reference import open_clip_eva_state, reference_eva_prefix
from s4v_core.weights import load_state_dict_strict, read_state_dict

logger = logging.getLogger(__name__)

# Entries of TorchScript CLIP archives that are not weights (OpenAI's metadata, and the text
# tower's causal mask, a non-persistent buffer in open_clip).
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read CLIP weights from a local file without unpickling arbitrary objects.

    Accepts OpenAI's TorchScript archives and ``torch.save`` files holding a state dict, optionally
    under a ``state_dict`` or ``model_state_dict`` key (released Side4Video checkpoints) and with a
    DDP ``module.`` prefix (see :func:`s4v_core.weights.read_state_dict`).

    Raises:
        WeightsFileError: when the file holds no tensor state dict.
    """
    state = read_state_dict(path, torchscript=True)
    for key in _NON_WEIGHT_KEYS:
        state.pop(key, None)
    return state


@contextlib.contextmanager
def _quiet_root_warning(prefix: str) -> Iterator[None]:
    """Drop open_clip's root-logger messages starting with ``prefix`` while inside."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _is_side4video_release(state: dict[str, torch.Tensor]) -> bool:
    return "visual.side_conv1.weight" in state


def _release_backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The frozen ViT's tensors of a released Side4Video checkpoint (which shares CLIP's names)."""
    side_parts = ("side_conv1", "side_pre_bn3d", "side_post_bn", "transformer.side_")
    return {
        key: value
        for key, value in state.items()
        if key.startswith("visual.") and not key.removeprefix("visual.").startswith(side_parts)
    }


def _projection_keys(visual: nn.Module) -> tuple[str, ...]:
    """Keys of an image tower's state dict that only its CLIP projection reads."""
    if is_eva_tower(visual):
        return eva_head_keys(visual)
    return ("ln_post.weight", "ln_post.bias", "proj")


def require_open_clip_vit(name: str, method: str) -> None:
    """Refuse, before anything is built, an open_clip model whose image tower is not open_clip's own
    ViT (EVA-02 and other timm towers); ``method`` names the method in the error."""
    register_model_configs()
    config = open_clip.get_model_config(name)
    if config is not None and "timm_model_name" in config.get("vision_cfg", {}):
        raise ValueError(
            f"{method} needs an open_clip VisionTransformer; {name}'s image tower is timm's "
            f"{config['vision_cfg']['timm_model_name']}"
        )


def create_clip(
    name: str,
    pretrained: str | None = None,
    *,
    need_projection: bool = True,
    layers: int | None = None,
) -> tuple[open_clip.CLIP, dict]:
    """Build an open_clip CLIP (vision and text towers) and load its weights.

    Args:
        name: open_clip model name (``ViT-B-16``, ``ViT-B-16-quickgelu``, ``s4v-tiny``, ...).
        pretrained: an open_clip pretrained tag, a path to a local weights file, or None for
            random weights. A local file may hold the whole CLIP, only its ``visual.`` tower, or
            be a released Side4Video checkpoint (whose frozen ViT is then used; for an EVA
            release or retrieval file, its tower under the reference's EVA names, see
            :func:`s4v_core.eva_reference.open_clip_eva_state`).
        need_projection: whether the image tower's ``ln_post`` and ``proj`` must be loaded too
            (a Side4Video checkpoint does not have them).
        layers: build the image tower with this many blocks instead of the model's, from the
            model's own config (:func:`s4v_core.depth.random_clip`); random weights only.

    Returns:
        The model (eval mode, fp32, on the CPU) and its identity
        ``{"name", "pretrained", "sha256"}`` (``sha256`` only for local files).
    """
    register_model_configs()
    if name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {name!r}; see open_clip.list_models()")
    if layers is not None and pretrained is not None:
        raise ValueError(f"{name}: a tower of {layers} layers has random weights (pretrained=None)")
    identity = {"name": name, "pretrained": pretrained, "sha256": None}
    if pretrained is not None and Path(pretrained).is_file():
        with _quiet_root_warning("No pretrained weights loaded"):  # they are loaded just below
            model = open_clip.create_model(name, pretrained=None)
        state = read_clip_state_dict(pretrained)
        if reference_eva_prefix(state) is not None:  # a Side4Video EVA file: reference names
            state = {
                f"visual.{key}": value
                for key, value in open_clip_eva_state(
                    state, model.visual, source=str(pretrained), backbone=name
                ).items()
            }
        elif _is_side4video_release(state):
            state = _release_backbone(state)
        if all(key.startswith("visual.") for key in state):
            visual_state = {key.removeprefix("visual."): value for key, value in state.items()}
            head = () if need_projection else _projection_keys(model.visual)
            load_state_dict_strict(model.visual, visual_state, str(pretrained), may_miss=head)
        else:
            load_state_dict_strict(model, state, str(pretrained))
        identity["sha256"] = file_sha256(pretrained)
        logger.info("loaded %s weights from %s", name, pretrained)
    elif pretrained is not None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise ValueError(
                f"pretrained={pretrained!r} is neither a file nor an open_clip tag for {name} "
                f"(tags: {', '.join(tags) or 'none'})"
            )
        model = open_clip.create_model(name, pretrained=pretrained)
    else:
        with _quiet_root_warning("No pretrained weights loaded"):  # random weights were asked for
            model = random_clip(name, layers)
    return model.eval(), identity


def build_backbone(
    name: str,
    pretrained: str | None = None,
    *,
    with_projection: bool = False,
    weights_dtype: torch.dtype | None = None,
    layers: int | None = None,
) -> FrozenViT | FrozenEVA:
    """A frozen CLIP image tower: open_clip ``name`` with weights from ``pretrained``.

    Args:
        name: open_clip model name.
        pretrained: an open_clip pretrained tag, a local weights file, or None (random).
        with_projection: keep the tower's ``ln_post`` and ``proj`` (for ``encode_image``).
        weights_dtype: cast the frozen weights once to this dtype (``torch.bfloat16``); None keeps
            fp32. Images are cast to it and tokens come back in it.
        layers: the tower with this many blocks instead of the model's, random weights (see
            :func:`create_clip`); None: the model's depth.

    Returns:
        A :class:`~s4v_core.backbone_eva.FrozenEVA` for an image tower around timm's ``Eva``
        (open_clip ``EVA02-*``), a :class:`FrozenViT` otherwise.
    """
    clip, identity = create_clip(name, pretrained, need_projection=with_projection, layers=layers)
    return freeze_image_tower(
        clip.visual, identity, with_projection=with_projection, weights_dtype=weights_dtype
    )


def freeze_image_tower(
    visual: nn.Module,
    identity: dict,
    *,
    with_projection: bool = False,
    weights_dtype: torch.dtype | None = None,
) -> FrozenViT | FrozenEVA:
    """The frozen wrapper of an open_clip image tower: FrozenEVA for EVA-02, FrozenViT otherwise.

    Args are those of :func:`build_backbone`; ``visual`` and ``identity`` come from
    :func:`create_clip` (a caller that also needs the text tower keeps the rest of the CLIP).
    """
    if is_eva_tower(visual):
        return FrozenEVA(
            visual, identity, with_projection=with_projection, weights_dtype=weights_dtype
        )
    backbone = FrozenViT(visual, identity, with_projection=with_projection)
    return backbone if weights_dtype is None else backbone.to(weights_dtype)
