"""The reference's EVA retrieval checkpoints, imported into an s4v retrieval model.

Where each name comes from (github.com/HJYao00/Side4Video @ 5d72352):

* ``Retrieval/main_task_retrieval.py``: ``init_model`` builds ``eva_clip.eva_modeling.CLIP4CLIP``
  for an ``EVA*`` ``--pretrained_clip_name``; ``save_model`` writes
  ``torch.save(model_to_save.state_dict(), "pytorch_model.bin.<epoch>")`` with ``model_to_save``
  the model without its DDP wrapper: a bare state dict, no ``module.`` (dropped if present).
* ``Retrieval/eva_clip/eva_modeling.py``: ``CLIP4CLIP`` holds ``clip`` (``create_model_and_transforms
  (..., force_custom_clip=True)``) and, for ``--interaction wti``, ``text_weight_fc`` and
  ``video_weight_fc`` (``Sequential(Linear(1024, 1024), ReLU, Linear(1024, 1))``).
* ``Retrieval/eva_clip/model.py``: ``CustomCLIP`` holds ``visual``, ``text`` and ``logit_scale``
  (its aliases of the text modules are commented out in this copy, so each tensor appears once).
* ``Retrieval/eva_clip/eva_vit_model.py``: ``visual`` is an ``EVAVisionTransformer`` with the side
  network, ``side_post_bn`` and ``side_proj`` (see :mod:`s4v_core.eva_reference`).
* ``Retrieval/eva_clip/transformer.py``: ``text`` is a ``TextTransformer``: ``token_embedding``,
  ``positional_embedding`` (77 rows), ``transformer.resblocks.{i}`` (``ln_1``, ``attn`` an
  ``nn.MultiheadAttention`` as the configs' text ``xattn`` is false, ``ln_2``, ``mlp.c_fc``,
  ``mlp.c_proj``), ``ln_final``, ``text_projection``; its ``attn_mask`` is not persistent. These
  are open_clip's text names too, so they map one to one onto s4v's text tower.

So a file is ``clip.visual.*`` (tower, CLIP head, side network, ``side_proj``), ``clip.text.*``,
``clip.logit_scale``, ``text_weight_fc.{0,2}.*`` and ``video_weight_fc.{0,2}.*``; every entry is
imported and checked against the preset, the frozen towers included, so no ``pretrained`` is
needed. The reference's CLIP-path retrieval model (``modules/modeling.py``) is not covered here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from s4v_core.backbone import file_sha256, read_clip_state_dict
from s4v_core.eva_reference import (
    convert_eva_head,
    convert_eva_side,
    convert_eva_tower,
    split_reference_eva,
)
from s4v_core.weights import load_state_dict_strict
from s4v_retrieval.model import RetrievalModel, build_model
from s4v_retrieval.presets import get_preset

logger = logging.getLogger(__name__)

VISUAL, TEXT = "clip.visual.", "clip.text."
_WEIGHT_HEADS = {
    "text_weight_fc.": "similarity.text_weight.",
    "video_weight_fc.": "similarity.frame_weight.",
}


def _shape_checked(source: str, reference: str, tensor, expected) -> torch.Tensor:
    if tensor.shape != expected.shape:
        raise ValueError(
            f"{source}: {reference!r} has shape {tuple(tensor.shape)}, the preset expects "
            f"{tuple(expected.shape)}"
        )
    return tensor


def convert_retrieval_release(
    state: dict[str, torch.Tensor], layout: RetrievalModel, source: str
) -> dict[str, torch.Tensor]:
    """A reference EVA retrieval state dict under ``layout``'s keys (meta layouts will do).

    Raises:
        ValueError: naming the first unknown, missing or wrongly shaped entry, or a tower that is
            not the preset's.
    """
    if layout.video.side is None or layout.preset.side_network != "eva":
        raise ValueError(f"{source}: an EVA retrieval file needs an EVA side4video preset")
    expected = layout.state_dict()
    parts, outside = split_reference_eva(state, VISUAL)
    backbone = layout.video.backbone
    name = layout.preset.backbone
    tower = convert_eva_tower(
        parts,
        backbone.trunk.state_dict(),
        has_rope=backbone.trunk.rope is not None,
        source=source,
        backbone=name,
    )
    converted = {f"video.backbone.trunk.{k}": v for k, v in tower.items()}
    head = convert_eva_head(parts, backbone.state_dict(), source=source, backbone=name)
    converted |= {f"video.backbone.{k}": v for k, v in head.items()}
    side = layout.video.side
    converted |= {
        f"video.side.{k}": v
        for k, v in convert_eva_side(
            parts, side.state_dict(), side.side_layers, retrieval=True, source=source
        ).items()
    }
    if parts.side_proj is None:
        raise ValueError(f"{source}: missing key 'clip.visual.side_proj'")
    converted["video.side_proj"] = _shape_checked(
        source, "clip.visual.side_proj", parts.side_proj, expected["video.side_proj"]
    )
    for key, value in outside.items():
        if key.startswith(TEXT):
            ours = "text." + key.removeprefix(TEXT)
        elif key == "clip.logit_scale":
            ours = "logit_scale.log_scale"
            value = value.reshape(())
        elif prefix := next((p for p in _WEIGHT_HEADS if key.startswith(p)), None):
            ours = _WEIGHT_HEADS[prefix] + key.removeprefix(prefix)
        else:
            ours = None
        if ours not in expected:
            raise ValueError(f"{source}: unknown key {key!r} for retrieval preset {name}")
        converted[ours] = _shape_checked(source, key, value, expected[ours])
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise ValueError(f"{source}: no entry for {missing[0]!r} ({len(missing)} missing)")
    return converted


def load_retrieval_release(path: str | Path, preset: str) -> RetrievalModel:
    """The ``preset`` retrieval model (``side4video-e14``, ...) with every weight from ``path``.

    Returns:
        The model in eval mode; its ``backbone_identity`` names ``path`` and its SHA-256, and
        ``build_model(preset, pretrained=path)`` builds the same frozen towers (``create_clip``
        reads the reference's EVA names).

    Raises:
        ValueError: naming the key, for unknown, missing or wrongly shaped entries (a file of
            another model), or a file that is not a state dict of tensors.
    """
    path = Path(path)
    state = read_clip_state_dict(path)
    get_preset(preset)  # a clear error for an unknown name before anything is built
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        layout = build_model(preset)
    converted = convert_retrieval_release(state, layout, str(path))
    model = build_model(preset)
    load_state_dict_strict(model, converted, str(path))
    model.set_backbone_identity(
        {"name": model.preset.backbone, "pretrained": str(path), "sha256": file_sha256(path)}
    )
    logger.info("loaded the Side4Video retrieval checkpoint %s into preset %s", path, preset)
    return model.eval()
