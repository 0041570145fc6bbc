"""The Side4Video recognition model: a frozen CLIP ViT and the side network beside it.

Paper: Side4Video, arXiv 2311.15769 (its Table 2 counts this model's parameters and memory).
Reference: github.com/HJYao00/Side4Video @ 5d72352,
``Recognition/clip/model.py`` (``VisualTransformer``: stem and post-norm; ``Transformer``: the
per-layer taps and fusion; ``AttnCBlock``: the side block) and ``Recognition/train_vision.py``
(``VideoCLIP``). Read top to bottom: the config, the small blocks, :class:`SideNetwork` (whose
``forward`` is the whole loop) and :class:`SideVideoEncoder`, which runs the frozen backbone and the
side network together. The maths follows the reference; the layout does not: tokens are
batch-first ``(B*T, N, C)`` with the frames of one video adjacent and channels last, so every
BatchNorm3d, 1x1x1 conv and attention runs without a transpose or copy (a BatchNorm3d over
``(B, C, T, h, w)`` is a BatchNorm over the ``B*T*h*w`` token rows; a 1x1x1 conv is a Linear over
channels).

Per frame, per backbone layer ``i`` that has a side block (reference: all of them):

    y = Linear_i(LayerNorm_i(backbone_tokens_i))         # (B*T, 1+N, D) -> (B*T, 1+N, C)
    x = 0.5 * x + 0.5 * y[:, 1:]                          # fixed fusion on patch tokens
    x = SideBlock_i(x, y[:, :1], pos)                     # temporal conv, attention, MLP

starting from a 3-D conv stem on the pixels and ending with a BatchNorm and mean pooling over
frames and patches. The backbone never reads the side branch, so no gradient reaches it.

Initialisation is what the reference *executes* (``CLIP.initialize_parameters`` and the side
blocks' init in ``Recognition/clip/model.py``), including its quirks, so that training
from scratch matches it: side Linear taps and temporal convs keep PyTorch's default init (the
reference's intended init hits the text tower's unused side modules and names convs that do not
exist); attention and MLP weights are normal with std ``C**-0.5``, ``(2C)**-0.5`` and, for the
output projections, ``C**-0.5 * 24**-0.5`` (the reference hard-codes 2 x 12 layers whatever the
depth).

The EVA variant (``Recognition/eva_clip/eva_vit_model.py``) is :mod:`s4v_core.side_eva`, the
retrieval variant (``Retrieval/modules/module_clip.py``) :mod:`s4v_core.side_retrieval`; both reuse
this file's blocks where the maths is the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from s4v_core.fused import gelu_mlp, layer_norm_linear, temporal_taps
from s4v_core.recompute import recompute
from s4v_core.tower import FrozenTower

# The reference scales output projections by (2 * layers) ** -0.5 with layers fixed at 12.
_REFERENCE_PROJ_DEPTH = 24


def odd_layers(num_layers: int) -> tuple[int, ...]:
    """The 0-based odd layers ``(1, 3, ...)`` of a ``num_layers``-deep backbone.

    The reference's EVA path builds side modules after these only (its ``drop_layer`` is
    ``range(0, num_layers, 2)``): 32 for the 64-layer ViT-E/14. ``side_layers="odd"`` in
    :class:`SideNetworkConfig` resolves to them.
    """
    if num_layers < 2:
        raise ValueError(f"a backbone needs at least 2 layers to have an odd one, got {num_layers}")
    return tuple(range(1, num_layers, 2))


@dataclass(frozen=True, kw_only=True, slots=True)
class SideNetworkConfig:
    """Shape of the side network; the backbone's width, depth and grid are given separately."""

    side_dim: int = 320  # C, the side network's width (320 for B/32 and B/16, 512 for L/14)
    head_dim: int = 64  # attention head width; heads = side_dim // head_dim (reference: 64)
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * side_dim
    # Backbone layers (0-based) followed by a side block: None = every layer (the reference's CLIP
    # path), "odd" = 1, 3, ... (its EVA path, see odd_layers), or the layers themselves.
    side_layers: tuple[int, ...] | Literal["odd"] | None = None
    # Recompute each side block in backward instead of keeping its activations.
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.side_dim <= 0 or self.head_dim <= 0 or self.side_dim % self.head_dim:
            raise ValueError(
                f"side_dim ({self.side_dim}) must be a positive multiple of head_dim ({self.head_dim})"
            )
        if isinstance(self.side_layers, str):
            if self.side_layers != "odd":
                raise ValueError(f"side_layers must be 'odd', None or layers: {self.side_layers!r}")
        elif self.side_layers is not None and (
            not self.side_layers or sorted(set(self.side_layers)) != list(self.side_layers)
        ):
            raise ValueError(f"side_layers must be increasing and non-empty: {self.side_layers}")

    def layers(self, num_layers: int) -> tuple[int, ...]:
        """The backbone layers with a side block, checked against the backbone depth."""
        if self.side_layers == "odd":
            return odd_layers(num_layers)
        layers = tuple(range(num_layers)) if self.side_layers is None else self.side_layers
        if layers[0] < 0 or layers[-1] >= num_layers:
            raise ValueError(f"side_layers {layers} out of range for a {num_layers}-layer backbone")
        return layers


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm3d(C) of the reference, applied to channels-last tokens ``(..., C)``.

    Statistics run over every leading position (videos, frames, patches), exactly as BatchNorm3d
    over ``(B, C, T, h, w)``; the state dict has BatchNorm3d's keys.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view(x.shape)


class SideTap(nn.Module):
    """LayerNorm over the backbone width D, then Linear D -> C: ``(M, 1+N, D) -> (M, 1+N, C)``.

    Backward keeps only the (frozen, already computed) backbone tokens, not also the LayerNorm's
    D-wide output as the reference does (see :func:`s4v_core.fused.layer_norm_linear`).
    """

    def __init__(self, backbone_width: int, side_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(backbone_width)
        self.proj = nn.Linear(backbone_width, side_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return layer_norm_linear(tokens, self.norm, self.proj)


class SideStem(nn.Module):
    """Patch embedding that mixes +-1 neighbouring frames: frames -> tokens ``(B*T, N, C)``.

    Conv3d(3 -> C, kernel (3, p, p), stride (1, p, p), zero temporal padding), then BatchNorm3d.
    """

    def __init__(self, side_dim: int, patch_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            3,
            side_dim,
            kernel_size=(3, patch_size, patch_size),
            stride=(1, patch_size, patch_size),
            padding=(1, 0, 0),
        )
        self.norm = TokenBatchNorm(side_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames ``(B, T, 3, H, W)`` -> tokens ``(B*T, N, C)``."""
        x = rearrange(frames, "b t c h w -> b c t h w").contiguous(
            memory_format=torch.channels_last_3d
        )
        x = self.conv(x)  # (B, C, T, h, w), channels-last
        x = rearrange(x, "b c t h w -> (b t) (h w) c")
        return self.norm(x)


class DepthwiseTemporalConv(nn.Module):
    """The reference's Conv3d(C, C, kernel (3, 1, 1), padding (1, 0, 0), groups=C) on tokens.

    Each channel mixes frames t-1, t, t+1 (zero beyond the clip) with its own 3 taps and a bias.
    Done as three fused multiply-adds on ``(B, T, N, C)`` (:func:`s4v_core.fused.temporal_taps`):
    on the CPU that is several times faster than a depth-wise Conv3d, which converts the
    channels-last layout back and forth, and it keeps only its input for backward. Weight ``(C, 3)`` = the Conv3d weight ``(C, 1, 3, 1, 1)`` squeezed,
    initialised from the same distribution (PyTorch's Conv3d default, fan_in 3).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, 3))
        self.bias = nn.Parameter(torch.empty(channels))
        nn.init.kaiming_uniform_(self.weight.view(channels, 1, 3), a=math.sqrt(5))
        nn.init.uniform_(self.bias, -(3**-0.5), 3**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``(B, T, N, C)`` -> ``(B, T, N, C)``."""
        return temporal_taps(x, self.weight, self.bias)


class TemporalConv(nn.Module):
    """Residual branch BN -> 1x1x1 conv -> depth-wise temporal 3-tap conv -> 1x1x1 conv.

    No activation inside; all convs have biases. The 1x1x1 convs are Linears over channels.
    """

    def __init__(self, side_dim: int) -> None:
        super().__init__()
        self.norm = TokenBatchNorm(side_dim)
        self.conv_in = nn.Linear(side_dim, side_dim)
        self.conv_dw = DepthwiseTemporalConv(side_dim)
        self.conv_out = nn.Linear(side_dim, side_dim)
        # The reference keeps PyTorch's Conv3d init for its 1x1x1 convs; nn.Linear's default init
        # draws from the same distribution (fan_in = C in both cases).

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x ``(B*T, N, C)`` -> the branch output ``(B*T, N, C)``."""
        h = self.conv_in(self.norm(x))
        h = self.conv_dw(rearrange(h, "(b t) n c -> b t n c", t=num_frames))
        return self.conv_out(rearrange(h, "b t n c -> (b t) n c"))


def shift_class_tokens(cls: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Temporal shift of per-frame class tokens ``(B*T, 1, C)``, zero-padded, no parameters.

    Channels ``[0, C//2)`` of frame t take frame t+1 (the last frame gets zeros); channels
    ``[C//2, C)`` take frame t-1 (the first frame gets zeros).
    """
    cls = rearrange(cls, "(b t) 1 c -> b t c", t=num_frames)
    half = cls.shape[-1] // 2
    from_next = F.pad(cls[:, 1:, :half], (0, 0, 0, 1))  # (B, T, C//2)
    from_prev = F.pad(cls[:, :-1, half:], (0, 0, 1, 0))  # (B, T, C - C//2)
    return rearrange(torch.cat([from_next, from_prev], dim=-1), "b t c -> (b t) 1 c")


class SideAttention(nn.Module):
    """Patch tokens attend, within their frame, to ``[shifted class token; patches + pos]``.

    LayerNorm, then multi-head attention (heads = C // head_dim, biases, no dropout) whose queries
    are the N patch rows and whose keys and values are all 1+N rows. The position embedding enters
    the attention input only, never the residual stream.
    """

    def __init__(self, side_dim: int, head_dim: int) -> None:
        super().__init__()
        self.heads = side_dim // head_dim
        self.norm = nn.LayerNorm(side_dim)
        self.qkv = nn.Linear(side_dim, 3 * side_dim)  # q, k, v stacked, like in_proj_weight
        self.out_proj = nn.Linear(side_dim, side_dim)

    def forward(self, x: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x ``(M, N, C)``, shifted class token ``(M, 1, C)``, pos ``(N, C)`` -> ``(M, N, C)``."""
        z = self.norm(torch.cat([cls, x + pos], dim=1))  # (M, 1+N, C)
        q, k, v = rearrange(self.qkv(z), "m s (three h d) -> three m h s d", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(q[:, :, 1:], k, v)  # (M, heads, N, head_dim)
        return self.out_proj(rearrange(out, "m h n d -> m n (h d)"))


class SideMlp(nn.Module):
    """BatchNorm, then Linear C -> 4C, exact (erf) GELU, Linear 4C -> C.

    Backward keeps the 4C-wide pre-activation but not the GELU output (recomputed, elementwise).
    """

    def __init__(self, side_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = TokenBatchNorm(side_dim)
        self.fc1 = nn.Linear(side_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, side_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu_mlp(self.norm(x), self.fc1, self.fc2)


class SideBlock(nn.Module):
    """One side block (``AttnCBlock``): temporal conv, class-token attention and MLP, each residual.

    Args:
        config: side width C, head width and MLP ratio.
        num_frames: T; the temporal conv and the class-token shift need to know where videos start.
    """

    def __init__(self, config: SideNetworkConfig, num_frames: int) -> None:
        super().__init__()
        self.num_frames = num_frames
        c = config.side_dim
        self.temporal = TemporalConv(c)
        self.attn = SideAttention(c, config.head_dim)
        self.mlp = SideMlp(c, config.mlp_ratio * c)
        proj_std = c**-0.5 * _REFERENCE_PROJ_DEPTH**-0.5
        nn.init.normal_(self.attn.qkv.weight, std=c**-0.5)
        nn.init.zeros_(self.attn.qkv.bias)
        nn.init.normal_(self.attn.out_proj.weight, std=proj_std)
        nn.init.zeros_(self.attn.out_proj.bias)
        nn.init.normal_(self.mlp.fc1.weight, std=(2 * c) ** -0.5)
        nn.init.normal_(self.mlp.fc2.weight, std=proj_std)

    def forward(self, x: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x ``(B*T, N, C)``, class tokens ``(B*T, 1, C)``, pos ``(N, C)`` -> ``(B*T, N, C)``."""
        x = x + self.temporal(x, self.num_frames)
        x = x + self.attn(x, shift_class_tokens(cls, self.num_frames), pos)
        return x + self.mlp(x)


class SideNetwork(nn.Module):
    """The side network: pixels and per-layer backbone tokens -> one C-dim feature per video.

    A 3-D conv stem, a side position embedding (N rows, N(0, 0.01^2)), one tap and one
    :class:`SideBlock` per side layer, a final BatchNorm and mean pooling.

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
        # Built in this order (stem, position, taps, blocks): the seeded initialisation depends on it.
        self.stem = SideStem(c, patch_size)
        self.pos_embed = nn.Parameter(torch.empty(grid[0] * grid[1], c))  # (N, C)
        nn.init.normal_(self.pos_embed, std=0.01)
        self.taps = nn.ModuleList(SideTap(backbone_width, c) for _ in self.side_layers)
        self.blocks = nn.ModuleList(SideBlock(config, num_frames) for _ in self.side_layers)
        self.post_norm = TokenBatchNorm(c)
        self.block_of_layer = {layer: i for i, layer in enumerate(self.side_layers)}

    @property
    def out_dim(self) -> int:
        return self.config.side_dim

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, frames: torch.Tensor, layer_tokens: Iterable[torch.Tensor]) -> torch.Tensor:
        """Video features.

        Args:
            frames: normalised frames ``(B, T, 3, H, W)``.
            layer_tokens: the backbone's tokens after each of its L blocks, ``(B*T, 1+N, D)``
                each, in order (an iterator is consumed lazily, one layer at a time).

        Returns:
            ``(B, C)`` features.
        """
        if frames.shape[1] != self.num_frames:
            raise ValueError(f"expected {self.num_frames} frames, got frames {tuple(frames.shape)}")
        x = self.stem(frames)  # (B*T, N, C)
        for layer, tokens in enumerate(layer_tokens):
            i = self.block_of_layer.get(layer)
            if i is None:
                continue  # no side block after this backbone layer
            y = self.taps[i](tokens)  # (B*T, 1+N, C)
            x = (x + y[:, 1:]).mul_(0.5)  # bitwise 0.5 * x + 0.5 * y (halving is exact)
            # A copy, so that what the block keeps for backward does not pin all of y.
            cls = y[:, :1].contiguous()  # (B*T, 1, C)
            if self.grad_checkpointing:
                x = recompute(self.blocks[i], x, cls, self.pos_embed)
            else:
                x = self.blocks[i](x, cls, self.pos_embed)
        x = self.post_norm(x)
        return rearrange(x, "(b t) n c -> b (t n) c", t=self.num_frames).mean(dim=1)


class SideVideoEncoder(nn.Module):
    """Frozen backbone + side network: frames ``(B, T, 3, H, W)`` -> features ``(B, C)``.

    The reference's ``VisualTransformer.forward``: the backbone's blocks run one at a time (without
    autograd) and the side network consumes each layer's tokens as they come, so only one layer's
    backbone tokens need to be alive.

    Args:
        backbone: the frozen image tower (:class:`~s4v_core.backbone_vit.FrozenViT` or
            :class:`~s4v_core.backbone_eva.FrozenEVA`).
        side: a side network built for that tower (:class:`SideNetwork` or
            :class:`~s4v_core.side_eva.EvaSideNetwork`).
    """

    def __init__(self, backbone: FrozenTower, side: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.side = side
        self.out_dim = side.out_dim

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.side.set_grad_checkpointing(enable)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Features ``(B, C)`` for CLIP-normalised frames ``(B, T, 3, H, W)``."""
        images = rearrange(frames, "b t c h w -> (b t) c h w")
        return self.side(frames, self.backbone.iter_blocks(images))
