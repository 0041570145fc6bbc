"""DiST: a frozen CLIP ViT as spatial encoder, a thin 3-D conv temporal encoder, an integration branch.

Paper: Z. Qing, S. Zhang, Z. Huang, Y. Zhang, C. Gao, D. Zhao, N. Sang, "Disentangling Spatial and
Temporal Learning for Efficient Image-to-Video Transfer Learning", ICCV 2023, arXiv 2309.07911.
Official repository: github.com/alibaba-mmai-research/DiST @ c3e0a0a (``models/module_zoo/branches/
dist.py``: ``DiSTNetwork`` and its blocks; ``models/base/clip.py``; ``configs/projects/dist/``).
Only the paper's abstract could be retrieved here, so the layer-level maths below follow the
official code (the paper's released implementation) and its SSv2/K400 configs.

Parts (paper Sec. 3 and its framework figure, Fig. 2 = the repository's ``framework.jpg``: a dual
encoder joined by an integration branch), shapes for B videos,
T frames, ``Ts = T / alpha`` frames seen by the spatial encoder, N patches, CLIP width D, temporal
width Ct (96) and integration width Ci (384):

* Spatial encoder: the frozen CLIP ViT (:class:`FrozenViT`, no_grad) on the ``Ts`` sparse frames; its
  tokens after every block ``(B*Ts, 1+N, D)`` feed the integration branch. Nothing trainable reads
  into it, so no gradient reaches (or flows through) the backbone.
* Temporal encoder: a Conv3d patch stem ``3 -> Ct`` (kernel ``(5, p, p)``) on all T frames, then per
  integrated layer a block ``x = QuickGELU(x + Conv(1,3,3)(QuickGELU(Conv(3,1,1)(LN(x)))))``.
* Integration branch, per integrated backbone layer i (the official ``DiSTNetwork.forward``)::

      x  = TemporalBlock_i(x)                           # (B, Ct, T, h, w)
      m  = Linear_i(spatial_i) + r                      # (B*Ts, 1+N, Ci); r = 0 at the first layer
      m' = m + T2I_i(x)                                 # Conv3d k = s = (alpha,1,1); + cls token
      x  = x + I2T_i(m)                                 # Linear Ci -> Ct on patches, repeat alpha
      r  = FFN_i(LN(m')) + TConv_i(LN'(m'))             # no residual: r joins the next layer's m

  and after the last layer ``F = m' + r``. Both exchanges read the values before either update.
* Output (the official forward, which the paper's classifier reads): two spatial-temporal pooling
  blocks (per-frame query attends over F's tokens, then one video query attends over the frame
  queries plus a time embedding, each with an MLP), then ``LN(video + Linear_D->Ci(mean_t of the
  last layer's CLIP class tokens)) @ proj`` -> ``(B, E)`` with E the CLIP embedding width.

Initialisation is the official one: every Linear/Conv weight ``trunc_normal(std 0.02)``, biases 0,
tokens and time embeddings ``trunc_normal(0.02)``, ``proj`` normal with std ``Ci**-0.5``;
attention in-projections keep PyTorch's Xavier init (the official ``_init_weights`` skips them).

Trainable parameters (meta-device count, 174-way head included): B/16, T=8: 18.61M; L/14: 31.72M
(Side4Video's table: 19M and 32M; the official code at B/16, 8+16 frames: 19.00M without a head,
its classifier being text embeddings). The differences are the first three deviations below.

Deviations:

* ``alpha = 1`` by default: s4v feeds both encoders the same T frames, while the official configs
  (``"8+16f"``) give the temporal encoder twice the spatial encoder's frames (``alpha = 2``).
  :attr:`DiSTConfig.alpha` keeps the official behaviour available; with ``alpha = 1`` the temporal
  -> integration Conv3d has kernel 1 (-37k parameters per layer).
* The last layer has no integration -> temporal projection: the official code computes it and
  discards the result, so its weights never get a gradient (and would stall DDP, which s4v runs
  without ``find_unused_parameters``). -37k parameters.
* The temporal stem's patch is the backbone's patch: the official L/14 config says 16, whose
  14x14 grid at 224 px would not match ViT-L/14's 16x16 tokens (-86k parameters at L/14).
* The classifier: the official SSv2/K400 runs compare the output with frozen CLIP text embeddings
  of the class names; s4v puts dropout and a trainable ``Linear(E, K)`` on top instead.
* The integration temporal conv ``Conv3d(c, c, (3, 1, 1))`` over ``(T, tokens, 1)`` is the same map
  written as a Conv1d over time per token (same weights up to a reshape).
* ``grad_checkpointing`` recomputes every temporal block and integration FFN in backward
  (:func:`s4v_core.recompute.recompute`); the official code has no checkpointing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from open_clip.transformer import QuickGELU
from torch import nn

from s4v_core.backbone_vit import FrozenViT
from s4v_core.recompute import recompute

_INIT_STD = 0.02  # the official trunc_normal_ std for weights, tokens and time embeddings


@dataclass(frozen=True, kw_only=True, slots=True)
class DiSTConfig:
    """Shape of DiST's trainable parts; defaults are the official SSv2/K400 configs."""

    temporal_dim: int = 96  # Ct, temporal encoder width (TEMPORAL_DIM)
    integration_dim: int = 384  # Ci, integration branch width (INTEGRATION_DIM)
    head_dim: int = 64  # pooling attention head width; heads = Ci // head_dim (official: 64)
    stem_frames: int = 5  # temporal kernel of the temporal encoder's patch stem (T_PATCH_SIZE)
    temporal_kernel: int = 3  # temporal kernel of the temporal and integration convs
    temporal_mlp_ratio: float = 1.0  # temporal block hidden width / Ct (TEMPORAL_CONV_MLP_RATIO)
    integration_mlp_ratio: float = 1.0  # integration FFN hidden width / Ci
    integration_temporal_ratio: float = 0.25  # integration temporal conv width / Ci
    pooling_blocks: int = 2  # spatial-temporal pooling blocks (ADA_POOLING_LAYERS)
    pooling_mlp_ratio: int = 4  # pooling MLP hidden width / Ci
    # The spatial encoder sees every alpha-th frame, the temporal encoder all T (official: 2).
    alpha: int = 1
    # Backbone layers (0-based) with an integration step; None = every layer (official configs).
    layers: tuple[int, ...] | None = None
    grad_checkpointing: bool = False  # recompute temporal blocks and integration FFNs in backward

    def __post_init__(self) -> None:
        widths = {
            "temporal_dim": self.temporal_dim,
            "integration_dim": self.integration_dim,
            "temporal hidden": int(self.temporal_dim * self.temporal_mlp_ratio),
            "integration hidden": int(self.integration_dim * self.integration_mlp_ratio),
            "integration temporal": int(self.integration_dim * self.integration_temporal_ratio),
        }
        if min(widths.values()) < 1:
            raise ValueError(f"every DiST width must be positive, got {widths}")
        if self.head_dim < 1 or self.integration_dim % self.head_dim:
            raise ValueError(
                f"integration_dim ({self.integration_dim}) must be a multiple of "
                f"head_dim ({self.head_dim})"
            )
        if self.stem_frames % 2 == 0 or self.temporal_kernel % 2 == 0:
            raise ValueError("stem_frames and temporal_kernel must be odd (same-length padding)")
        if self.alpha < 1 or self.pooling_blocks < 1:
            raise ValueError("alpha and pooling_blocks must be at least 1")
        if self.layers is not None and (
            not self.layers or sorted(set(self.layers)) != list(self.layers)
        ):
            raise ValueError(f"layers must be increasing and non-empty: {self.layers}")

    def selected_layers(self, num_layers: int) -> tuple[int, ...]:
        """The integrated backbone layers, checked against the backbone depth."""
        layers = tuple(range(num_layers)) if self.layers is None else self.layers
        if layers[0] < 0 or layers[-1] >= num_layers:
            raise ValueError(f"layers {layers} out of range for a {num_layers}-layer backbone")
        return layers


def _init_weights(module: nn.Module) -> None:
    """The official init of new Linear/Conv layers: weights trunc_normal(0.02), biases zero."""
    if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv3d):
        nn.init.trunc_normal_(module.weight, std=_INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), QuickGELU(), nn.Linear(hidden, dim))


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first video ``(B, C, T, h, w)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(rearrange(x, "b c t h w -> b t h w c"))
        return rearrange(y, "b t h w c -> b c t h w")


class TemporalBlock(nn.Module):
    """Temporal encoder block: ``QuickGELU(x + Conv(1,3,3)(QuickGELU(Conv(k,1,1)(LN(x)))))``.

    The activation after the residual sum is the official one (``TemporalNet``).
    """

    def __init__(self, dim: int, hidden: int, kernel: int) -> None:
        super().__init__()
        self.norm = ChannelNorm(dim)
        self.conv_t = nn.Conv3d(dim, hidden, (kernel, 1, 1), padding=(kernel // 2, 0, 0))
        self.conv_s = nn.Conv3d(hidden, dim, (1, 3, 3), padding=(0, 1, 1))
        self.act = QuickGELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``(B, Ct, T, h, w)`` -> ``(B, Ct, T, h, w)``."""
        return self.act(x + self.conv_s(self.act(self.conv_t(self.norm(x)))))


class TemporalToIntegration(nn.Module):
    """Temporal features into integration tokens, with a learned class token per sparse frame.

    Conv3d ``Ct -> Ci`` with kernel and stride ``(alpha, 1, 1)`` folds the alpha dense frames of each
    sparse frame; the class row gets a learned token (the temporal stream has no class token).
    """

    def __init__(self, temporal_dim: int, integration_dim: int, alpha: int, frames: int) -> None:
        super().__init__()
        self.fuse = nn.Conv3d(temporal_dim, integration_dim, (alpha, 1, 1), stride=(alpha, 1, 1))
        self.cls_token = nn.Parameter(torch.empty(frames, integration_dim))  # one per sparse frame
        nn.init.trunc_normal_(self.cls_token, std=_INIT_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``(B, Ct, T, h, w)`` -> ``(B*Ts, 1+N, Ci)``."""
        y = rearrange(self.fuse(x), "b c t h w -> (b t) (h w) c")
        cls = repeat(self.cls_token, "t c -> (b t) 1 c", b=x.shape[0])
        return torch.cat([cls, y], dim=1)


class IntegrationToTemporal(nn.Module):
    """Integration patch tokens into the temporal stream: Linear ``Ci -> Ct``, repeated alpha times."""

    def __init__(
        self, integration_dim: int, temporal_dim: int, alpha: int, grid: tuple[int, int]
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(integration_dim, temporal_dim)
        self.alpha = alpha
        self.grid = grid

    def forward(self, m: torch.Tensor, videos: int) -> torch.Tensor:
        """m ``(B*Ts, 1+N, Ci)`` -> ``(B, Ct, T, h, w)`` (nearest upsampling in time)."""
        y = rearrange(self.proj(m[:, 1:]), "(b t) (h w) c -> b c t h w", b=videos, h=self.grid[0])
        return repeat(y, "b c t h w -> b c (t a) h w", a=self.alpha)


class IntegrationFFN(nn.Module):
    """``FFN(LN(m)) + TConv(LN'(m))``: a token MLP plus a thin temporal conv over each token.

    TConv is Linear ``Ci -> c``, Conv over time (kernel k, full channel mixing), QuickGELU, Linear
    ``c -> Ci``, as the official ``temporal_ffn``. No residual: the caller adds it (see module doc).
    """

    def __init__(self, dim: int, hidden: int, thin: int, kernel: int, frames: int) -> None:
        super().__init__()
        self.frames = frames
        self.norm = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, hidden)
        self.norm_t = nn.LayerNorm(dim)
        self.reduce = nn.Linear(dim, thin)
        self.conv_t = nn.Conv1d(thin, thin, kernel, padding=kernel // 2)
        self.act = QuickGELU()
        self.expand = nn.Linear(thin, dim)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        """m ``(B*Ts, 1+N, Ci)`` -> ``(B*Ts, 1+N, Ci)``."""
        t = rearrange(self.reduce(self.norm_t(m)), "(b t) s c -> (b s) c t", t=self.frames)
        t = rearrange(self.act(self.conv_t(t)), "(b s) c t -> (b t) s c", s=m.shape[1])
        return self.mlp(self.norm(m)) + self.expand(t)


class DiSTLayer(nn.Module):
    """One integration step: temporal block, spatial tap, two-way exchange, integration FFN."""

    def __init__(
        self,
        config: DiSTConfig,
        *,
        backbone_width: int,
        grid: tuple[int, int],
        frames: int,
        feeds_temporal: bool,
    ) -> None:
        super().__init__()
        ct, ci, a = config.temporal_dim, config.integration_dim, config.alpha
        self.temporal = TemporalBlock(
            ct, int(ct * config.temporal_mlp_ratio), config.temporal_kernel
        )
        self.tap = nn.Linear(backbone_width, ci)  # the official `input_linears`, no norm
        self.t2i = TemporalToIntegration(ct, ci, a, frames)
        # The last layer's integration -> temporal output is never read (see module Deviations).
        self.i2t = IntegrationToTemporal(ci, ct, a, grid) if feeds_temporal else None
        self.integration = IntegrationFFN(
            ci,
            int(ci * config.integration_mlp_ratio),
            int(ci * config.integration_temporal_ratio),
            config.temporal_kernel,
            frames,
        )

    def forward(
        self, x: torch.Tensor, tokens: torch.Tensor, res: torch.Tensor | None, checkpoint: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x ``(B, Ct, T, h, w)``, frozen tokens ``(B*Ts, 1+N, D)``, r ``(B*Ts, 1+N, Ci)`` or None.

        Returns:
            The temporal stream, ``m'`` and ``r`` for the next layer (shapes as their inputs).
        """
        x = recompute(self.temporal, x) if checkpoint else self.temporal(x)
        m = self.tap(tokens) if res is None else self.tap(tokens) + res  # (B*Ts, 1+N, Ci)
        fused = m + self.t2i(x)
        if self.i2t is not None:
            x = x + self.i2t(m, x.shape[0])
        res = recompute(self.integration, fused) if checkpoint else self.integration(fused)
        return x, fused, res


class CrossAttention(nn.Module):
    """Multi-head attention whose queries, keys and values share one LayerNorm (official)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """query ``(M, Q, C)``, context ``(M, S, C)`` -> ``(M, Q, C)``."""
        context = self.norm(context)
        return self.attn(self.norm(query), context, context, need_weights=False)[0]


class PoolingBlock(nn.Module):
    """Spatial then temporal attention pooling (official ``SpatialTemporalAdaPoolingNetwork``).

    A class query per frame attends over that frame's fused tokens; the video query then attends
    over the frame queries plus a learned time embedding. Each attention is followed by an MLP.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int, frames: int) -> None:
        super().__init__()
        self.frames = frames
        self.spatial_attn = CrossAttention(dim, heads)
        self.spatial_norm = nn.LayerNorm(dim)
        self.spatial_mlp = _mlp(dim, mlp_ratio * dim)
        self.pos_embed = nn.Parameter(torch.empty(frames, dim))
        nn.init.trunc_normal_(self.pos_embed, std=_INIT_STD)
        self.temporal_attn = CrossAttention(dim, heads)
        self.temporal_norm = nn.LayerNorm(dim)
        self.temporal_mlp = _mlp(dim, mlp_ratio * dim)

    def forward(
        self, fused: torch.Tensor, video: torch.Tensor, frame: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """fused ``(B*Ts, 1+N, Ci)``, video query ``(B, 1, Ci)``, frame queries ``(B*Ts, 1, Ci)``."""
        frame = frame + self.spatial_attn(frame, fused)
        frame = frame + self.spatial_mlp(self.spatial_norm(frame))
        keys = rearrange(frame, "(b t) 1 c -> b t c", t=self.frames) + self.pos_embed  # (B, Ts, Ci)
        video = video + self.temporal_attn(video, keys)
        video = video + self.temporal_mlp(self.temporal_norm(video))
        return video, frame


class DiSTEncoder(nn.Module):
    """DiST video encoder: frames ``(B, T, 3, H, W)`` -> features ``(B, E)``.

    Args:
        config: widths, depths, frame ratio, checkpointing.
        backbone: the frozen CLIP ViT (spatial encoder); taken over, not copied.
        num_frames: T, fixed (frame embeddings and per-frame tokens are sized by it).
        embed_dim: E, the output width (the CLIP embedding width, as the official ``proj``).
    """

    def __init__(
        self, config: DiSTConfig, backbone: FrozenViT, *, num_frames: int, embed_dim: int
    ) -> None:
        super().__init__()
        if num_frames < 1 or num_frames % config.alpha:
            raise ValueError(f"num_frames ({num_frames}) must be a positive multiple of alpha")
        self.config = config
        self.backbone = backbone
        self.num_frames = num_frames
        self.out_dim = embed_dim
        self.grad_checkpointing = config.grad_checkpointing
        self.selected = config.selected_layers(backbone.num_layers)
        frames = num_frames // config.alpha  # Ts
        ct, ci, p, k = (
            config.temporal_dim,
            config.integration_dim,
            backbone.patch_size,
            config.stem_frames,
        )
        self.stem = nn.Conv3d(3, ct, (k, p, p), stride=(1, p, p), padding=(k // 2, 0, 0))
        self.layers = nn.ModuleList(
            DiSTLayer(
                config,
                backbone_width=backbone.width,
                grid=backbone.grid,
                frames=frames,
                feeds_temporal=i < len(self.selected) - 1,
            )
            for i in range(len(self.selected))
        )
        heads = ci // config.head_dim
        self.pooling = nn.ModuleList(
            PoolingBlock(ci, heads, config.pooling_mlp_ratio, frames)
            for _ in range(config.pooling_blocks)
        )
        self.video_token = nn.Parameter(torch.empty(1, 1, ci))
        self.frame_token = nn.Parameter(torch.empty(1, 1, ci))
        self.cls_proj = nn.Linear(backbone.width, ci)  # the CLIP class-token shortcut
        self.ln_post = nn.LayerNorm(ci)
        self.proj = nn.Parameter(torch.empty(ci, embed_dim))
        for part in (self.stem, self.layers, self.pooling, self.cls_proj):  # never the backbone
            part.apply(_init_weights)
        nn.init.trunc_normal_(self.video_token, std=_INIT_STD)
        nn.init.trunc_normal_(self.frame_token, std=_INIT_STD)
        nn.init.normal_(self.proj, std=ci**-0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute temporal blocks and integration FFNs in backward instead of storing them."""
        self.grad_checkpointing = enable

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Video features ``(B, E)`` for CLIP-normalised frames ``(B, T, 3, H, W)``."""
        if frames.ndim != 5 or frames.shape[1] != self.num_frames or frames.shape[2] != 3:
            raise ValueError(
                f"expected frames (B, {self.num_frames}, 3, H, W), got {tuple(frames.shape)}"
            )
        videos = frames.shape[0]
        # The spatial encoder sees every alpha-th frame (all of them with alpha = 1).
        images = rearrange(frames[:, :: self.config.alpha], "b t c h w -> (b t) c h w")
        x = self.stem(rearrange(frames, "b t c h w -> b c t h w"))  # (B, Ct, T, h, w)
        slot = {layer: i for i, layer in enumerate(self.selected)}
        res = fused = last = None
        for layer, tokens in enumerate(self.backbone.iter_blocks(images)):  # (B*Ts, 1+N, D)
            if layer in slot:
                x, fused, res = self.layers[slot[layer]](x, tokens, res, self.grad_checkpointing)
                last = tokens
            if layer == self.selected[-1]:
                break  # later blocks feed nothing
        fused = fused + res  # F = m' + r of the last layer, (B*Ts, 1+N, Ci)
        video = self.video_token.expand(videos, -1, -1)  # (B, 1, Ci)
        frame = self.frame_token.expand(fused.shape[0], -1, -1)  # (B*Ts, 1, Ci)
        for block in self.pooling:
            video, frame = block(fused, video, frame)
        cls = rearrange(last[:, 0], "(b t) d -> b t d", b=videos).mean(dim=1)  # (B, D)
        return self.ln_post(video[:, 0] + self.cls_proj(cls)) @ self.proj  # (B, E)
