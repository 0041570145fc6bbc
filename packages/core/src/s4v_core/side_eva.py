"""The Side4Video side network of the EVA-CLIP variant (ViT-E/14, "EVA02-CLIP-bigE-14").

Paper: Side4Video, arXiv 2311.15769 (its ViT-E/14 results, Table 4). Reference:
github.com/HJYao00/Side4Video @ 5d72352, ``Recognition/eva_clip/eva_vit_model.py`` (the side
modules of its EVA ``VisionTransformer`` and its ``AttnCBlock``; the CLIP-path network it differs
from is :mod:`s4v_core.side`, ``Recognition/clip/model.py``). Per backbone layer ``i`` in
``side_layers`` (the reference: the odd layers 1, 3, ..., 63 of the 64-layer E/14,
``side_layers="odd"``):

    y = LayerNorm_i(Linear_i(backbone_tokens_i))         # (B*T, 1+N, D) -> (B*T, 1+N, C)
    x = 0.5 * x + 0.5 * y[:, 1:]                          # fixed fusion on patch tokens
    x = x + BN(TemporalConv(x))                           # post-norm residual branches
    x = x + LN(Attn(q = x + P, kv = [shift(y[:, :1]); x + P]))
    x = x + BN(Linear(GELU(Linear(x))))

from the same 3-D conv stem as the CLIP path, and the output is the mean of the last side tokens
over T*h*w, **without** the CLIP path's final BatchNorm. Differences from the CLIP path: the taps
project before they normalise (so nothing D-wide but the backbone's own tokens is kept for
backward), the blocks normalise each branch's output instead of its input, attention has separate
q/k/v projections and no LayerNorm in front, and the position embedding starts at N(0, 0.02^2).
Everything else keeps PyTorch's default initialisation: the reference's name-based init loop
matches none of its side modules (its ``mlp`` is a ``Sequential``).

Reused from :mod:`s4v_core.side` because the maths is the same: :class:`SideStem`,
:class:`DepthwiseTemporalConv`, :class:`TokenBatchNorm`, :func:`shift_class_tokens` and
:class:`SideNetworkConfig` (width, heads, MLP ratio, ``side_layers``, ``grad_checkpointing``).

Deviations from the reference, all with the same maths unless stated:

* xformers ``memory_efficient_attention`` -> ``F.scaled_dot_product_attention`` (scale
  ``head_dim ** -0.5`` in both); apex ``FusedLayerNorm`` -> ``nn.LayerNorm`` (eps 1e-5 in both).
* Recomputation: the reference wraps the conv, the attention and the MLP of every block in
  ``torch.utils.checkpoint`` separately; here ``grad_checkpointing`` recomputes each whole block
  with :func:`s4v_core.recompute.recompute` (same gradients; it keeps only the block's inputs, so
  less than three separate checkpoints, and BatchNorm statistics are not updated twice).
* The reference runs the side network only when its ``grad_checkpointing`` flag is set and else
  pools the stem output (``VisionTransformer.forward_features``); here the flag only switches
  recomputation.
* Backbone tokens may come in a lower precision than the side weights (a bf16 backbone): under
  autocast the tap's Linear takes them as they are; outside autocast they are cast to the weights'
  dtype for the product, while backward keeps the tokens as given (a bf16 tensor, not an fp32 copy).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from s4v_core.fused import gelu_mlp
from s4v_core.recompute import recompute
from s4v_core.side import (
    DepthwiseTemporalConv,
    SideNetworkConfig,
    SideStem,
    TokenBatchNorm,
    shift_class_tokens,
)

_POS_EMBED_STD = 0.02  # the EVA path's side position embedding init (the CLIP path: 0.01)


class _CastLinear(torch.autograd.Function):
    """``F.linear(x.to(weight.dtype), weight, bias)`` that keeps ``x`` itself for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.linear(x.to(weight.dtype), weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad
        rows = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_weight = grad_bias = None
        if need_x:
            grad_x = (grad_out @ weight).to(x.dtype)
        if need_weight:
            grad_weight = rows.T @ x.reshape(-1, x.shape[-1]).to(weight.dtype)
        if need_bias:
            grad_bias = rows.sum(0)
        return grad_x, grad_weight, grad_bias


class EvaSideTap(nn.Module):
    """Linear D -> C, then LayerNorm over C: ``(M, 1+N, D) -> (M, 1+N, C)``.

    Tokens in another floating dtype than the weights (bf16 from a bf16 backbone) are accepted:
    under autocast the Linear casts them itself; outside it they are cast to the weights' dtype,
    and backward keeps the tokens as given rather than the cast copy.
    """

    def __init__(self, backbone_width: int, side_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(backbone_width, side_dim)
        self.norm = nn.LayerNorm(side_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        device = tokens.device.type  # the meta device has no autocast (and no data to cast)
        autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
        if tokens.dtype == weight.dtype or autocast:
            y = self.proj(tokens)
        else:
            y = _CastLinear.apply(tokens, weight, self.proj.bias)
        return self.norm(y)


class EvaTemporalConv(nn.Module):
    """Residual branch 1x1x1 conv -> depth-wise temporal 3-tap conv -> 1x1x1 conv -> BatchNorm.

    The CLIP path's branch with its BatchNorm moved from the input to the output (post-norm).
    The 1x1x1 convs are Linears over channels (PyTorch's Conv3d default init has the same
    distribution); no activation inside.
    """

    def __init__(self, side_dim: int) -> None:
        super().__init__()
        self.conv_in = nn.Linear(side_dim, side_dim)
        self.conv_dw = DepthwiseTemporalConv(side_dim)
        self.conv_out = nn.Linear(side_dim, side_dim)
        self.norm = TokenBatchNorm(side_dim)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x ``(B*T, N, C)`` -> the branch output ``(B*T, N, C)``."""
        h = self.conv_dw(rearrange(self.conv_in(x), "(b t) n c -> b t n c", t=num_frames))
        return self.norm(self.conv_out(rearrange(h, "b t n c -> (b t) n c")))


class EvaSideAttention(nn.Module):
    """Patch tokens attend, within their frame, to ``[shifted class token; patches + pos]``.

    Separate q, k, v projections with biases, heads = C // head_dim, no dropout, no mask; queries
    are the N patch rows (with the position embedding), keys and values all 1+N rows. The output
    projection is followed by a LayerNorm (post-norm); nothing normalises the attention's input.
    The position embedding enters the attention input only, never the residual stream.
    """

    def __init__(self, side_dim: int, head_dim: int) -> None:
        super().__init__()
        self.heads = side_dim // head_dim
        self.q_proj = nn.Linear(side_dim, side_dim)
        self.k_proj = nn.Linear(side_dim, side_dim)
        self.v_proj = nn.Linear(side_dim, side_dim)
        self.out_proj = nn.Linear(side_dim, side_dim)
        self.norm = nn.LayerNorm(side_dim)

    def forward(self, x: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x ``(M, N, C)``, shifted class token ``(M, 1, C)``, pos ``(N, C)`` -> ``(M, N, C)``."""
        patches = x + pos  # (M, N, C)
        z = torch.cat([cls, patches], dim=1)  # (M, 1+N, C)
        q = rearrange(self.q_proj(patches), "m n (h d) -> m h n d", h=self.heads)
        k = rearrange(self.k_proj(z), "m s (h d) -> m h s d", h=self.heads)
        v = rearrange(self.v_proj(z), "m s (h d) -> m h s d", h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (M, heads, N, head_dim)
        return self.norm(self.out_proj(rearrange(out, "m h n d -> m n (h d)")))


class EvaSideMlp(nn.Module):
    """Linear C -> ratio*C, exact (erf) GELU, Linear back to C, then BatchNorm (post-norm).

    Backward keeps the hidden pre-activation but not the GELU output
    (:func:`s4v_core.fused.gelu_mlp`).
    """

    def __init__(self, side_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(side_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, side_dim)
        self.norm = TokenBatchNorm(side_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(gelu_mlp(x, self.fc1, self.fc2))


class EvaSideBlock(nn.Module):
    """One post-norm side block: temporal conv, class-token attention, MLP, each residual.

    Args:
        config: side width C, head width and MLP ratio.
        num_frames: T; the temporal conv and the class-token shift need to know where videos start.
    """

    def __init__(self, config: SideNetworkConfig, num_frames: int) -> None:
        super().__init__()
        self.num_frames = num_frames
        c = config.side_dim
        self.temporal = EvaTemporalConv(c)
        self.attn = EvaSideAttention(c, config.head_dim)
        self.mlp = EvaSideMlp(c, config.mlp_ratio * c)

    def forward(self, x: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x ``(B*T, N, C)``, class tokens ``(B*T, 1, C)``, pos ``(N, C)`` -> ``(B*T, N, C)``."""
        x = x + self.temporal(x, self.num_frames)
        x = x + self.attn(x, shift_class_tokens(cls, self.num_frames), pos)
        return x + self.mlp(x)


class EvaSideNetwork(nn.Module):
    """The EVA-path side network: pixels and per-layer backbone tokens -> one C-dim feature per video.

    The stem of the CLIP path, a side position embedding (N rows, N(0, 0.02^2)), one
    :class:`EvaSideTap` and one :class:`EvaSideBlock` per side layer, and mean pooling without a
    final BatchNorm (the reference's EVA path has no ``side_post_bn``). Same constructor and
    interface as :class:`s4v_core.side.SideNetwork`; for the reference's layout pass
    ``config.side_layers="odd"`` (``None`` means every layer, as everywhere else).

    Args:
        config: side width, heads, which layers get blocks, checkpointing.
        backbone_width: D, the backbone's token width (1792 for ViT-E/14).
        num_layers: L, the backbone's depth (64 for ViT-E/14).
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
        nn.init.normal_(self.pos_embed, std=_POS_EMBED_STD)
        self.taps = nn.ModuleList(EvaSideTap(backbone_width, c) for _ in self.side_layers)
        self.blocks = nn.ModuleList(EvaSideBlock(config, num_frames) for _ in self.side_layers)
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
                each, in order, in any floating dtype (an iterator is consumed lazily; layers
                without a side block are skipped unread).

        Returns:
            ``(B, C)`` features: the last side tokens averaged over frames and patches.
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
        return rearrange(x, "(b t) n c -> b (t n) c", t=self.num_frames).mean(dim=1)
