"""The Side4Video side network, retrieval variant, and the video tower it corrects.

Paper: Side4Video, arXiv 2311.15769. Reference: github.com/HJYao00/Side4Video @ 5d72352,
``Retrieval/modules/module_clip.py`` (spec section 4.1). The stem, the per-layer taps
(LayerNorm over D, Linear D -> C), the 0.5/0.5 fusion, the temporal conv and the BatchNorm-MLP are
those of the recognition network (:mod:`s4v_core.side`, reused here); what differs:

* **Attention** runs over ``[shifted class token; patches]`` with an ``N+1``-row side position
  embedding added to every row (the token included), and only the N patch outputs re-enter the
  residual stream. The reference computes full self-attention and discards the token's output row;
  since an output row depends only on its own query, this module asks for the N patch queries only,
  which gives the same numbers without the wasted row.
* **Output**: after the final BatchNorm the side tokens are averaged over space *per frame*,
  ``(B, T, C)``, projected by ``side_proj`` (C x D, **zero-initialised**) and added to the backbone's
  per-frame class token before its ``ln_post`` and ``proj``. At initialisation the video tower
  therefore returns exactly the plain CLIP frame embeddings.
* **Initialisation** is CLIP4Clip's (spec 4.1): every Linear N(0, 0.02^2) with zero bias (taps, MLP,
  attention output), attention input projection N(0, C^-1), 1x1x1 temporal convs N(0, 0.02^2),
  depth-wise temporal conv N(0, C^-1), position embedding N(0, 0.01^2).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from s4v_core.assembly import side_network_on
from s4v_core.backbone_vit import FrozenViT
from s4v_core.side import (
    ResidualSideBlock,
    SideMlp,
    SideNetworkConfig,
    SideTrunk,
    TemporalConv,
    run_side_layers,
)
from s4v_core.side_eva import EvaSideNetwork

_BERT_STD = 0.02  # CLIP4Clip's init for every nn.Linear


def _bert_init(linear: nn.Linear) -> None:
    nn.init.normal_(linear.weight, std=_BERT_STD)
    nn.init.zeros_(linear.bias)


class RetrievalSideAttention(nn.Module):
    """Patch tokens attend, within their frame, to ``[shifted class token; patches] + pos``.

    LayerNorm, then multi-head attention (heads = C // head_dim, biases, no dropout); keys and
    values are all 1+N rows, queries the N patch rows (see the module docstring).
    """

    def __init__(self, side_dim: int, head_dim: int) -> None:
        super().__init__()
        self.heads = side_dim // head_dim
        self.norm = nn.LayerNorm(side_dim)
        self.qkv = nn.Linear(side_dim, 3 * side_dim)  # q, k, v stacked, like in_proj_weight
        self.out_proj = nn.Linear(side_dim, side_dim)
        nn.init.normal_(self.qkv.weight, std=side_dim**-0.5)
        nn.init.zeros_(self.qkv.bias)
        _bert_init(self.out_proj)

    def forward(self, x: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x ``(M, N, C)``, shifted class token ``(M, 1, C)``, pos ``(1+N, C)`` -> ``(M, N, C)``."""
        z = self.norm(torch.cat([cls, x], dim=1) + pos)  # (M, 1+N, C)
        q, k, v = rearrange(self.qkv(z), "m s (three h d) -> three m h s d", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(q[:, :, 1:], k, v)  # (M, heads, N, head_dim)
        return self.out_proj(rearrange(out, "m h n d -> m n (h d)"))


class RetrievalSideBlock(ResidualSideBlock):
    """Temporal conv, class-token attention and MLP, each a residual branch on the patch tokens."""

    def __init__(self, config: SideNetworkConfig, num_frames: int) -> None:
        super().__init__()
        self.num_frames = num_frames
        c = config.side_dim
        self.temporal = TemporalConv(c)
        self.attn = RetrievalSideAttention(c, config.head_dim)
        self.mlp = SideMlp(c, config.mlp_ratio * c)
        nn.init.normal_(self.temporal.conv_in.weight, std=_BERT_STD)
        nn.init.normal_(self.temporal.conv_dw.weight, std=c**-0.5)
        nn.init.normal_(self.temporal.conv_out.weight, std=_BERT_STD)
        _bert_init(self.mlp.fc1)
        _bert_init(self.mlp.fc2)


class RetrievalSideNetwork(SideTrunk):
    """Pixels and per-layer backbone tokens -> one C-dim side feature per frame ``(B, T, C)``.

    Constructor arguments are :class:`~s4v_core.side.SideTrunk`'s.
    """

    block = RetrievalSideBlock
    class_token_row = True  # the position embedding has a row for the class token too

    def init_tap(self, tap: nn.Module) -> None:
        _bert_init(tap.proj)

    def forward(self, frames: torch.Tensor, layer_tokens: Iterable[torch.Tensor]) -> torch.Tensor:
        """Per-frame side features.

        Args:
            frames: normalised frames ``(B, T, 3, H, W)``.
            layer_tokens: the backbone's tokens after each block, ``(B*T, 1+N, D)`` each, in order.

        Returns:
            ``(B, T, C)``: the side tokens after the final BatchNorm, averaged over each frame.
        """
        if frames.shape[1] != self.num_frames:
            raise ValueError(f"expected {self.num_frames} frames, got frames {tuple(frames.shape)}")
        x = self.stem(frames)  # (B*T, N, C)
        x = run_side_layers(self, x, layer_tokens, recompute_taps=True)
        x = self.post_norm(x)
        return rearrange(x, "(b t) n c -> b t n c", t=self.num_frames).mean(dim=2)


class RetrievalVideoTower(nn.Module):
    """Per-frame CLIP embeddings of a frozen ViT, corrected by the retrieval side network.

    ``embedding_t = proj(ln_post(cls_t + side_t @ side_proj))`` with ``cls_t`` the backbone's class
    token of frame t after its last block and ``side_proj`` (C x D) zero at initialisation. With
    ``side=None`` the tower returns the plain CLIP frame embeddings (the "side network off"
    baseline). The backbone, ``ln_post`` and ``proj`` stay frozen.

    Args:
        backbone: a frozen image tower (:class:`FrozenViT` or ``FrozenEVA``) built with
            ``with_projection=True``.
        side: the side network, or None for plain CLIP frames.
    """

    def __init__(self, backbone: FrozenViT, side: RetrievalSideNetwork | None) -> None:
        super().__init__()
        if backbone.proj is None:
            raise ValueError("the retrieval video tower needs a backbone with ln_post and proj")
        self.backbone = backbone
        self.side = side
        self.side_proj = (
            nn.Parameter(torch.zeros(side.out_dim, backbone.width)) if side is not None else None
        )

    @property
    def embed_dim(self) -> int:
        """E, the width of the frame embeddings (CLIP's joint embedding width)."""
        return self.backbone.embed_dim

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``(B, T, 3, H, W)`` (CLIP-normalised) -> frame embeddings ``(B, T, E)``."""
        num_frames = frames.shape[1]
        images = rearrange(frames, "b t c h w -> (b t) c h w")
        if self.side is None:
            *_, last = self.backbone.iter_blocks(images)
            cls = last[:, 0]  # (B*T, D)
        else:
            seen: list[torch.Tensor] = []

            def keep_last(blocks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
                for tokens in blocks:
                    seen[:] = [tokens]  # only the latest layer stays referenced
                    yield tokens

            side = self.side(frames, keep_last(self.backbone.iter_blocks(images)))  # (B, T, C)
            correction = rearrange(side @ self.side_proj, "b t d -> (b t) d")
            cls = seen[0][:, 0] + correction  # (B*T, D)
        embeddings = self.backbone.ln_post(cls) @ self.backbone.proj  # (B*T, E)
        return rearrange(embeddings, "(b t) e -> b t e", t=num_frames)


class RetrievalEvaSideNetwork(EvaSideNetwork):
    """The retrieval side network of the reference's EVA variant: per-frame side features.

    ``Retrieval/eva_clip/eva_vit_model.py`` (github.com/HJYao00/Side4Video @ 5d72352) is the
    recognition EVA network (:class:`~s4v_core.side_eva.EvaSideNetwork`: post-norm blocks with
    separate q/k/v, taps Linear(D -> C) then LayerNorm(C), an N-row position embedding, side
    layers after the odd backbone layers) plus a final BatchNorm3d (``side_post_bn``); its output
    is averaged over space per frame, ``(B, T, C)``, for :class:`RetrievalVideoTower`'s
    ``side_proj``. Initialisation stays PyTorch's default, as there (that file's model is not
    CLIP4Clip's, so no BERT init is applied to it).
    """

    post_norm_layer = True  # side_post_bn

    def forward(self, frames: torch.Tensor, layer_tokens: Iterable[torch.Tensor]) -> torch.Tensor:
        """``(B, T, C)``: the side tokens after the final BatchNorm, averaged over each frame."""
        if frames.shape[1] != self.num_frames:
            raise ValueError(f"expected {self.num_frames} frames, got frames {tuple(frames.shape)}")
        x = self.stem(frames)  # (B*T, N, C)
        x = run_side_layers(self, x, layer_tokens)
        x = self.post_norm(x)
        return rearrange(x, "(b t) n c -> b t n c", t=self.num_frames).mean(dim=2)


# The retrieval side networks by the reference file they follow (a preset's ``side_network``).
RETRIEVAL_SIDE_NETWORKS = {"clip": RetrievalSideNetwork, "eva": RetrievalEvaSideNetwork}


def build_retrieval_video_tower(
    backbone: FrozenViT,
    config: SideNetworkConfig | None,
    *,
    num_frames: int,
    network: str = "clip",
) -> RetrievalVideoTower:
    """The video tower on ``backbone``: with a side network of ``config``, or plain CLIP if None.

    ``network`` picks the side network: ``"clip"`` (``Retrieval/modules/module_clip.py``) or
    ``"eva"`` (``Retrieval/eva_clip/eva_vit_model.py``, :class:`RetrievalEvaSideNetwork`).
    """
    side = None
    if config is not None:
        cls = RETRIEVAL_SIDE_NETWORKS[network]
        side = side_network_on(cls, config, backbone, num_frames=num_frames)
    return RetrievalVideoTower(backbone, side)
