"""The reference's EVA vision tower, by its state-dict names, mapped onto s4v's EVA modules.

Side4Video's EVA models (github.com/HJYao00/Side4Video @ 5d72352) wrap one module,
``EVAVisionTransformer`` of ``Recognition/eva_clip/eva_vit_model.py`` (recognition) and of
``Retrieval/eva_clip/eva_vit_model.py`` (retrieval: the same class plus ``side_post_bn`` and
``side_proj``), which holds the frozen EVA-CLIP tower *and* the side network. Every name below is
an attribute of that file, built as ``_build_vision_tower`` of ``eva_clip/model.py`` calls it
(``num_classes=embed_dim``, ``use_mean_pooling=global_average_pool=False``; configs
``EVA02-CLIP-bigE-14``: post-norm blocks, fused ``qkv``, GELU MLP; ``EVA02-CLIP-L-14``: ``subln``,
``rope``, ``naiveswiglu``; these JSON configs are EVA-CLIP's ``eva_clip/model_configs``, which the
reference vendors but its stored snapshot lacks, read from a vendored copy of EVA-CLIP, as is the
``rope.py`` that ``eva_vit_model.py`` imports). The side network's ``AttnCBlock`` gives its
attention ``dim // 64`` heads.

Reference name (relative to the ViT; the class of ``eva_vit_model.py`` that defines it) -> s4v
name (timm ``Eva`` inside ``FrozenEVA``):

* ``cls_token``, ``pos_embed`` (``EVAVisionTransformer``) -> ``trunk.cls_token``, ``trunk.pos_embed``
* ``patch_embed.proj.*`` (``PatchEmbed``, a Conv2d with bias) -> ``trunk.patch_embed.proj.*``
* ``rope.freqs_{cos,sin}`` and, the same module again, ``blocks.{i}.attn.rope.freqs_{cos,sin}``
  (``VisionRotaryEmbeddingFast`` buffers, EVA-CLIP's ``rope.py``) -> not read: fixed tables that
  timm's own rope recomputes; only their presence is checked against the target's rope
* ``blocks.{i}.norm1/norm2.*``, ``gamma_1/gamma_2`` (``Block``; ``postnorm`` orders them)
  -> ``trunk.blocks.{i}.`` the same
* ``blocks.{i}.attn.qkv.weight`` (``Attention`` without ``subln``: fused, no bias) or
  ``blocks.{i}.attn.{q,k,v}_proj.weight`` (with ``subln``: three Linears without bias), plus
  ``attn.q_bias``/``attn.v_bias`` (``qkv_bias``; k has no bias) -> the target's layout:
  ``attn.qkv.weight`` (q, k, v stacked) with ``attn.q_bias``/``attn.v_bias``, or
  ``attn.{q,k,v}_proj.weight`` with ``attn.q_proj.bias``/``attn.v_proj.bias``
* ``blocks.{i}.attn.inner_attn_ln.*`` (``subln``) -> ``attn.norm.*``;
  ``blocks.{i}.attn.proj.*`` -> ``attn.proj.*``
* ``blocks.{i}.mlp.fc1/fc2.*`` (``Mlp``) -> ``mlp.fc1/fc2.*``; ``blocks.{i}.mlp.w1/w2/w3.*``
  (``SwiGLU``: ``w3(silu(w1 x) * w2 x)``) -> ``mlp.fc1_g/fc1_x/fc2.*``;
  ``blocks.{i}.mlp.ffn_ln.*`` (``subln``) -> ``mlp.norm.*``
* ``norm.*``, ``head.*`` (the CLIP head: LayerNorm, Linear D -> E with bias)
  -> ``ln_post.norm.*``, ``proj.head.*``

The side network's names (same file): ``side_conv1`` (``conv_3xnxn_std``), ``side_pre_bn3d``,
``side_spatial_position_embeddings`` (N rows), ``side_linears.{k}`` (Linear D -> C), ``side_lns.{k}``
(``FusedLayerNorm(C)``) and ``side_blocks.{k}`` (``AttnCBlock``: ``bn_1``, ``conv.0/1/2``,
``attn.{q,k,v}_proj``, ``attn.proj`` of ``SideAttention``, ``ln_1``, ``mlp.0/2`` of its
Sequential, ``bn_2``), with k = 0..S-1 the side layers in order (``drop_layer`` holds the even
layers, so the lists only have the odd ones); retrieval adds ``side_post_bn`` and ``side_proj``
(C x D). :data:`EVA_SIDE_KEYS` maps them onto :class:`s4v_core.side_eva.EvaSideNetwork`.

Conv3d weights of the side blocks are squeezed to s4v's Linear / depth-wise shapes and
:func:`reference_side_state` gives them back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = [
    "EVA_RETRIEVAL_SIDE_KEYS",
    "EVA_SIDE_KEYS",
    "REFERENCE_EVA_PREFIXES",
    "EvaReferenceParts",
    "convert_eva_head",
    "convert_eva_side",
    "convert_eva_tower",
    "open_clip_eva_state",
    "reference_eva_prefix",
    "reference_side_state",
    "split_reference_eva",
]

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_WB = ("weight", "bias")

# Reference side-network name (relative to the ViT) -> s4v EvaSideNetwork name; "{s}" is the
# position of a layer among the side layers.
_BLOCK, _OURS = "side_blocks.{s}", "blocks.{s}"
EVA_SIDE_KEYS: list[tuple[str, str]] = [
    *[(f"side_conv1.{p}", f"stem.conv.{p}") for p in _WB],
    *[(f"side_pre_bn3d.{p}", f"stem.norm.{p}") for p in _BN],
    ("side_spatial_position_embeddings", "pos_embed"),
    *[(f"side_linears.{{s}}.{p}", f"taps.{{s}}.proj.{p}") for p in _WB],
    *[(f"side_lns.{{s}}.{p}", f"taps.{{s}}.norm.{p}") for p in _WB],
    *[(f"{_BLOCK}.bn_1.{p}", f"{_OURS}.temporal.norm.{p}") for p in _BN],
    *[(f"{_BLOCK}.conv.0.{p}", f"{_OURS}.temporal.conv_in.{p}") for p in _WB],
    *[(f"{_BLOCK}.conv.1.{p}", f"{_OURS}.temporal.conv_dw.{p}") for p in _WB],
    *[(f"{_BLOCK}.conv.2.{p}", f"{_OURS}.temporal.conv_out.{p}") for p in _WB],
    *[
        (f"{_BLOCK}.attn.{name}_proj.{p}", f"{_OURS}.attn.{name}_proj.{p}")
        for name in ("q", "k", "v")
        for p in _WB
    ],
    *[(f"{_BLOCK}.attn.proj.{p}", f"{_OURS}.attn.out_proj.{p}") for p in _WB],
    *[(f"{_BLOCK}.ln_1.{p}", f"{_OURS}.attn.norm.{p}") for p in _WB],
    *[(f"{_BLOCK}.mlp.0.{p}", f"{_OURS}.mlp.fc1.{p}") for p in _WB],
    *[(f"{_BLOCK}.mlp.2.{p}", f"{_OURS}.mlp.fc2.{p}") for p in _WB],
    *[(f"{_BLOCK}.bn_2.{p}", f"{_OURS}.mlp.norm.{p}") for p in _BN],
]
# Retrieval only: the final BatchNorm (Retrieval/eva_clip/eva_vit_model.py).
EVA_RETRIEVAL_SIDE_KEYS: list[tuple[str, str]] = [
    (f"side_post_bn.{p}", f"post_norm.{p}") for p in _BN
]
# Conv3d weights that s4v keeps as Linear (1x1x1) or (C, 3) depth-wise weights.
_SQUEEZED = ("temporal.conv_in.weight", "temporal.conv_dw.weight", "temporal.conv_out.weight")

# Per-block renames of the tower (reference suffix -> timm suffix); q/k/v are handled apart.
_BLOCK_RENAMES = {
    "attn.inner_attn_ln.weight": "attn.norm.weight",
    "attn.inner_attn_ln.bias": "attn.norm.bias",
    "mlp.ffn_ln.weight": "mlp.norm.weight",
    "mlp.ffn_ln.bias": "mlp.norm.bias",
    "mlp.w1.weight": "mlp.fc1_g.weight",
    "mlp.w1.bias": "mlp.fc1_g.bias",
    "mlp.w2.weight": "mlp.fc1_x.weight",
    "mlp.w2.bias": "mlp.fc1_x.bias",
    "mlp.w3.weight": "mlp.fc2.weight",
    "mlp.w3.bias": "mlp.fc2.bias",
}
_KEPT_BLOCK_KEYS = {
    f"{module}.{p}" for module in ("norm1", "norm2", "attn.proj", "mlp.fc1", "mlp.fc2") for p in _WB
} | {"gamma_1", "gamma_2"}
_QKV = ("attn.qkv.weight", "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight")
_QV_BIAS = ("attn.q_bias", "attn.v_bias")
_ROPE = re.compile(r"^(blocks\.\d+\.attn\.)?rope\.freqs_(cos|sin)$")
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_TOWER_TOP = ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias")
_HEAD = {
    "norm.weight": "ln_post.norm.weight",
    "norm.bias": "ln_post.norm.bias",
    "fc_norm.weight": "ln_post.fc_norm.weight",
    "fc_norm.bias": "ln_post.fc_norm.bias",
    "head.weight": "proj.head.weight",
    "head.bias": "proj.head.bias",
}


class EvaReferenceParts:
    """A reference ``EVAVisionTransformer`` state split into its parts (keys relative to the ViT).

    Attributes:
        tower: the frozen tower's entries (embedding, blocks, rope tables).
        head: the CLIP head's (``norm``, ``fc_norm``, ``head``).
        side: the side network's (every ``side_*`` entry but ``side_proj``).
        side_proj: the retrieval ``side_proj`` (C x D), or None.
    """

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        self.tower: dict[str, torch.Tensor] = {}
        self.head: dict[str, torch.Tensor] = {}
        self.side: dict[str, torch.Tensor] = {}
        self.side_proj: torch.Tensor | None = None
        for key, value in state.items():
            if key == "side_proj":
                self.side_proj = value
            elif key.startswith("side_"):
                self.side[key] = value
            elif key in _HEAD:
                self.head[key] = value
            else:
                self.tower[key] = value

    @property
    def has_rope(self) -> bool:
        return any(_ROPE.match(key) for key in self.tower)


def split_reference_eva(
    state: Mapping[str, torch.Tensor], prefix: str
) -> tuple[EvaReferenceParts, dict[str, torch.Tensor]]:
    """The entries of ``state`` under ``prefix`` (the ViT's, prefix removed) and the others."""
    inside = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    outside = {k: v for k, v in state.items() if not k.startswith(prefix)}
    return EvaReferenceParts(inside), outside


def _shape_error(source: str, reference: str, got, expected, what: str) -> ValueError:
    return ValueError(
        f"{source}: {reference!r} has shape {tuple(got)}, but {what} expects {tuple(expected)}"
    )


def _block_entries(index: int, entries: dict[str, torch.Tensor], fused: bool, source: str):
    """One block's reference entries -> timm names, q/k/v laid out as the target has them."""
    out = {}
    for suffix, value in entries.items():
        if suffix in _KEPT_BLOCK_KEYS:
            out[suffix] = value
        elif suffix in _BLOCK_RENAMES:
            out[_BLOCK_RENAMES[suffix]] = value
        elif suffix not in _QKV + _QV_BIAS:
            raise ValueError(
                f"{source}: unknown EVA tower key 'blocks.{index}.{suffix}' (relative positions "
                "and other EVA options the open_clip towers lack cannot be imported)"
            )
    if "attn.qkv.weight" in entries:
        q, k, v = entries["attn.qkv.weight"].chunk(3)
    elif all(name in entries for name in _QKV[1:]):
        q, k, v = (entries[name] for name in _QKV[1:])
    else:
        return out  # reported as missing by the caller
    if fused:
        out["attn.qkv.weight"] = torch.cat([q, k, v])
        for name in _QV_BIAS:
            if name in entries:
                out[name] = entries[name]
    else:
        out |= {"attn.q_proj.weight": q, "attn.k_proj.weight": k, "attn.v_proj.weight": v}
        for name, target in zip(_QV_BIAS, ("attn.q_proj.bias", "attn.v_proj.bias"), strict=True):
            if name in entries:
                out[target] = entries[name]
    return out


def convert_eva_tower(
    parts: EvaReferenceParts,
    expected: Mapping[str, torch.Tensor],
    *,
    has_rope: bool,
    source: str,
    backbone: str,
) -> dict[str, torch.Tensor]:
    """The reference tower's entries renamed (and q/k/v re-laid) into a timm ``Eva``'s names.

    Args:
        parts: the reference ViT's parts.
        expected: the target trunk's state dict (tensors or meta tensors: names and shapes).
        has_rope: whether the target trunk has a rotary embedding (the file must have one too).
        source: the file, for messages.
        backbone: the target's name (an open_clip model), for messages.

    Returns:
        A state dict with exactly ``expected``'s keys.

    Raises:
        ValueError: naming the first unknown or missing key, a wrongly shaped tensor, or a rope
            that one side has and the other lacks: the tower in the file is not ``backbone``.
    """
    if parts.has_rope != has_rope:
        have, lack = ("the file", backbone) if parts.has_rope else (backbone, "the file")
        raise ValueError(
            f"{source}: {have} has a rotary position embedding and {lack} has none; the EVA "
            f"tower in the file is not {backbone}"
        )
    fused = any(key.endswith("attn.qkv.weight") for key in expected)
    by_block: dict[int, dict[str, torch.Tensor]] = {}
    converted = {}
    for key, value in parts.tower.items():
        if _ROPE.match(key):
            continue
        if key in _TOWER_TOP:
            converted[key] = value
        elif match := _BLOCK_KEY.match(key):
            by_block.setdefault(int(match[1]), {})[match[2]] = value
        else:
            raise ValueError(f"{source}: unknown EVA tower key {key!r}")
    for index, entries in sorted(by_block.items()):
        for suffix, value in _block_entries(index, entries, fused, source).items():
            converted[f"blocks.{index}.{suffix}"] = value
    _check_same_keys(converted, expected, source, backbone)
    for key, value in converted.items():
        if value.shape != expected[key].shape:
            raise _shape_error(source, key, value.shape, expected[key].shape, backbone)
    return converted


def _check_same_keys(converted, expected, source: str, backbone: str) -> None:
    extra = sorted(set(converted) - set(expected))
    missing = sorted(set(expected) - set(converted))
    layers = {int(m[1]) for key in converted if (m := _BLOCK_KEY.match(key))}
    depth = {int(m[1]) for key in expected if (m := _BLOCK_KEY.match(key))}
    if len(layers) != len(depth):
        raise ValueError(
            f"{source}: the EVA tower in the file has {len(layers)} blocks, {backbone} has "
            f"{len(depth)}"
        )
    if extra:
        raise ValueError(
            f"{source}: EVA tower entry {extra[0]!r} ({len(extra)} in all) has no place in "
            f"{backbone}"
        )
    if missing:
        raise ValueError(
            f"{source}: {backbone} needs {missing[0]!r} ({len(missing)} in all), which the EVA "
            "tower in the file lacks"
        )


def convert_eva_head(
    parts: EvaReferenceParts, expected: Mapping[str, torch.Tensor], *, source: str, backbone: str
) -> dict[str, torch.Tensor]:
    """The reference's CLIP head (``norm``, ``head``) in ``FrozenEVA``'s ``ln_post``/``proj`` names.

    ``expected`` is the frozen tower's state dict; entries of it outside ``ln_post``/``proj`` are
    ignored. Raises ValueError naming a missing, unknown or wrongly shaped entry.
    """
    wanted = {k for k in expected if k.startswith(("ln_post.", "proj."))}
    converted = {_HEAD[k]: v for k, v in parts.head.items()}
    extra, missing = sorted(set(converted) - wanted), sorted(wanted - set(converted))
    if extra or missing:
        raise ValueError(
            f"{source}: the CLIP head in the file ({', '.join(sorted(parts.head)) or 'none'}) "
            f"does not fit {backbone}'s ({', '.join(sorted(wanted)) or 'none'})"
        )
    for key, value in converted.items():
        if value.shape != expected[key].shape:
            raise _shape_error(source, key, value.shape, expected[key].shape, backbone)
    return converted


def _side_map(side_layers: tuple[int, ...], retrieval: bool) -> dict[str, str]:
    pairs = EVA_SIDE_KEYS + (EVA_RETRIEVAL_SIDE_KEYS if retrieval else [])
    mapping = {}
    for reference, ours in pairs:
        slots = range(len(side_layers)) if "{s}" in ours else [None]
        for slot in slots:
            mapping[reference.format(s=slot)] = ours.format(s=slot)
    return mapping


def _squeezed(shape) -> tuple[int, ...]:
    return tuple(size for size in shape if size != 1)


def convert_eva_side(
    parts: EvaReferenceParts,
    expected: Mapping[str, torch.Tensor],
    side_layers: tuple[int, ...],
    *,
    retrieval: bool,
    source: str,
) -> dict[str, torch.Tensor]:
    """The reference side network's entries in an s4v EVA side network's names.

    Args:
        parts: the reference ViT's parts (its ``side`` entries are read).
        expected: the s4v side network's state dict (names and shapes).
        side_layers: the backbone layers with a side block (their count fixes the lists' length).
        retrieval: whether the file is a retrieval model's (it then has ``side_post_bn``).
        source: the file, for messages.

    Raises:
        ValueError: naming the first unknown or missing entry or wrongly shaped tensor.
    """
    mapping = _side_map(side_layers, retrieval)
    unknown = sorted(set(parts.side) - set(mapping))
    if unknown:
        raise ValueError(
            f"{source}: unknown EVA side key {unknown[0]!r} ({len(unknown)} unknown) for "
            f"{len(side_layers)} side layers {side_layers}"
        )
    missing = sorted(set(mapping) - set(parts.side))
    if missing:
        raise ValueError(f"{source}: missing EVA side key {missing[0]!r} ({len(missing)} missing)")
    converted = {}
    for reference, ours in mapping.items():
        tensor, target = parts.side[reference], expected[ours].shape
        if ours.endswith(_SQUEEZED) and _squeezed(tensor.shape) == _squeezed(target):
            tensor = tensor.reshape(target)
        if tensor.shape != target:
            raise _shape_error(source, reference, tensor.shape, target, "the preset's side network")
        converted[ours] = tensor
    return converted


def reference_side_state(
    state: Mapping[str, torch.Tensor], side_layers: tuple[int, ...], *, retrieval: bool = False
) -> dict[str, torch.Tensor]:
    """An s4v EVA side network's ``state`` in the reference's names and Conv3d shapes."""
    out = {}
    for reference, ours in _side_map(side_layers, retrieval).items():
        tensor = state[ours]
        if ours.endswith("temporal.conv_dw.weight"):
            tensor = tensor.reshape(tensor.shape[0], 1, tensor.shape[1], 1, 1)
        elif ours.endswith(_SQUEEZED):
            tensor = tensor.reshape(*tensor.shape, 1, 1, 1)
        out[reference] = tensor
    return out


# The reference's CLIP head -> open_clip TimmModel's (``trunk.norm``, ``trunk.head``).
_OPEN_CLIP_HEAD = {
    "norm.weight": "trunk.norm.weight",
    "norm.bias": "trunk.norm.bias",
    "fc_norm.weight": "trunk.fc_norm.weight",
    "fc_norm.bias": "trunk.fc_norm.bias",
    "head.weight": "trunk.head.weight",
    "head.bias": "trunk.head.bias",
}
# Where the reference's EVA ViT sits in its files: recognition VideoCLIP, retrieval CLIP4CLIP.
REFERENCE_EVA_PREFIXES = ("visual.", "clip.visual.")


def reference_eva_prefix(state: Mapping[str, torch.Tensor]) -> str | None:
    """The prefix of the reference EVA ViT in a Side4Video file (``visual.`` for a recognition
    release, ``clip.visual.`` for a retrieval one), or None when ``state`` is not such a file."""
    for prefix in REFERENCE_EVA_PREFIXES:
        if f"{prefix}side_conv1.weight" in state and f"{prefix}cls_token" in state:
            return prefix
    return None


def open_clip_eva_state(
    state: Mapping[str, torch.Tensor],
    visual: torch.nn.Module,
    *,
    source: str,
    backbone: str,
) -> dict[str, torch.Tensor]:
    """The EVA tower of a reference Side4Video file under open_clip's ``TimmModel`` names.

    What :func:`s4v_core.create_clip` loads when ``pretrained`` is such a file: the tower and, when
    the file has it, the CLIP head (``trunk.norm``, ``trunk.head``), keys relative to ``visual``.

    Raises:
        ValueError: when ``state`` is no reference EVA file, or its tower does not fit ``visual``.
    """
    prefix = reference_eva_prefix(state)
    if prefix is None:
        raise ValueError(f"{source}: not a Side4Video EVA file (no 'visual.side_conv1.weight')")
    parts, _ = split_reference_eva(state, prefix)
    trunk = visual.trunk
    head_keys = set(_OPEN_CLIP_HEAD.values())
    expected = {
        f"trunk.{k}": v for k, v in trunk.state_dict().items() if f"trunk.{k}" not in head_keys
    }
    tower = convert_eva_tower(
        parts,
        {k.removeprefix("trunk."): v for k, v in expected.items()},
        has_rope=trunk.rope is not None,
        source=source,
        backbone=backbone,
    )
    out = {f"trunk.{k}": v for k, v in tower.items()}
    out |= {_OPEN_CLIP_HEAD[k]: v for k, v in parts.head.items()}
    return out
