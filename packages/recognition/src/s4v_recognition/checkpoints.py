"""Model files: importing released Side4Video checkpoints, saving and loading s4v models.

Released recognition checkpoints (github.com/HJYao00/Side4Video @ 5d72352, ``model_best.pt``) are
``torch.save`` dicts ``{"epoch", "model_state_dict", "optimizer_state_dict"}`` whose
``model_state_dict`` holds the reference wrapper's ``visual.*`` (CLIP ViT with the side network
inside) and ``fc.*`` (head) tensors, possibly with a DDP ``module.`` prefix (spec section 8).
:data:`REFERENCE_KEYS` maps every one of them onto this package's module names. The files come from
the internet, so they are read with ``torch.load(weights_only=True)``: tensors and plain
containers only, never arbitrary pickled objects.

EVA releases (presets whose side network is an :class:`~s4v_core.side_eva.EvaSideNetwork`, such as
``side4video-e14``) are imported differently: their side network comes from the file's
``visual.side_*`` entries (:data:`EVA_SIDE_KEYS`) and their head from ``fc.*``, but the spec does
not list the reference's EVA backbone key names, so the file's other ``visual.*`` entries are
skipped and the frozen EVA backbone is loaded from ``pretrained`` (by default the preset's open_clip
tag) instead.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch

from s4v_core.backbone import file_sha256
from s4v_core.side_eva import EvaSideNetwork
from s4v_recognition.model import VideoClassifier, build_model
from s4v_recognition.presets import RecognitionPreset

logger = logging.getLogger(__name__)

# The layout of s4v checkpoints (shared with training runs' best.pt / last.pt).
CHECKPOINT_FORMAT = "s4v-checkpoint"
CHECKPOINT_VERSION = 1

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
# The head's entries, which the EVA path shares with the CLIP path.
_HEAD_KEYS: list[tuple[str, str]] = [pair for pair in _TRAINABLE_KEYS if pair[0].startswith("fc.")]
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


def _read_reference_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path}: not a torch checkpoint of tensors (weights_only=True refused it: {error})"
        ) from error
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model_state_dict"), dict):
        checkpoint = checkpoint["model_state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ValueError(f"{path}: expected a dict with 'model_state_dict', got {type(checkpoint)}")
    state = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[str(key).removeprefix("module.")] = value
    return state


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


def _layout(preset: str, num_classes: int) -> VideoClassifier:
    """The ``preset`` side4video model built on the meta device: its modules and shapes, no data.

    Torch's generator is restored after, so that a random backbone built next (``pretrained``
    None) is drawn as if this had not run.
    """
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return build_model(preset, num_classes)


def is_eva_preset(preset: str) -> bool:
    """Whether ``preset``'s side4video model has the EVA side network, so that its releases are
    imported with their backbone from ``pretrained`` (see :func:`load_side4video_checkpoint`)."""
    return isinstance(_layout(preset, 1).encoder.side, EvaSideNetwork)


def _load_release(
    path: Path, preset: str, num_classes: int, pretrained: str | None = None
) -> tuple[VideoClassifier, dict]:
    state = _read_reference_state(path)
    if "fc.weight" in state and state["fc.weight"].shape[0] != num_classes:
        raise ValueError(
            f"{path}: key 'fc.weight' has {state['fc.weight'].shape[0]} classes, "
            f"expected num_classes={num_classes}"
        )
    layout = _layout(preset, num_classes)
    if isinstance(layout.encoder.side, EvaSideNetwork):
        return _load_eva_release(path, state, layout, preset, num_classes, pretrained), state
    if pretrained is not None:
        raise ValueError(
            f"pretrained={pretrained!r} applies to EVA releases only: a release of preset "
            f"{preset!r} carries its frozen backbone, which is loaded from {path}"
        )
    model = build_model(preset, num_classes)
    model.load_state_dict(convert_reference_state(state, model, str(path)), strict=True)
    # The file supplies every weight, the frozen backbone included: it is the backbone's source,
    # exactly as if the model had been built with pretrained=path.
    model.set_backbone_identity(
        {"name": model.preset.backbone, "pretrained": str(path), "sha256": file_sha256(path)}
    )
    return model.eval(), state


def load_side4video_checkpoint(
    path: str | Path, preset: str, num_classes: int, *, pretrained: str | None = None
) -> VideoClassifier:
    """Build the ``preset`` side4video model and load a released Side4Video checkpoint into it.

    Args:
        path: the released file (``{"model_state_dict": ...}`` or a bare state dict).
        preset: the matching preset, e.g. ``side4video-b16`` for a ViT-B/16 release.
        num_classes: K of the release's head (174 for Something-Something, 400 for Kinetics).
        pretrained: EVA presets only (``side4video-e14``, ...): the frozen EVA backbone's weights,
            an open_clip tag or a local file; None takes the preset's own tag (for ``tiny-eva``,
            whose tag is None: random weights from torch's generator). The release's backbone
            entries are not read, their reference names being unknown. A CLIP-path release
            supplies its backbone itself, so passing ``pretrained`` for one is an error.

    Returns:
        The model in eval mode. On the CLIP path its ``backbone_identity`` names ``path`` and its
        SHA-256, and ``build_model(preset, num_classes, pretrained=path)`` rebuilds the same
        backbone; on the EVA path it is the identity of ``pretrained``'s weights, and
        ``build_model(preset, num_classes, pretrained=pretrained)`` rebuilds that backbone.

    Raises:
        ValueError: naming the key, for unknown, missing or wrongly shaped entries, or a file
            that is not a checkpoint of tensors; for ``pretrained`` with a CLIP-path preset.
    """
    model, _ = _load_release(Path(path), preset, num_classes, pretrained)
    logger.info("loaded Side4Video checkpoint %s into preset %s", path, preset)
    return model


def convert_side4video_checkpoint(
    source: str | Path,
    target: str | Path,
    preset: str,
    num_classes: int,
    *,
    pretrained: str | None = None,
    extra: dict | None = None,
) -> VideoClassifier:
    """Convert a released checkpoint into a self-contained s4v model file.

    The file is an s4v checkpoint (``format``, ``version``, ``task``, ``backbone``, ``model``
    as written by training runs) plus what is needed to rebuild the model without anything else:
    ``preset``, ``method``, ``num_classes``, ``settings`` and the frozen backbone's weights in
    ``backbone_state_dict`` (for an EVA release, those of ``pretrained``, as in
    :func:`load_side4video_checkpoint`). ``extra`` entries (e.g. a run ``config``) are stored as
    well. Read it back with :func:`load_converted_checkpoint`.
    """
    source, target = Path(source), Path(target)
    model, _ = _load_release(source, preset, num_classes, pretrained)
    identity = model.backbone_identity
    # On the CLIP path the release is the backbone's source and its hash is already known.
    from_release = identity["pretrained"] == str(source) and identity["sha256"] is not None
    release_sha256 = identity["sha256"] if from_release else file_sha256(source)
    trainable = model.trainable_state_dict()
    frozen = {k: v for k, v in model.state_dict().items() if k not in trainable}
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "task": "recognition",
            "preset": preset,
            "method": model.method,
            "num_classes": num_classes,
            "settings": _settings(model.preset),
            "backbone": model.backbone_identity,
            "model": trainable,
            "backbone_state_dict": frozen,
            "converted_from": {"path": str(source), "sha256": release_sha256},
            **(extra or {}),
        },
        target,
    )
    logger.info("converted %s -> %s", source, target)
    return model


def _settings(spec: RecognitionPreset) -> dict:
    return {k: v for k, v in asdict(spec).items() if k in ("num_frames", "side_dim", "dropout")}


def load_converted_checkpoint(path: str | Path) -> VideoClassifier:
    """The model saved by :func:`convert_side4video_checkpoint`, in eval mode."""
    path = Path(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a readable s4v checkpoint ({error})") from error
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an s4v checkpoint (format {CHECKPOINT_FORMAT!r})")
    if "backbone_state_dict" not in saved:
        raise ValueError(f"{path}: holds no backbone weights; it is not a converted release")
    model = build_model(
        saved["preset"], saved["num_classes"], method=saved["method"], **saved["settings"]
    )
    frozen = saved["backbone_state_dict"]
    unknown = sorted(set(frozen) - set(model.state_dict()))
    if unknown:
        raise ValueError(f"{path}: unknown backbone key {unknown[0]!r}")
    model.load_trainable_state_dict(saved["model"])
    model.load_state_dict(frozen, strict=False)
    model.set_backbone_identity(saved["backbone"])
    return model.eval()


# The EVA-CLIP variant (ViT-E/14, ``Recognition/eva_clip/eva_vit_model.py``, spec section 1.8). The
# spec describes that module's maths but does not list its state-dict keys, so these names are
# assumptions, built from the CLIP path's names (spec section 8) and the EVA ViT's conventions:
# * the side modules are attributes of the EVA ViT itself (it has ``blocks``, no ``transformer``
#   child), so they sit directly under ``visual.``, with the CLIP path's attribute names
#   (``side_conv1``, ``side_pre_bn3d``, ``side_spatial_position_embeddings``, ``side_linears``,
#   ``side_lns``, ``side_transformer``);
# * the side ModuleLists hold only the side layers that exist (32 for E/14), indexed 0..S-1 in
#   layer order ("{s}"); were they indexed by backbone layer, the patterns would use "{i}";
# * ``side_lns`` are LayerNorm(C) after ``side_linears`` (spec: Linear then LayerNorm);
# * in a side block, ``conv`` is the CLIP path's Sequential of three Conv3d (1x1x1, depth-wise
#   (3,1,1), 1x1x1) and ``bn_1`` the BatchNorm3d after it; ``attn`` has ``q_proj``, ``k_proj``,
#   ``v_proj`` (with biases) and an output Linear ``proj`` (EVA's attention names), ``ln_1`` the
#   LayerNorm after the attention; ``mlp`` is a Sequential (Linear, GELU, Linear), so its Linears
#   are ``mlp.0`` and ``mlp.2``; ``bn_2`` is the BatchNorm3d after the MLP;
# * there is no ``side_post_bn``.
# Patterns are relative to the reference's ``visual.`` and to the s4v EVA side network.
_EVA_BLOCK = "side_transformer.{s}"
_EVA_OURS = "blocks.{s}"
EVA_SIDE_KEYS: list[tuple[str, str]] = [
    *[(f"side_conv1.{p}", f"stem.conv.{p}") for p in _WB],
    *[(f"side_pre_bn3d.{p}", f"stem.norm.{p}") for p in _BN],
    ("side_spatial_position_embeddings", "pos_embed"),
    *[(f"side_linears.{{s}}.{p}", f"taps.{{s}}.proj.{p}") for p in _WB],
    *[(f"side_lns.{{s}}.{p}", f"taps.{{s}}.norm.{p}") for p in _WB],
    *[(f"{_EVA_BLOCK}.conv.0.{p}", f"{_EVA_OURS}.temporal.conv_in.{p}") for p in _WB],
    *[(f"{_EVA_BLOCK}.conv.1.{p}", f"{_EVA_OURS}.temporal.conv_dw.{p}") for p in _WB],
    *[(f"{_EVA_BLOCK}.conv.2.{p}", f"{_EVA_OURS}.temporal.conv_out.{p}") for p in _WB],
    *[(f"{_EVA_BLOCK}.bn_1.{p}", f"{_EVA_OURS}.temporal.norm.{p}") for p in _BN],
    *[
        (f"{_EVA_BLOCK}.attn.{name}_proj.{p}", f"{_EVA_OURS}.attn.{name}_proj.{p}")
        for name in ("q", "k", "v")
        for p in _WB
    ],
    *[(f"{_EVA_BLOCK}.attn.proj.{p}", f"{_EVA_OURS}.attn.out_proj.{p}") for p in _WB],
    *[(f"{_EVA_BLOCK}.ln_1.{p}", f"{_EVA_OURS}.attn.norm.{p}") for p in _WB],
    *[(f"{_EVA_BLOCK}.mlp.0.{p}", f"{_EVA_OURS}.mlp.fc1.{p}") for p in _WB],
    *[(f"{_EVA_BLOCK}.mlp.2.{p}", f"{_EVA_OURS}.mlp.fc2.{p}") for p in _WB],
    *[(f"{_EVA_BLOCK}.bn_2.{p}", f"{_EVA_OURS}.mlp.norm.{p}") for p in _BN],
]
_EVA_REFERENCE_PREFIX = "visual."


def eva_reference_key_map(
    side: EvaSideNetwork, *, reference_prefix: str = _EVA_REFERENCE_PREFIX, prefix: str = ""
) -> dict[str, str]:
    """Every reference EVA side-network key for ``side``'s side layers -> ``side``'s own key.

    Args:
        side: the s4v EVA side network (its ``side_layers`` fix the per-layer keys).
        reference_prefix: what precedes the side keys in the reference file (its ``visual.``).
        prefix: what precedes ``side``'s keys in the target state dict (e.g. ``encoder.side.``).
    """
    mapping = {}
    for reference, ours in EVA_SIDE_KEYS:
        per_layer = "{s}" in ours  # then "{s}" (slot) or "{i}" (backbone layer) in the reference
        for slot, layer in enumerate(side.side_layers) if per_layer else [(None, None)]:
            key = reference_prefix + reference.format(s=slot, i=layer)
            mapping[key] = prefix + ours.format(s=slot)
    return mapping


def convert_eva_side_state(
    state: dict[str, torch.Tensor],
    side: EvaSideNetwork,
    *,
    reference_prefix: str = _EVA_REFERENCE_PREFIX,
    source: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Rename (and reshape) the side network's entries of a reference EVA state dict.

    Only keys under ``{reference_prefix}side_`` are the side network's; the frozen EVA backbone's
    and the head's entries are left to their own importers and ignored here. Conv3d weights lose
    their singleton dimensions, as in the CLIP path.

    Returns:
        A state dict for ``side.load_state_dict(..., strict=True)``.

    Raises:
        ValueError: naming the first unknown side key, missing key or wrongly shaped tensor.
    """
    mapping = eva_reference_key_map(side, reference_prefix=reference_prefix)
    side_keys = {key for key in state if key.startswith(f"{reference_prefix}side_")}
    unknown = sorted(side_keys - set(mapping))
    if unknown:
        raise ValueError(
            f"{source}: unknown EVA side key {unknown[0]!r} ({len(unknown)} unknown keys) for "
            f"side layers {side.side_layers}"
        )
    return _renamed(state, mapping, side.state_dict(), source)


def _as_conv3d(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """An s4v temporal-conv weight in the reference's Conv3d shape; other tensors unchanged."""
    if key.endswith("temporal.conv_dw.weight"):
        return tensor.reshape(
            tensor.shape[0], 1, tensor.shape[1], 1, 1
        )  # (C, 3) -> (C, 1, 3, 1, 1)
    if any(key.endswith(name) for name in _RESHAPED):
        return tensor.reshape(*tensor.shape, 1, 1, 1)  # (C, C) -> (C, C, 1, 1, 1)
    return tensor


def eva_reference_side_state(
    side: EvaSideNetwork, *, reference_prefix: str = _EVA_REFERENCE_PREFIX
) -> dict[str, torch.Tensor]:
    """``side``'s state in the reference's EVA key layout (the inverse of
    :func:`convert_eva_side_state`), temporal-conv weights back in their Conv3d shapes."""
    state = side.state_dict()
    return {
        reference: _as_conv3d(ours, state[ours])
        for reference, ours in eva_reference_key_map(
            side, reference_prefix=reference_prefix
        ).items()
    }


def load_eva_side_checkpoint(path: str | Path, side: EvaSideNetwork) -> EvaSideNetwork:
    """Load the side network of a reference EVA checkpoint file into ``side`` (in place).

    The file is read like a CLIP-path release (``weights_only=True``, ``model_state_dict`` or a
    bare state dict, a DDP ``module.`` prefix dropped); its backbone and head entries are ignored.

    Returns:
        ``side``, in eval mode.
    """
    path = Path(path)
    state = _read_reference_state(path)
    side.load_state_dict(convert_eva_side_state(state, side, source=str(path)), strict=True)
    logger.info("loaded the EVA side network of %s", path)
    return side.eval()


def _convert_eva_release_state(
    state: dict[str, torch.Tensor], model: VideoClassifier, source: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``model``'s side network and head entries of a reference EVA ``model_state_dict``.

    Returns:
        The trainable state (``encoder.side.*`` and ``head.*`` keys) and the reference's
        backbone keys, which are not read.

    Raises:
        ValueError: naming the first unknown key (neither ``visual.*`` nor the head's), unknown
            side key, missing key or wrongly shaped tensor.
    """
    head = dict(_HEAD_KEYS)
    unknown = sorted(
        key for key in state if not key.startswith(_EVA_REFERENCE_PREFIX) and key not in head
    )
    if unknown:
        raise ValueError(
            f"{source}: unknown key {unknown[0]!r} ({len(unknown)} unknown keys); an EVA release "
            f"holds {_EVA_REFERENCE_PREFIX}* and {', '.join(head)} entries"
        )
    side = convert_eva_side_state(state, model.encoder.side, source=source)
    converted = {f"encoder.side.{key}": value for key, value in side.items()}
    expected = model.state_dict()
    for reference, ours in _HEAD_KEYS:
        if reference not in state:
            raise ValueError(f"{source}: missing key {reference!r}")
        tensor, target = state[reference], expected[ours].shape
        if tensor.shape != target:
            raise ValueError(
                f"{source}: key {reference!r} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(target)}"
            )
        converted[ours] = tensor
    side_prefix = f"{_EVA_REFERENCE_PREFIX}side_"
    skipped = sorted(
        key
        for key in state
        if key.startswith(_EVA_REFERENCE_PREFIX) and not key.startswith(side_prefix)
    )
    return converted, skipped


def _load_eva_release(
    path: Path,
    state: dict[str, torch.Tensor],
    layout: VideoClassifier,
    preset: str,
    num_classes: int,
    pretrained: str | None,
) -> VideoClassifier:
    """An EVA release: side network and head from ``state``, the backbone from ``pretrained``.

    ``layout`` is the model on the meta device: every key and shape is checked on it before the
    backbone's weights are read (or downloaded).
    """
    converted, skipped = _convert_eva_release_state(state, layout, str(path))
    backbone = pretrained if pretrained is not None else layout.preset.pretrained
    logger.info(
        "%s: skipped %d EVA backbone entries (their reference names are unknown); the frozen "
        "backbone comes from pretrained=%s",
        path,
        len(skipped),
        backbone,
    )
    model = build_model(preset, num_classes, pretrained=backbone)
    model.load_trainable_state_dict(converted)
    return model.eval()
