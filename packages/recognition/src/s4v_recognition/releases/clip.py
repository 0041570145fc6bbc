"""Released CLIP-path recognition checkpoints: the reference's key names -> s4v's.

Where each name comes from (github.com/HJYao00/Side4Video @ 5d72352):

* ``Recognition/train_vision.py``: ``VideoCLIP`` keeps ``clip_model.visual`` as ``visual``, a
  parameterless ``fusion_model`` (``sim_header: None``) and ``drop_out``, and the head ``fc``;
  ``epoch_saving``/``best_saving`` write ``{"epoch", "model_state_dict": model.state_dict(),
  "optimizer_state_dict"}`` of the model without its DDP wrapper, so without ``module.`` (files
  saved otherwise may have it; it is dropped).
* ``Recognition/clip/model.py``: ``VisualTransformer`` (``conv1`` without bias,
  ``class_embedding``, ``positional_embedding``, ``ln_pre``, ``transformer``, ``side_conv1``,
  ``side_pre_bn3d``, ``side_post_bn``; no ``ln_post`` or ``proj``), its ``Transformer``
  (``resblocks``, ``side_lns``, ``side_linears``, ``side_transformer``,
  ``side_spatial_position_embeddings``), ``ResidualAttentionBlock`` (``ln_1``, ``attn`` an
  ``nn.MultiheadAttention``, ``ln_2``, ``mlp.c_fc``/``c_proj``) and the CLIP ``AttnCBlock``
  (``bn_1``, ``conv.0/1/2``, ``ln_1``, ``attn`` an ``nn.MultiheadAttention``, ``bn_2``,
  ``mlp.fc1``/``fc2``). Every layer has a side block (``drop_layer`` is empty).

So a CLIP release carries its whole frozen backbone (the ``resblocks`` and embeddings) and s4v
imports it from the file: ``pretrained`` is never needed. :data:`REFERENCE_KEYS` maps every
entry; the text tower is not in the file (``VideoCLIP`` drops it).
"""

from __future__ import annotations

import torch

from s4v_recognition.model import VideoClassifier

# Reference key pattern -> s4v key pattern. "{i}" is a backbone layer; on the s4v side, "{s}" is
# the position of that layer among the layers with a side block. Conv3d weights listed in _RESHAPED
# lose their singleton dimensions: 1x1x1 convs (C, C, 1, 1, 1) become Linear weights (C, C), the
# depth-wise temporal conv (C, 1, 3, 1, 1) becomes (C, 3).
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_WB = ("weight", "bias")
_FROZEN_KEYS: list[tuple[str, str]] = [
    ("visual.class_embedding", "encoder.backbone.class_embedding"),
    ("visual.positional_embedding", "encoder.backbone.positional_embedding"),
    ("visual.conv1.weight", "encoder.backbone.conv1.weight"),
    *[(f"visual.ln_pre.{p}", f"encoder.backbone.ln_pre.{p}") for p in _WB],
    *[
        (f"visual.transformer.resblocks.{{i}}.{name}", f"encoder.backbone.blocks.{{i}}.{name}")
        for name in (
            "ln_1.weight",
            "ln_1.bias",
            "attn.in_proj_weight",
            "attn.in_proj_bias",
            "attn.out_proj.weight",
            "attn.out_proj.bias",
            "ln_2.weight",
            "ln_2.bias",
            "mlp.c_fc.weight",
            "mlp.c_fc.bias",
            "mlp.c_proj.weight",
            "mlp.c_proj.bias",
        )
    ],
]
_SIDE_BLOCK = "visual.transformer.side_transformer.{i}"
_OUR_BLOCK = "encoder.side.blocks.{s}"
_TRAINABLE_KEYS: list[tuple[str, str]] = [
    *[(f"visual.side_conv1.{p}", f"encoder.side.stem.conv.{p}") for p in _WB],
    *[(f"visual.side_pre_bn3d.{p}", f"encoder.side.stem.norm.{p}") for p in _BN],
    ("visual.transformer.side_spatial_position_embeddings", "encoder.side.pos_embed"),
    *[(f"visual.transformer.side_lns.{{i}}.{p}", f"encoder.side.taps.{{s}}.norm.{p}") for p in _WB],
    *[
        (f"visual.transformer.side_linears.{{i}}.{p}", f"encoder.side.taps.{{s}}.proj.{p}")
        for p in _WB
    ],
    *[(f"{_SIDE_BLOCK}.bn_1.{p}", f"{_OUR_BLOCK}.temporal.norm.{p}") for p in _BN],
    *[(f"{_SIDE_BLOCK}.conv.0.{p}", f"{_OUR_BLOCK}.temporal.conv_in.{p}") for p in _WB],
    *[(f"{_SIDE_BLOCK}.conv.1.{p}", f"{_OUR_BLOCK}.temporal.conv_dw.{p}") for p in _WB],
    *[(f"{_SIDE_BLOCK}.conv.2.{p}", f"{_OUR_BLOCK}.temporal.conv_out.{p}") for p in _WB],
    *[(f"{_SIDE_BLOCK}.ln_1.{p}", f"{_OUR_BLOCK}.attn.norm.{p}") for p in _WB],
    (f"{_SIDE_BLOCK}.attn.in_proj_weight", f"{_OUR_BLOCK}.attn.qkv.weight"),
    (f"{_SIDE_BLOCK}.attn.in_proj_bias", f"{_OUR_BLOCK}.attn.qkv.bias"),
    *[(f"{_SIDE_BLOCK}.attn.out_proj.{p}", f"{_OUR_BLOCK}.attn.out_proj.{p}") for p in _WB],
    *[(f"{_SIDE_BLOCK}.bn_2.{p}", f"{_OUR_BLOCK}.mlp.norm.{p}") for p in _BN],
    *[(f"{_SIDE_BLOCK}.mlp.fc1.{p}", f"{_OUR_BLOCK}.mlp.fc1.{p}") for p in _WB],
    *[(f"{_SIDE_BLOCK}.mlp.fc2.{p}", f"{_OUR_BLOCK}.mlp.fc2.{p}") for p in _WB],
    *[(f"visual.side_post_bn.{p}", f"encoder.side.post_norm.{p}") for p in _BN],
    *[(f"fc.{p}", f"head.{p}") for p in _WB],
]
REFERENCE_KEYS: list[tuple[str, str]] = _FROZEN_KEYS + _TRAINABLE_KEYS
_RESHAPED = {"temporal.conv_in.weight", "temporal.conv_dw.weight", "temporal.conv_out.weight"}


def _squeezed(shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    return tuple(size for size in shape if size != 1)


def reference_key_map(model: VideoClassifier) -> dict[str, str]:
    """Every reference key for ``model``'s depth and side layers -> the model's own key."""
    if model.method != "side4video":
        raise ValueError(
            f"released Side4Video checkpoints hold side4video models, not {model.method}"
        )
    side = model.encoder.side
    slots = {layer: slot for slot, layer in enumerate(side.side_layers)}
    mapping = {}
    for ours_is_trainable, pairs in ((False, _FROZEN_KEYS), (True, _TRAINABLE_KEYS)):
        for reference, ours in pairs:
            if "{i}" not in reference:
                mapping[reference] = ours
                continue
            for layer in range(side.num_layers):
                if ours_is_trainable and layer not in slots:
                    continue
                mapping[reference.format(i=layer)] = ours.format(i=layer, s=slots.get(layer))
    return mapping


def convert_reference_state(
    state: dict[str, torch.Tensor], model: VideoClassifier, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Rename (and reshape) a reference ``model_state_dict`` into ``model``'s ``state_dict`` keys.

    Raises:
        ValueError: naming the first unknown, missing or wrongly shaped key.
    """
    mapping = reference_key_map(model)
    unknown = sorted(set(state) - set(mapping))
    if unknown:
        raise ValueError(
            f"{source}: unknown key {unknown[0]!r} ({len(unknown)} unknown keys) for preset "
            f"layout with {model.encoder.side.num_layers} layers"
        )
    return _renamed(state, mapping, model.state_dict(), source)


def _renamed(
    state: dict[str, torch.Tensor],
    mapping: dict[str, str],
    expected: dict[str, torch.Tensor],
    source: str,
) -> dict[str, torch.Tensor]:
    """``state`` under ``mapping``'s names, Conv3d weights squeezed to s4v's shapes.

    Raises:
        ValueError: naming the first missing key or wrongly shaped tensor.
    """
    missing = [key for key in mapping if key not in state]
    if missing:
        raise ValueError(f"{source}: missing key {missing[0]!r} ({len(missing)} missing keys)")
    converted = {}
    for reference, ours in mapping.items():
        tensor, target = state[reference], expected[ours].shape
        reshapable = any(ours.endswith(name) for name in _RESHAPED)
        if reshapable and tensor.dim() == 5 and _squeezed(tensor.shape) == _squeezed(target):
            tensor = tensor.reshape(target)
        if tensor.shape != target:
            raise ValueError(
                f"{source}: key {reference!r} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(target)}"
            )
        converted[ours] = tensor
    return converted
