"""The Side4Video side network, retrieval variant, and the video tower it corrects.

Paper: Side4Video, arXiv 2311.15769 (text-video retrieval; memory in its Table 3). Reference:
github.com/HJYao00/Side4Video @ 5d72352, ``Retrieval/modules/module_clip.py`` (the side network
inside the CLIP ``VisualTransformer``) and ``Retrieval/modules/modeling.py`` (``CLIP4Clip``,
whose init applies). The stem, the per-layer taps
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
* **Initialisation** is CLIP4Clip's (``CLIP4Clip.__init__``): every Linear N(0, 0.02^2) with zero bias (taps, MLP,
  attention output), attention input projection N(0, C^-1), 1x1x1 temporal convs N(0, 0.02^2),
  depth-wise temporal conv N(0, C^-1), position embedding N(0, 0.01^2).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from s4v_core.backbone_vit import FrozenViT
from s4v_core.recompute import recompute
from s4v_core.side import (
    SideMlp,
    SideNetworkConfig,
    SideStem,
    SideTap,
    TemporalConv,
    TokenBatchNorm,
    shift_class_tokens,
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


class RetrievalSideBlock(nn.Module):
    """Temporal conv, class-token attention and MLP, each a residual branch on the patch tokens.

    Args:
        config: side width C, head width and MLP ratio.
        num_frames: T; the temporal conv and the class-token shift need to know where videos start.
    """

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

    def forward(self, x: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x ``(B*T, N, C)``, class tokens ``(B*T, 1, C)``, pos ``(1+N, C)`` -> ``(B*T, N, C)``."""
        x = x + self.temporal(x, self.num_frames)
        x = x + self.attn(x, shift_class_tokens(cls, self.num_frames), pos)
        return x + self.mlp(x)


class RetrievalSideNetwork(nn.Module):
    """Pixels and per-layer backbone tokens -> one C-dim side feature per frame ``(B, T, C)``.

    The recognition network's stem and taps, a side position embedding with a row for the class
    token too (1+N rows, N(0, 0.01^2)), one :class:`RetrievalSideBlock` per side layer, a final
    BatchNorm and mean pooling over each frame's patches.

    Args:
        config: side width, heads, which layers get blocks, checkpointing.
        backbone_width: D, the backbone's token width.
        num_layers: L, the backbone's depth.
        patch_size: the backbone's patch size p (the stem uses the same patch grid).
        grid: the backbone's patch grid (h, w); N = h * w.
        num_frames: T; the temporal conv and class-token shift need to know where videos start.
    """

    def __init__(
        self,
        config: SideNetworkConfig,
        *,
        backbone_width: int,
        num_layers: int,
        patch_size: int,
        grid: tuple[int, int],
        num_frames: int,
    ) -> None:
        super().__init__()
        self.config = config
        self.num_frames = num_frames
        self.num_layers = num_layers
        self.side_layers = config.layers(num_layers)
        self.grad_checkpointing = config.grad_checkpointing
        c = config.side_dim
        # Built in this order (stem, position, taps, their init, blocks): the seeded init depends
        # on it.
        self.stem = SideStem(c, patch_size)
        self.pos_embed = nn.Parameter(torch.empty(grid[0] * grid[1] + 1, c))  # (1+N, C)
        nn.init.normal_(self.pos_embed, std=0.01)
        self.taps = nn.ModuleList(SideTap(backbone_width, c) for _ in self.side_layers)
        for tap in self.taps:
            _bert_init(tap.proj)
        self.blocks = nn.ModuleList(
            RetrievalSideBlock(config, num_frames) for _ in self.side_layers
        )
        self.post_norm = TokenBatchNorm(c)
        self.block_of_layer = {layer: i for i, layer in enumerate(self.side_layers)}

    @property
    def out_dim(self) -> int:
        return self.config.side_dim

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

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
        for layer, tokens in enumerate(layer_tokens):
            i = self.block_of_layer.get(layer)
            if i is None:
                continue  # no side block after this backbone layer
            # Recomputed in backward, which keeps only the backbone tokens the tap read.
            y = recompute(self.taps[i], tokens)  # (B*T, 1+N, C)
            x = (x + y[:, 1:]).mul_(0.5)  # bitwise 0.5 * x + 0.5 * y (halving is exact)
            # A copy, so that what the block keeps for backward does not pin all of y.
            cls = y[:, :1].contiguous()  # (B*T, 1, C)
            if self.grad_checkpointing:
                x = recompute(self.blocks[i], x, cls, self.pos_embed)
            else:
                x = self.blocks[i](x, cls, self.pos_embed)
        x = self.post_norm(x)
        return rearrange(x, "(b t) n c -> b t n c", t=self.num_frames).mean(dim=2)


class RetrievalEvaSideNetwork(EvaSideNetwork):
    """The retrieval side network of the reference's EVA variant: per-frame side features.

    ``Retrieval/eva_clip/eva_vit_model.py`` (github.com/HJYao00/Side4Video @ 5d72352) is the
    recognition EVA network (:class:`~s4v_core.side_eva.EvaSideNetwork`: post-norm blocks with
    separate q/k/v, taps Linear(D -> C) then LayerNorm(C), an N-row position embedding, side
    layers after the odd backbone layers) plus a final BatchNorm3d (``side_post_bn``); its output
    is averaged over space per frame, ``(B, T, C)``, for :class:`RetrievalVideoTower`'s
    ``side_proj``. Initialisation stays PyTorch's default, as there (that file's model is not
    CLIP4Clip's, so no BERT init is applied to it).

    Constructor arguments are :class:`~s4v_core.side_eva.EvaSideNetwork`'s.
    """

    def __init__(
        self,
        config: SideNetworkConfig,
        *,
        backbone_width: int,
        num_layers: int,
        patch_size: int,
        grid: tuple[int, int],
        num_frames: int,
    ) -> None:
        super().__init__(
            config,
            backbone_width=backbone_width,
            num_layers=num_layers,
            patch_size=patch_size,
            grid=grid,
            num_frames=num_frames,
        )
        self.post_norm = TokenBatchNorm(config.side_dim)  # side_post_bn

    def forward(self, frames: torch.Tensor, layer_tokens: Iterable[torch.Tensor]) -> torch.Tensor:
        """Per-frame side features.

        Args:
            frames: normalised frames ``(B, T, 3, H, W)``.
            layer_tokens: the backbone's tokens after each block, ``(B*T, 1+N, D)`` each, in order,
                in any floating dtype.

        Returns:
            ``(B, T, C)``: the side tokens after the final BatchNorm, averaged over each frame.
        """
        if frames.shape[1] != self.num_frames:
            raise ValueError(f"expected {self.num_frames} frames, got frames {tuple(frames.shape)}")
        x = self.stem(frames)  # (B*T, N, C)
        for layer, tokens in enumerate(layer_tokens):
            i = self.block_of_layer.get(layer)
            if i is None:
                continue  # the reference's EVA path taps the odd layers only
            y = self.taps[i](tokens)  # (B*T, 1+N, C)
            x = (x + y[:, 1:]).mul_(0.5)  # bitwise 0.5 * x + 0.5 * y (halving is exact)
            # A copy, so that what the block keeps for backward does not pin all of y.
            cls = y[:, :1].contiguous()  # (B*T, 1, C)
            if self.grad_checkpointing:
                x = recompute(self.blocks[i], x, cls, self.pos_embed)
            else:
                x = self.blocks[i](x, cls, self.pos_embed)
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
        side = RETRIEVAL_SIDE_NETWORKS[network](
            config,
            backbone_width=backbone.width,
            num_layers=backbone.num_layers,
            patch_size=backbone.patch_size,
            grid=backbone.grid,
            num_frames=num_frames,
        )
    return RetrievalVideoTower(backbone, side)
