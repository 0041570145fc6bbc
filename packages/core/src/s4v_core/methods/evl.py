"""EVL: a frozen CLIP ViT read by a light Transformer decoder with local temporal modules.

Paper: Z. Lin, S. Geng, R. Zhang, P. Gao, G. de Melo, X. Wang, J. Dai, Y. Qiao, H. Li, "Frozen CLIP
Models are Efficient Video Learners", ECCV 2022, arXiv 2208.03550. Official repository:
github.com/OpenGVLab/efficient-video-recognition @ 26d79fb (``model.py``, ``vision_transformer.py``,
``main.py``, ``scripts/train_k400_*``), the authority for every shape and initialisation below.
Sections and figures are those of the arXiv paper (Sec. 3.1 and Fig. 2: overall structure; Sec.
3.2: temporal modules); its body was not retrievable while writing this, so where the two could
differ the code is followed.

Parts of the model (paper -> repository -> here):

* Frozen image backbone (Sec. 3.1, Fig. 2; repo ``VisionTransformer2D(return_all_features=True)``
  in ``freeze_fp16`` mode): a :class:`~s4v_core.backbone.FrozenViT` run under ``no_grad``. Of each of
  the last M blocks the decoder reads the output tokens X (class token first) and the query and key
  of that block's own self-attention (from ``ln_1`` of the block's input, before scaling).
* Local temporal modules (Sec. 3.2; repo ``EVLDecoder.forward``), one set per decoder layer, all
  three on in the main model: Y = X + DWConv_t(X) + P_t + TCA, with DWConv_t a depth-wise
  ``Conv1d(D, D, 3, padding=1, groups=D)`` over the T frames of every token, P_t a learned (T, D)
  temporal position embedding (zeros at init) and TCA the temporal cross attention.
* Temporal cross attention (Sec. 3.2; repo ``TemporalCrossAttention``): for adjacent frames the
  head-averaged attention map A of frame t's patch queries on frame t-1's (or t+1's) patch keys,
  softmax over keys, class token left out, becomes features through a learned table of
  (2h-1)(2w-1) x D weights indexed by the 2-D offset between query and key patch:
  TCA_t[q] = sum_k A_prev[q, k] W_prev[off(q, k)] + sum_k A_next[q, k] W_next[off(q, k)]. The
  class token and the missing neighbour of the first and last frame get zero. Tables start at zero.
* Decoder (Sec. 3.1, Fig. 2; repo ``TransformerDecoderLayer``): M pre-LN layers, width D (the
  backbone's), heads of the backbone (repo scripts: 12 at B/16, 16 at L/14), MLP ratio 4 with
  QuickGELU and dropout 0.5 before its second Linear. A learned query token (repo ``cls_token``)
  cross-attends, layer j to the frame tokens of backbone block L-M+j: x += Attn(LN1(x), LN3(Y),
  LN3(Y)); x += MLP(LN2(x)). Separate q/k/v projections with biases, Xavier-uniform weights.
* Output (repo ``EVLTransformer.proj`` without its Linear): LayerNorm, then dropout 0.5, on the
  final query token; s4v's :class:`~s4v_recognition.model.VideoClassifier` adds the K-way Linear.

Depth. The repo's scripts use M=4 (B/16 and L/14, 8/16/32 frames: ``dec4x768``, ``dec4x1024``).
Side4Video's Table 2 (SSv2, 8 frames, 3 views) counts EVL at 89 M tunable parameters and 512 GFLOPs
at B/16, 350 M and 2411 GFLOPs at L/14, which M=4 cannot give (33.0 M / 454 G and 58.5 M / 2019 G,
with a 174-way head; multiply-adds, backbone included: half of ``FlopCounterMode``'s count). A decoder
over every block, M=L, gives 350.07 M / 2392 G at L/14 and 98.76 M / 519 G at B/16 (a stage is
8.22 M at B/16 and 14.58 M at L/14, of which the TCA tables are 1.12 M and 1.97 M). No uniform
depth gives 89 M at B/16 (M=11: 90.54 M / 511 G; M=12: 98.76 M / 519 G); as L/14 pins M=L and
nothing justifies M=L-1, ``EVLConfig`` defaults to M=L, 11 % above the table's 89 M at B/16 (perhaps 98
transposed; the paper's text is not available here to check). ``EVLConfig(decoder_layers=4)`` is
the repo's K400 model.

Deviations:

* Depth M=L by default (above), not the repo's K400 default of 4.
* The backbone is s4v's fp32 frozen open_clip ViT (run under the caller's autocast), not the repo's
  fp16 copy; the maths is the same (``ViT-B/16-lnpre`` = CLIP with ``ln_pre``).
* The M read blocks are evaluated by :func:`frozen_block_with_attention` (open_clip's block maths,
  written out so that q and k come out of the block's own packed q/k/v product, as the repo's
  ``return_all_features``); the other blocks by ``FrozenViT.block``.
* The query token starts at zero, as in the released code (its ``_initialize_weights`` with
  N(0, 0.02) is never called). Then LN1 of the query and its projection are zero, so the first
  decoder layer's ``norm1.weight``, ``q_proj.weight`` and ``k_proj`` get zero gradients on the
  first step only.
* The adjacent-frame attention maps are computed in the backbone loop under ``no_grad`` (they
  depend on frozen tensors only) and each decoder stage runs right after its block, instead of
  first collecting every layer's q, k and tokens; the results are the same.
* Grad checkpointing (not in the repo) recomputes each decoder stage (temporal modules + decoder
  layer) in backward with ``torch.utils.checkpoint``, which replays the RNG state so that dropout
  masks, and therefore features and gradients, equal those without it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from open_clip.transformer import QuickGELU, ResidualAttentionBlock
from torch import nn
from torch.utils.checkpoint import checkpoint

from s4v_core.backbone_vit import FrozenViT


@dataclass(frozen=True, kw_only=True, slots=True)
class EVLConfig:
    """Shape of the EVL decoder; the defaults are the repo's main model at Side4Video's depth."""

    # M: the decoder reads the last M backbone blocks, one decoder layer each. None = all L blocks
    # (the depth Side4Video's Table 2 counts, see the module docstring); the repo's K400 scripts: 4.
    decoder_layers: int | None = None
    num_heads: int | None = None  # decoder heads; None = the backbone's (repo: 12 B/16, 16 L/14)
    mlp_ratio: float = 4.0  # decoder MLP hidden width / D (repo decoder_mlp_factor)
    mlp_dropout: float = 0.5  # in the decoder MLP, after QuickGELU (repo decoder_mlp_dropout)
    out_dropout: float = 0.5  # on the normalised final query token (repo cls_dropout)
    temporal_conv: bool = True  # depth-wise temporal conv on the frame tokens
    temporal_pos_embed: bool = True  # learned per-frame embedding added to the frame tokens
    temporal_cross_attention: bool = True  # adjacent frames' attention maps -> features
    grad_checkpointing: bool = False  # recompute each decoder stage in backward

    def __post_init__(self) -> None:
        if self.decoder_layers is not None and self.decoder_layers < 1:
            raise ValueError(f"decoder_layers must be >= 1 or None, got {self.decoder_layers}")
        if self.num_heads is not None and self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1 or None, got {self.num_heads}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        for name in ("mlp_dropout", "out_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


def relative_offset_index(grid: tuple[int, int], device: torch.device) -> torch.Tensor:
    """``(N, N)`` index of the 2-D offset from key patch k to query patch q, N = h * w.

    Offsets (dr, dc) in [-(h-1), h-1] x [-(w-1), w-1] are numbered row-major in a table of
    (2h-1)(2w-1) entries, as the repo's ``TemporalCrossAttention.idx_tensor``.
    """
    h, w = grid
    rows = torch.arange(h, device=device).repeat_interleave(w)  # (N,) row of each patch
    cols = torch.arange(w, device=device).repeat(h)  # (N,) column of each patch
    d_row = rows[:, None] - rows[None, :] + h - 1  # (N, N), in [0, 2h-2]
    d_col = cols[:, None] - cols[None, :] + w - 1  # (N, N), in [0, 2w-2]
    return d_row * (2 * w - 1) + d_col


def reads_attention(block: nn.Module) -> bool:
    """Whether :func:`frozen_block_with_attention` computes ``block`` exactly.

    That is open_clip's self-attention ``ResidualAttentionBlock`` with a packed, batch-first
    ``nn.MultiheadAttention`` and no extra key/value biases (every CLIP ViT).
    """
    attn = getattr(block, "attn", None)
    return (
        type(block) is ResidualAttentionBlock
        and not hasattr(block, "ln_1_kv")
        and isinstance(attn, nn.MultiheadAttention)
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and not attn.add_zero_attn
    )


@torch.no_grad()
def frozen_block_with_attention(
    block: ResidualAttentionBlock, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """open_clip's ``ResidualAttentionBlock.forward`` that also returns its attention's q and k.

    The repo's backbone returns them with every block's output (``return_all_features``); reading
    them out of the one packed q/k/v product costs nothing extra, where recomputing them would add
    a (2D x D) product per token and block (~16 % of a B/16 backbone at M=L).

    Args:
        block: a block for which :func:`reads_attention` holds.
        tokens: the block's input ``(M, 1+N, D)``.

    Returns:
        The block's output ``(M, 1+N, D)``, and its query and key ``(M, heads, 1+N, D / heads)``
        each, unscaled.
    """
    attn = block.attn
    qkv = F.linear(block.ln_1(tokens), attn.in_proj_weight, attn.in_proj_bias)  # (M, 1+N, 3D)
    q, k, v = rearrange(qkv, "m n (three h e) -> three m h n e", three=3, h=attn.num_heads)
    mixed = F.scaled_dot_product_attention(q, k, v)  # (M, heads, 1+N, D / heads)
    branch = F.linear(
        rearrange(mixed, "m h n e -> m n (h e)"), attn.out_proj.weight, attn.out_proj.bias
    )
    x = tokens + block.ls_1(branch)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, q, k


@torch.no_grad()
def adjacent_frame_attention(
    q: torch.Tensor, k: torch.Tensor, num_frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-averaged patch attention maps between adjacent frames (class token left out).

    Args:
        q: queries ``(B*T, heads, 1+N, e)`` of one backbone block.
        k: keys of the same shape.
        num_frames: T.

    Returns:
        ``(attn_prev, attn_next)``, each ``(B, T-1, N, N)`` (softmax over the last axis):
        ``attn_prev[:, t]`` is frame t+1's queries on frame t's keys, ``attn_next[:, t]`` frame t's
        queries on frame t+1's keys.
    """
    scale = q.shape[-1] ** -0.5
    q = rearrange(q[:, :, 1:], "(b t) h n e -> b t h n e", t=num_frames) * scale
    k = rearrange(k[:, :, 1:], "(b t) h n e -> b t h n e", t=num_frames)
    # (B, T-1, heads, N, N) logits, softmax over keys, mean over heads -> (B, T-1, N, N)
    attn_prev = (q[:, 1:] @ k[:, :-1].transpose(-1, -2)).softmax(dim=-1).mean(dim=2)
    attn_next = (q[:, :-1] @ k[:, 1:].transpose(-1, -2)).softmax(dim=-1).mean(dim=2)
    return attn_prev, attn_next


class TemporalCrossAttention(nn.Module):
    """Adjacent frames' attention maps turned into features by offset-indexed weight tables.

    Args:
        grid: (h, w) patches per frame.
        dim: D, the feature width.
    """

    def __init__(self, grid: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        offsets = (2 * self.grid[0] - 1) * (2 * self.grid[1] - 1)
        # Zeros, as the repo: the module starts as the identity on the frame tokens.
        self.w_prev = nn.Parameter(torch.zeros(offsets, dim))  # repo w1
        self.w_next = nn.Parameter(torch.zeros(offsets, dim))  # repo w2

    def forward(self, attn_prev: torch.Tensor, attn_next: torch.Tensor) -> torch.Tensor:
        """Maps ``(B, T-1, N, N)`` each (see :func:`adjacent_frame_attention`) -> ``(B, T, 1+N, D)``."""
        index = relative_offset_index(self.grid, attn_prev.device)  # (N, N)
        prev = torch.einsum("btqk,qkc->btqc", attn_prev, self.w_prev[index])  # (B, T-1, N, D)
        following = torch.einsum("btqk,qkc->btqc", attn_next, self.w_next[index])
        # prev belongs to frames 1..T-1, following to 0..T-2; the class token (first) gets zero.
        return F.pad(prev, (0, 0, 1, 0, 1, 0)) + F.pad(following, (0, 0, 1, 0, 0, 1))


class DecoderLayer(nn.Module):
    """Pre-LN Transformer decoder layer: one query token cross-attends to the frame tokens.

    Args:
        dim: D (query, key, value and output width).
        num_heads: attention heads; must divide D.
        mlp_ratio: MLP hidden width / D.
        mlp_dropout: dropout between the MLP's activation and its second Linear.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, mlp_dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"decoder width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)  # on the query
        self.norm2 = nn.LayerNorm(dim)  # before the MLP
        self.norm3 = nn.LayerNorm(dim)  # on the frame tokens (keys and values)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        hidden = round(mlp_ratio * dim)
        self.mlp = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(dim, hidden),
                act=QuickGELU(),
                dropout=nn.Dropout(mlp_dropout),
                fc2=nn.Linear(hidden, dim),
            )
        )
        # The repo's initialisation (vision_transformer.Attention / TransformerDecoderLayer).
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
        for linear in (self.mlp.fc1, self.mlp.fc2):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.normal_(linear.bias, std=1e-6)

    def forward(self, x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Query ``(B, 1, D)``, frame tokens ``(B, T*(1+N), D)`` -> query ``(B, 1, D)``."""
        frames = self.norm3(frames)
        q = rearrange(self.q_proj(self.norm1(x)), "b l (h e) -> b h l e", h=self.num_heads)
        k = rearrange(self.k_proj(frames), "b s (h e) -> b h s e", h=self.num_heads)
        v = rearrange(self.v_proj(frames), "b s (h e) -> b h s e", h=self.num_heads)
        mixed = F.scaled_dot_product_attention(q, k, v)  # (B, heads, 1, D / heads)
        x = x + self.out_proj(rearrange(mixed, "b h l e -> b l (h e)"))
        return x + self.mlp(self.norm2(x))


class DecoderStage(nn.Module):
    """The local temporal modules on one backbone block's tokens, then one decoder layer.

    Args:
        config: which temporal modules, MLP ratio and dropout.
        dim: D.
        num_heads: decoder heads.
        num_frames: T (the temporal position embedding has one row per frame).
        grid: (h, w) patches per frame (the cross-attention tables' size).
    """

    def __init__(
        self,
        config: EVLConfig,
        *,
        dim: int,
        num_heads: int,
        num_frames: int,
        grid: tuple[int, int],
    ) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.temporal_conv = (
            nn.Conv1d(dim, dim, kernel_size=3, padding=1, groups=dim)
            if config.temporal_conv
            else None
        )
        self.temporal_pos_embed = (
            nn.Parameter(torch.zeros(num_frames, dim)) if config.temporal_pos_embed else None
        )
        self.cross_attention = (
            TemporalCrossAttention(grid, dim) if config.temporal_cross_attention else None
        )
        self.layer = DecoderLayer(dim, num_heads, config.mlp_ratio, config.mlp_dropout)

    def frame_features(
        self,
        tokens: torch.Tensor,
        attn_prev: torch.Tensor | None = None,
        attn_next: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Y = X + DWConv_t(X) + P_t + TCA: tokens ``(B*T, 1+N, D)`` -> ``(B, T*(1+N), D)``."""
        t = self.num_frames
        y = rearrange(tokens, "(b t) n d -> b t n d", t=t)
        if self.temporal_conv is not None:
            series = rearrange(tokens, "(b t) n d -> (b n) d t", t=t)
            y = y + rearrange(self.temporal_conv(series), "(b n) d t -> b t n d", b=y.shape[0])
        if self.temporal_pos_embed is not None:
            y = y + self.temporal_pos_embed[:, None]  # (T, 1, D), the same for every token
        if self.cross_attention is not None:
            if attn_prev is None or attn_next is None:
                raise ValueError("temporal cross attention needs the adjacent-frame attention maps")
            y = y + self.cross_attention(attn_prev, attn_next)
        return rearrange(y, "b t n d -> b (t n) d")

    def forward(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor,
        attn_prev: torch.Tensor | None = None,
        attn_next: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Query ``(B, 1, D)`` and one block's tokens ``(B*T, 1+N, D)`` -> query ``(B, 1, D)``."""
        return self.layer(x, self.frame_features(tokens, attn_prev, attn_next))


class EVLEncoder(nn.Module):
    """Frozen CLIP ViT + EVL decoder: frames ``(B, T, 3, H, W)`` -> features ``(B, D)``.

    Args:
        backbone: the frozen ViT (its parameters never train and no gradient reaches it).
        config: decoder shape.
        num_frames: T; fixed, because the temporal position embedding has T rows.
    """

    def __init__(self, backbone: FrozenViT, config: EVLConfig, *, num_frames: int) -> None:
        super().__init__()
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        depth = backbone.num_layers
        layers = depth if config.decoder_layers is None else config.decoder_layers
        if layers > depth:
            raise ValueError(f"decoder_layers={layers} exceeds the backbone's {depth} blocks")
        read = backbone.blocks[depth - layers :]
        if config.temporal_cross_attention and not all(reads_attention(b) for b in read):
            raise ValueError(
                "temporal cross attention reads the attention maps of open_clip "
                "ResidualAttentionBlocks with a packed nn.MultiheadAttention; this backbone has others"
            )
        dim = backbone.width
        heads = config.num_heads or backbone.blocks[-1].attn.num_heads
        self.backbone = backbone
        self.config = config
        self.num_frames = num_frames
        self.first_layer = depth - layers  # backbone block read by decoder layer 0
        self.stages = nn.ModuleList(
            DecoderStage(
                config, dim=dim, num_heads=heads, num_frames=num_frames, grid=backbone.grid
            )
            for _ in range(layers)
        )
        self.query = nn.Parameter(torch.zeros(dim))  # repo cls_token (zeros, see docstring)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(config.out_dropout)
        self.out_dim = dim
        self.grad_checkpointing = config.grad_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every decoder stage in backward (the same features and gradients)."""
        self.grad_checkpointing = enable

    def _check_frames(self, frames: torch.Tensor) -> None:
        size = self.backbone.image_size
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"expected frames (B, T, 3, H, W), got {tuple(frames.shape)}")
        if frames.shape[1] != self.num_frames:
            raise ValueError(
                f"EVL was built for {self.num_frames} frames (its temporal position embedding has "
                f"one row per frame), got {frames.shape[1]}"
            )
        if tuple(frames.shape[-2:]) != (size, size):
            raise ValueError(f"expected {size}x{size} frames, got {tuple(frames.shape[-2:])}")

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Features ``(B, D)`` for CLIP-normalised frames ``(B, T, 3, H, W)``."""
        self._check_frames(frames)
        images = rearrange(frames, "b t c h w -> (b t) c h w")
        x = self.query.expand(frames.shape[0], 1, -1)  # (B, 1, D)
        tokens = self.backbone.embed(images)  # (B*T, 1+N, D), no grad
        for index in range(self.backbone.num_layers):
            maps: tuple[torch.Tensor | None, ...] = (None, None)
            if index >= self.first_layer and self.config.temporal_cross_attention:
                block = self.backbone.blocks[index]
                tokens, q, k = frozen_block_with_attention(block, tokens)  # no grad
                maps = adjacent_frame_attention(q, k, self.num_frames)  # 2 x (B, T-1, N, N)
                del q, k  # views of the block's q/k/v product, not needed any more
            else:
                tokens = self.backbone.block(index, tokens)  # (B*T, 1+N, D), no grad
            if index < self.first_layer:
                continue
            stage = self.stages[index - self.first_layer]
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(stage, x, tokens, *maps, use_reentrant=False)
            else:
                x = stage(x, tokens, *maps)
        return self.dropout(self.norm(x[:, 0]))  # (B, D)
