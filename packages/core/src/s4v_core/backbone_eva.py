"""Frozen EVA-02 CLIP image towers (open_clip ``EVA02-*``), yielding the tokens after every block.

The Side4Video reference runs its EVA variant on EVA-CLIP's ViT-E/14 (``EVA02-CLIP-bigE-14``) through
a vendored ``Recognition/eva_clip/eva_vit_model.py`` (github.com/HJYao00/Side4Video @ 5d72352). Here the tower is open_clip's
``EVA02-*`` model unchanged: a ``TimmModel`` whose ``trunk`` is timm's ``Eva``
(``timm/models/eva.py``), read block by block. Which part follows which paper:

* EVA-02 (arXiv 2303.11331), timm ``eva02_base_patch16_clip_224`` / ``eva02_large_patch14_clip_224``
  (open_clip ``EVA02-B-16``, ``EVA02-L-14``): pre-norm blocks, 2-D rotary position embedding on the
  patch queries and keys (the class token is not rotated), SwiGLU MLP with a LayerNorm inside it
  and a LayerNorm on the attention output (``scale_mlp``, ``scale_attn_inner``), separate q/k/v
  projections without a key bias.
* EVA-CLIP (arXiv 2303.15389), timm ``eva02_enormous_patch14_clip_224`` (open_clip ``EVA02-E-14``
  and ``EVA02-E-14-plus``, which differ only in the text tower): 64 post-norm blocks
  (``x + LN(attn(x))``, ``x + LN(mlp(x))``), GELU MLP, absolute position embedding only, no rope.
  EVA-CLIP-18B (arXiv 2402.04252) scales the same recipe further; open_clip ships no model of it.
* The CLIP head of all of them (EVA-CLIP, timm ``Eva.forward_head`` with ``global_pool='token'``,
  open_clip ``timm_proj: null``): ``norm`` after the last block, the class token, ``fc_norm``
  (identity for token pooling) and ``head``, a Linear **with a bias** that is the CLIP projection.

The embedding (``patch_embed``, ``_pos_embed``, ``norm_pre``), every block and every rope table are
timm's own modules and methods, called as ``Eva.forward_features`` calls them; nothing of EVA is
re-implemented here. ``_pos_embed`` is private in timm; the tests pin its result against
``Eva``'s own forward.

``s4v-tiny-eva``, the random 4-layer EVA of the tests and the CPU demo, is defined in
:mod:`s4v_core.clip_configs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import open_clip
import timm
import torch
from open_clip.timm_model import TimmModel
from timm.models.eva import Eva
from torch import nn

from s4v_core.clip_configs import register_model_configs
from s4v_core.tower import FrozenTower


@dataclass(frozen=True, kw_only=True, slots=True)
class ViTGeometry:
    """What a side network needs to know about an image tower, read from its config."""

    width: int  # D
    num_layers: int  # L
    patch_size: int  # p
    image_size: int
    grid: tuple[int, int]  # (h, w) patches; N = h * w


def is_eva_tower(visual: nn.Module) -> bool:
    """Whether ``visual`` is an open_clip image tower around a timm ``Eva`` (the ``EVA02-*`` models)."""
    return isinstance(visual, TimmModel) and isinstance(visual.trunk, Eva)


def eva_head_keys(visual: TimmModel) -> tuple[str, ...]:
    """The state-dict keys of ``visual`` that only the CLIP projection reads.

    ``trunk.norm``, ``trunk.fc_norm``, ``trunk.head`` and open_clip's adapter ``head``: what
    :class:`FrozenEVA` drops without ``with_projection`` (a file may leave them out).
    """
    trunk = visual.trunk
    parts = {"trunk.norm": trunk.norm, "trunk.fc_norm": trunk.fc_norm, "trunk.head": trunk.head}
    parts["head"] = visual.head
    return tuple(f"{prefix}.{key}" for prefix, part in parts.items() for key in part.state_dict())


def eva_geometry(name: str) -> ViTGeometry:
    """The geometry of open_clip EVA model ``name``, read from its timm trunk built on ``meta``.

    Nothing is allocated (EVA02-E-14 builds in about half a second).

    Raises:
        ValueError: when ``name`` is not an open_clip config around a timm ``Eva``.
    """
    register_model_configs()
    config = open_clip.get_model_config(name) or {}
    trunk_name = config.get("vision_cfg", {}).get("timm_model_name")
    if trunk_name is None or not timm.is_model(trunk_name):
        raise ValueError(f"{name!r} is not an open_clip config with a timm image tower")
    with torch.device("meta"):
        trunk = timm.create_model(trunk_name, pretrained=False, num_classes=0)
    if not isinstance(trunk, Eva):
        raise ValueError(
            f"{name!r}: timm model {trunk_name!r} is a {type(trunk).__name__}, not Eva"
        )
    return ViTGeometry(
        width=trunk.embed_dim,
        num_layers=len(trunk.blocks),
        patch_size=trunk.patch_embed.patch_size[0],
        image_size=trunk.patch_embed.img_size[0],
        grid=tuple(trunk.patch_embed.grid_size),
    )


def _to_weights_dtype(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype of ``module``'s weights (unchanged for a module without any)."""
    weight = next(module.parameters(), None)
    return x if weight is None else x.to(weight.dtype)


def image_embed_dim(visual: nn.Module) -> int:
    """E, the width of an open_clip image tower's embedding (ViT or EVA), read off its modules."""
    if hasattr(visual, "output_dim"):
        return visual.output_dim
    if is_eva_tower(visual):
        return _out_features(
            nn.ModuleList([visual.trunk.head, visual.head]), visual.trunk.embed_dim
        )
    raise ValueError(f"cannot tell the embedding width of a {type(visual).__name__} image tower")


def _out_features(projection: nn.Module, width: int) -> int:
    """E: the width of the last Linear of ``projection`` (D when it has none)."""
    linears = [m for m in projection.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else width


class EVAHeadNorm(nn.Module):
    """EVA's norms between the last block and the projection: ``fc_norm(norm(x))``.

    ``norm`` is per token, so on the class token alone it gives the class token of ``norm`` over all
    tokens, which is what ``Eva.forward_features`` then ``forward_head`` (token pooling) compute.
    Inputs are cast to the weights' dtype (a side network may add fp32 features to bf16 tokens).
    """

    def __init__(self, norm: nn.Module, fc_norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.fc_norm = fc_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., D)``."""
        return self.fc_norm(self.norm(_to_weights_dtype(self, x)))


class EVAProjection(nn.Module):
    """EVA-CLIP's projection, an affine map ``D -> E``, usable as ``features @ projection``.

    EVA's head is ``nn.Linear`` with a bias, which a plain matrix (FrozenViT's ``proj``) cannot hold.
    This module implements ``__rmatmul__`` so that ``ln_post(cls) @ proj`` reads the same for both
    backbones: ``x @ proj == adapter(head(x))`` with ``head`` timm's ``Eva.head`` and ``adapter``
    open_clip's ``TimmModel.head`` (empty for ``timm_proj: null``, as in every ``EVA02-*`` config).
    Inputs are cast to the weights' dtype.
    """

    def __init__(self, head: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., E)``."""
        return self.adapter(self.head(_to_weights_dtype(self, x)))

    def __rmatmul__(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


def _cast_frozen(module: nn.Module, dtype: torch.dtype, keep: nn.Module | None) -> None:
    """Cast the floating parameters and buffers of ``module`` to ``dtype``, except ``keep``'s."""
    kept = set(keep.modules()) if keep is not None else set()
    for sub in module.modules():
        if sub in kept:
            continue
        for name, param in list(sub.named_parameters(recurse=False)):
            if param.is_floating_point():
                setattr(sub, name, nn.Parameter(param.detach().to(dtype), requires_grad=False))
        for name, buffer in list(sub.named_buffers(recurse=False)):
            if buffer.is_floating_point():
                setattr(sub, name, buffer.to(dtype))


class FrozenEVA(FrozenTower):
    """An EVA-02 CLIP image tower that never trains, with :class:`~s4v_core.FrozenViT`'s interface.

    Parameters frozen, always in eval mode (no dropout or drop-path), every forward under
    ``torch.no_grad()``. :meth:`iter_blocks` yields the tokens after each timm block,
    ``(B*T, 1+N, D)`` batch-first with the class token first, one layer at a time; each block gets
    the rotary table timm's ``Eva`` gives it.

    The CLIP image embedding is ``ln_post(cls_after_last_block) @ proj`` as for FrozenViT:
    ``ln_post`` is an :class:`EVAHeadNorm` (``fc_norm(norm(.))``) and ``proj`` an
    :class:`EVAProjection` (timm's ``head``, a Linear with bias, applied by ``@``).

    Weights dtype: ``weights_dtype`` casts the tower's parameters and buffers once (bf16 halves the
    memory of a frozen tower and needs no fp32 master copy). The rotary sin/cos tables stay fp32:
    timm rotates in the table's dtype and casts the rotated q/k back to the activations' dtype, as it
    does with fp32 weights under autocast. Images are cast to the weights' dtype on the way in and
    tokens come back in it (under autocast, autocast decides each op's dtype as usual); a side
    network with fp32 weights should run under autocast or cast the tokens.

    Args:
        visual: an open_clip ``TimmModel`` whose ``trunk`` is a timm ``Eva`` (taken over, not copied:
            its ``trunk.norm``/``fc_norm``/``head`` are moved out or dropped).
        identity: where the weights came from (see :func:`~s4v_core.create_clip`).
        with_projection: keep ``ln_post`` and ``proj`` for :meth:`encode_image`; dropped by default
            (Side4Video does not use them).
        weights_dtype: dtype of the frozen weights (e.g. ``torch.bfloat16``); None keeps them.

    Raises:
        TypeError: when ``visual`` is not an open_clip tower around a timm ``Eva``.
        ValueError: for Eva options this interface cannot express (register tokens, no class
            token, dynamic image size, a head that does not project the class token).
    """

    def __init__(
        self,
        visual: nn.Module,
        identity: dict,
        *,
        with_projection: bool = False,
        weights_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not is_eva_tower(visual):
            raise TypeError(
                f"FrozenEVA needs an open_clip TimmModel around a timm Eva, got {type(visual)}"
            )
        trunk: Eva = visual.trunk
        if trunk.cls_token is None or trunk.num_prefix_tokens != 1:
            raise ValueError("FrozenEVA needs exactly one prefix token, the class token")
        if trunk.dynamic_img_size:
            raise ValueError("FrozenEVA expects a fixed image size (dynamic_img_size=False)")
        if with_projection and (trunk.global_pool != "token" or trunk.attn_pool is not None):
            raise ValueError(
                f"the CLIP head must project the class token; this Eva pools {trunk.global_pool!r}"
            )
        if with_projection:
            self.ln_post: EVAHeadNorm | None = EVAHeadNorm(trunk.norm, trunk.fc_norm)
            self.proj: EVAProjection | None = EVAProjection(trunk.head, visual.head)
            self.embed_dim: int | None = _out_features(self.proj, trunk.embed_dim)
        else:
            self.ln_post = self.proj = self.embed_dim = None
        # The trunk keeps the embedding, the blocks and the rope; its head now lives above (or is
        # gone), so that parameters() and state_dict() hold each frozen tensor once.
        trunk.norm, trunk.fc_norm, trunk.head = nn.Identity(), nn.Identity(), nn.Identity()
        self.trunk = trunk
        self.width: int = trunk.embed_dim
        self.num_layers: int = len(trunk.blocks)
        self.patch_size: int = trunk.patch_embed.patch_size[0]
        self.image_size: int = trunk.patch_embed.img_size[0]
        self.grid: tuple[int, int] = tuple(trunk.patch_embed.grid_size)
        preprocess = getattr(visual, "preprocess_cfg", {})
        self.mean: tuple[float, ...] = tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std: tuple[float, ...] = tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD))
        self._identity = dict(identity)
        if weights_dtype is not None:
            _cast_frozen(self, weights_dtype, keep=trunk.rope)
        self.weights_dtype: torch.dtype = trunk.patch_embed.proj.weight.dtype
        self.requires_grad_(False)
        self.eval()

    @property
    def identity(self) -> dict:
        """``{"name": open_clip name, "pretrained": tag or path or None, "sha256": hash or None}``."""
        return dict(self._identity)

    @property
    def blocks(self) -> nn.ModuleList:
        """timm's blocks (``EvaBlock`` or ``EvaBlockPostNorm``)."""
        return self.trunk.blocks

    def train(self, mode: bool = True) -> FrozenEVA:
        # Always eval: timm's dropout, drop-path, patch dropout and rope coordinate jitter are all
        # training-only, and a frozen backbone must compute the same features in every step.
        return super().train(False)

    def rope(self, index: int) -> torch.Tensor | None:
        """The rotary table block ``index`` gets from ``Eva``, ``(N, 2 * head_dim)``, or None."""
        rope = self.trunk.rope
        if rope is None:
            return None
        if hasattr(rope, "feat_shape"):
            table = rope.get_embed()
        else:  # rope without a cached grid (timm's MRoPE) is asked for the grid, as Eva does
            table = rope.get_embed(shape=self.trunk.patch_embed.grid_size)
        return table[index] if self.trunk.rope_mixed else table  # mixed: one table per depth

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch, class token and position embedding: images ``(M, 3, H, W)`` -> ``(M, 1+N, D)``."""
        x = self.trunk.patch_embed(images.to(self.weights_dtype))  # (M, N, D)
        x, _ = self.trunk._pos_embed(x)  # (M, 1+N, D); the rope table comes from self.rope()
        return self.trunk.norm_pre(x)

    @torch.no_grad()
    def block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        """Block ``index`` on tokens ``(M, 1+N, D)``, with its rotary table."""
        return self.trunk.blocks[index](tokens, rope=self.rope(index))
