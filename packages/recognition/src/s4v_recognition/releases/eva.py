"""Released EVA recognition checkpoints (ViT-E/14, ``side4video-e14``), read as the reference saves them.

Where each name comes from (github.com/HJYao00/Side4Video @ 5d72352):

* ``Recognition/train_vision.py``: for an ``EVA02-CLIP-*`` arch the model is
  ``eva_clip.create_model_and_transforms(..., force_custom_clip=True)``; ``VideoCLIP`` keeps its
  ``visual`` (an ``EVAVisionTransformer``) and adds ``fc``; the file is
  ``{"epoch", "model_state_dict", "optimizer_state_dict"}`` without ``module.`` (as for CLIP).
* ``Recognition/eva_clip/eva_vit_model.py``: ``EVAVisionTransformer`` holds the frozen EVA-CLIP
  tower *and* the side network (its ``side_*`` attributes; ``side_blocks`` are ``AttnCBlock``),
  and, from ``eva_clip/model.py``'s ``_build_vision_tower``, the CLIP head ``norm`` and ``head``
  (Linear D -> E), which recognition never runs. The name-by-name table is in
  :mod:`s4v_core.eva_reference`.

So ``model_state_dict`` is ``visual.<EVA ViT with side modules>`` plus ``fc.{weight,bias}``.
Everything is imported from it: the side network (:func:`~s4v_core.eva_reference.convert_eva_side`),
the head, and the frozen tower (:func:`~s4v_core.eva_reference.convert_eva_tower`: mapped onto the
preset's open_clip/timm ``Eva``, q/k/v and SwiGLU re-laid, every shape checked against the preset,
a clear error naming the key when the file holds another tower). ``pretrained`` is then not
needed, and refused. A file whose ``visual.*`` holds only ``side_*`` entries (a side network
saved alone) takes its tower from ``pretrained`` (default: the preset's open_clip tag).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from s4v_core.backbone import file_sha256
from s4v_core.eva_reference import convert_eva_side, convert_eva_tower, split_reference_eva
from s4v_core.weights import load_state_dict_strict
from s4v_recognition.model import VideoClassifier, build_model

logger = logging.getLogger(__name__)

VISUAL = "visual."  # VideoCLIP.visual
HEAD_KEYS = {"fc.weight": "head.weight", "fc.bias": "head.bias"}  # VideoCLIP.fc


def _checked_head(state: dict[str, torch.Tensor], layout: VideoClassifier, source: str) -> dict:
    expected = layout.state_dict()
    converted = {}
    for reference, ours in HEAD_KEYS.items():
        if reference not in state:
            raise ValueError(f"{source}: missing key {reference!r}")
        tensor, target = state[reference], expected[ours].shape
        if tensor.shape != target:
            raise ValueError(
                f"{source}: key {reference!r} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(target)}"
            )
        converted[ours] = tensor
    return converted


def convert_eva_release(
    state: dict[str, torch.Tensor], layout: VideoClassifier, source: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """Split an EVA release's ``model_state_dict`` into s4v's names.

    Args:
        state: the release's ``model_state_dict`` (``module.`` already dropped).
        layout: the preset's model (the meta device will do: only names and shapes are read).
        source: the file, for messages.

    Returns:
        ``(trainable, backbone)``: the side network's and head's entries under ``layout``'s
        keys, and the frozen tower's under ``layout``'s ``encoder.backbone.*`` keys, or None when
        the file holds no tower entries.

    Raises:
        ValueError: naming the first unknown, missing or wrongly shaped entry.
    """
    parts, outside = split_reference_eva(state, VISUAL)
    unknown = sorted(set(outside) - set(HEAD_KEYS))
    if unknown:
        raise ValueError(
            f"{source}: unknown key {unknown[0]!r} ({len(unknown)} unknown keys); an EVA release "
            f"holds {VISUAL}* and {', '.join(HEAD_KEYS)} entries"
        )
    if parts.side_proj is not None:
        raise ValueError(
            f"{source}: 'visual.side_proj' belongs to a retrieval model; import it with "
            "s4v_retrieval's release importer"
        )
    tower = None
    if parts.tower:  # first the tower: a file of another model fails here, naming the key
        backbone = layout.encoder.backbone
        converted = convert_eva_tower(
            parts,
            backbone.trunk.state_dict(),
            has_rope=backbone.trunk.rope is not None,
            source=source,
            backbone=layout.preset.backbone,
        )
        tower = {f"encoder.backbone.trunk.{k}": v for k, v in converted.items()}
    if parts.head:  # the CLIP head (norm, head): recognition never runs it
        logger.info("%s: %d CLIP-head entries not used by recognition", source, len(parts.head))
    side = layout.encoder.side
    trainable = {
        f"encoder.side.{key}": value
        for key, value in convert_eva_side(
            parts, side.state_dict(), side.side_layers, retrieval=False, source=source
        ).items()
    }
    return trainable | _checked_head(state, layout, source), tower


def load_eva_release(
    path: Path,
    state: dict[str, torch.Tensor],
    layout: VideoClassifier,
    preset: str,
    num_classes: int,
    pretrained: str | None,
) -> VideoClassifier:
    """The EVA release's model, in eval mode; every key and shape checked on ``layout`` first.

    With the tower in the file the model's ``backbone_identity`` names ``path`` and its SHA-256,
    as ``build_model(preset, K, pretrained=path)`` would (``create_clip`` reads the reference's
    EVA names too). Without it, the tower comes from ``pretrained`` or the preset's tag.
    """
    source = str(path)
    trainable, tower = convert_eva_release(state, layout, source)
    if tower is None:
        backbone = pretrained if pretrained is not None else layout.preset.pretrained
        logger.info("%s holds no EVA tower; the backbone comes from %s", path, backbone)
        model = build_model(preset, num_classes, pretrained=backbone)
        model.load_trainable_state_dict(trainable, source)
        return model.eval()
    if pretrained is not None:
        raise ValueError(
            f"{path} carries its EVA backbone ({len(tower)} tower entries); "
            f"pretrained={pretrained!r} would replace it: leave it out"
        )
    model = build_model(preset, num_classes)
    load_state_dict_strict(model, tower | trainable, source)
    model.set_backbone_identity(
        {"name": layout.preset.backbone, "pretrained": source, "sha256": file_sha256(path)}
    )
    return model.eval()
