"""AIM: a frozen CLIP ViT adapted to video by per-block spatial, temporal and joint adapters.

Paper: "AIM: Adapting Image Models for Efficient Video Action Recognition", T. Yang, Y. Zhu,
Y. Xie, A. Zhang, C. Chen, M. Li, ICLR 2023, arXiv 2302.03024. Official repository:
github.com/taoyang1122/adapt-image-models, ``mmaction/models/backbones/vit_clip.py`` (``ViT_CLIP``,
``ResidualAttentionBlock``, ``Adapter``) and ``configs/recognition/vit/vitclip_{base,large}_*.py``.

What follows which part of the paper / repository:

* Adapter (Sec. 3, Fig. 2(a)): ``Linear(D, D/4) -> GELU -> Linear(D/4, D)``; the repository's
  ``Adapter(mlp_ratio=0.25)`` with exact (erf) GELU, even though CLIP itself uses QuickGELU. Init
  as ``ViT_CLIP.init_weights``: first projection truncated-normal (std 0.02) with zero bias, last
  projection all zeros, so at initialisation every block computes exactly the frozen CLIP block.
* Temporal adaptation (Fig. 2(d)): the tokens of one video are regrouped so that each spatial
  token (class token included) attends over the T frames, through the block's own frozen ``ln_1``
  and attention weights (T-MSA shares S-MSA's weights); the result goes through the T-Adapter,
  which has no skip connection, and is added to the residual stream.
* Spatial adaptation (Fig. 2(c)): the original frozen ``ln_1`` + S-MSA over the 1+N tokens of a
  frame, followed by the S-Adapter, which has its own skip connection (``a + Adapter(a)``).
* Joint adaptation (Fig. 2(e)): the J-Adapter (no skip) runs on ``ln_2(x)`` parallel to the
  frozen MLP and is scaled by ``s``: ``x + MLP(LN(x)) + s * Adapter(LN(x))``.
* Per block, as the repository's ``ResidualAttentionBlock.forward``::

      x = x + T_Adapter(T-MSA(LN1(x)))         # over frames, per spatial token
      x = x + S_Adapter(S-MSA(LN1(x)))         # over tokens, per frame (S_Adapter: skip)
      x = x + MLP(LN2(x)) + s * J_Adapter(LN2(x))

  and with ``num_tadapter=2`` the first line reads ``T_Adapter(T-MSA(T_Adapter_in(LN1(x))))``.

* Temporal position embedding: the repository's ``temporal_embedding`` ``(T, D)``, zero-initialised
  and trained, added to every token after CLIP's positional embedding and before ``ln_pre``.
* Output (``ViT_CLIP.forward`` + mmaction's ``I3DHead``): ``ln_post`` on the class token of every
  frame, averaged over the frames (the I3D head's average pool; its dropout and K-way Linear are
  s4v's ``VideoClassifier`` head). CLIP's ``proj`` is not used (the repository deletes it), so
  ``out_dim`` is the ViT width D.
* Trained (repository's freezing rule: names containing ``Adapter``, ``temporal_embedding`` or
  ``ln_post``): every adapter, the temporal embedding and ``ln_post`` (Fig. 2's caption says only
  the adapters; the code also trains these two, 7,680 parameters at B/16). Everything else of
  CLIP is frozen, but gradients flow *through* the frozen blocks to the adapters of earlier layers.

Parameter count. ``num_tadapter=2`` (default) adds the repository's ``T_Adapter_in`` (an Adapter
with skip between ``ln_1`` and T-MSA), as its Something-Something v2 config
(``vitclip_base_sthv2.py``: ``num_tadapter=2``) does; the Side4Video memory table's 14M (B/16)
and 50M (L/14) are this configuration (3 adapters a block cannot reach them). With D=768, one
adapter has 2*768*192 + 192 + 768 = 295,872 parameters; 4 adapters x 12 blocks + temporal
embedding (8 x 768) + ``ln_post`` (1,536) = 14,209,536, plus a 174-way head (133,806) = 14.34M.
ViT-L/14 (D=1024): 50,464,768 + 178,350 = 50.64M (Side4Video: 50M). The paper's Kinetics-400
figures (11M at B/16, 38M at L/14) are ``num_tadapter=1`` (3 adapters a block) with a 400-way
head: 10.97M and 38.26M.

Deviations:

* ``adapter_scale`` defaults to the paper's / Kinetics configs' s = 0.5; the repository's SSv2
  config sets ``adapter_scale=1``. It changes no parameter count; set it in :class:`AIMConfig`.
* No stochastic depth: the repository's ``DropPath`` (rate 0.1-0.2 on the T- and J-adapter
  branches) regularises training only, and acts on dim 0 of its sequence-first tensors, i.e. per
  token rather than per sample. s4v regularises with dropout before the head instead.
* Gradient checkpointing recomputes each AIM block with :func:`s4v_core.recompute.recompute` (exact
  maths, memory visible to s4v's meters) instead of ``torch.utils.checkpoint``; no checkpointing
  switch was found in the public copies of the repository's ``ViT_CLIP`` that were read.
* Precision is the caller's (fp32, or autocast); the repository trains with mmcv's fp16 hook.
* open_clip's batch-first ``(B*T, 1+N, D)`` layout instead of the repository's ``(1+N, B*T, D)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from einops import rearrange
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from s4v_core.backbone_vit import is_plain_block
from s4v_core.recompute import recompute


@dataclass(frozen=True, kw_only=True, slots=True)
class AIMConfig:
    """Adapters added to every block of a frozen CLIP ViT (defaults: SSv2 layout, s = 0.5)."""

    num_frames: int  # T; fixed, because the temporal position embedding has one row per frame
    adapter_ratio: float = 0.25  # adapter bottleneck width / D (repository's mlp_ratio)
    adapter_scale: float = 0.5  # s, the weight of the J-adapter beside the MLP
    # 1: T-Adapter after T-MSA only (paper Fig. 2, Kinetics configs); 2: also T_Adapter_in
    # (with skip) before T-MSA, the repository's SSv2 config and the 14M / 50M counts.
    num_tadapter: int = 2
    # Recompute each block in backward instead of keeping its activations.
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {self.num_frames}")
        if not 0 < self.adapter_ratio <= 1:
            raise ValueError(f"adapter_ratio must be in (0, 1], got {self.adapter_ratio}")
        if self.num_tadapter not in (1, 2):
            raise ValueError(f"num_tadapter must be 1 or 2 (as in AIM), got {self.num_tadapter}")


class Adapter(nn.Module):
    """Bottleneck ``Linear(D, r*D) -> GELU -> Linear(r*D, D)``, optionally with a skip connection.

    Args:
        width: D, the token width.
        ratio: bottleneck width as a fraction of D.
        skip: return ``x + adapter(x)`` (S-Adapter, T_Adapter_in) instead of ``adapter(x)``.
    """

    def __init__(self, width: int, ratio: float, *, skip: bool) -> None:
        super().__init__()
        hidden = int(width * ratio)
        if hidden < 1:
            raise ValueError(f"adapter bottleneck int({width} * {ratio}) is empty")
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)
        self.skip = skip
        # The repository's init: trunc-normal down projection, zero up projection (the adapter
        # starts as 0, or as the identity with its skip), so training starts from CLIP.
        nn.init.trunc_normal_(self.fc1.weight, std=0.02)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.act(self.fc1(x)))
        return x + out if self.skip else out


def _check_block(block: nn.Module) -> None:
    """Refuse blocks whose maths the AIM block below would not reproduce."""
    # open_clip's plain block, and no attention dropout (the block below has none).
    plain = is_plain_block(block) and block.attn.dropout == 0.0
    if not plain:
        raise ValueError(
            "AIM needs open_clip's plain pre-LN ViT blocks (batch-first packed-qkv attention with "
            "biases and without dropout, no layer scale, no cross-attention)"
        )


def _check_visual(visual: nn.Module) -> None:
    """Refuse image towers that do not pool the class token after ``ln_post`` as AIM does."""
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise ValueError(f"AIM needs an open_clip VisionTransformer, got {type(visual).__name__}")
    if (
        visual.attn_pool is not None
        or visual.pool_type != "tok"
        or visual.final_ln_after_pool
        or not isinstance(visual.patch_dropout, nn.Identity)
    ):
        raise ValueError(
            "AIM reads ln_post of the class token: the ViT must use pool_type='tok', no attention "
            "pooling and no patch dropout"
        )


class AIMBlock(nn.Module):
    """One frozen CLIP block with AIM's T-, S- and J-adapters: tokens ``(B*T, 1+N, D)`` in and out.

    Args:
        block: the open_clip ``ResidualAttentionBlock`` (taken over, already frozen).
        config: adapter settings and the number of frames T.
    """

    def __init__(self, block: ResidualAttentionBlock, config: AIMConfig) -> None:
        super().__init__()
        _check_block(block)
        width = block.attn.embed_dim
        self.block = block
        self.num_frames = config.num_frames
        self.scale = config.adapter_scale
        self.t_adapter_in = (
            Adapter(width, config.adapter_ratio, skip=True) if config.num_tadapter == 2 else None
        )
        self.t_adapter = Adapter(width, config.adapter_ratio, skip=False)
        self.s_adapter = Adapter(width, config.adapter_ratio, skip=True)
        self.j_adapter = Adapter(width, config.adapter_ratio, skip=False)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen block's self-attention over dim 1 of ``(M, S, D)`` (S-MSA and T-MSA).

        ``nn.MultiheadAttention``'s maths written out, so that it is the same computation with
        and without grad and in train and eval mode (the module's fused inference path rounds
        differently, which would make recomputation in backward inexact).
        """
        attn = self.block.attn
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # (M, S, 3D)
        q, k, v = rearrange(qkv, "m s (three h e) -> three m h s e", three=3, h=attn.num_heads)
        heads = F.scaled_dot_product_attention(q, k, v)  # (M, heads, S, D / heads)
        merged = rearrange(heads, "m h s e -> m s (h e)")
        return F.linear(merged, attn.out_proj.weight, attn.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[1]
        # Temporal adaptation: each spatial token of a video attends over its T frames.
        xt = rearrange(x, "(b t) n d -> (b n) t d", t=self.num_frames)
        xt = self.block.ln_1(xt)
        if self.t_adapter_in is not None:
            xt = self.t_adapter_in(xt)
        xt = self.t_adapter(self._attend(xt))  # (B*(1+N), T, D)
        x = x + rearrange(xt, "(b n) t d -> (b t) n d", n=tokens)
        # Spatial adaptation: the original per-frame attention, then the S-Adapter (with skip).
        x = x + self.s_adapter(self._attend(self.block.ln_1(x)))
        # Joint adaptation: the J-Adapter beside the frozen MLP, weighted by s.
        normed = self.block.ln_2(x)
        return x + self.block.mlp(normed) + self.scale * self.j_adapter(normed)


class AIMEncoder(nn.Module):
    """AIM video encoder over an open_clip ViT: frames ``(B, T, 3, H, W)`` -> features ``(B, D)``.

    The CLIP weights are frozen (``requires_grad`` False) except ``ln_post``, which AIM trains; the
    adapters and the temporal position embedding are new and train. Gradients of the adapters of
    layer i flow back through the frozen layers above it.

    Args:
        visual: an open_clip ``VisionTransformer`` (its modules are taken over, not copied).
        config: adapter settings; ``config.num_frames`` must be the T of every input.
    """

    def __init__(self, visual: nn.Module, config: AIMConfig) -> None:
        super().__init__()
        _check_visual(visual)
        visual.requires_grad_(False)  # structural freezing: every CLIP weight, then ln_post back
        width = visual.transformer.width
        self.config = config
        self.num_frames = config.num_frames
        self.image_size: int = visual.image_size[0]
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.temporal_embedding = nn.Parameter(torch.zeros(config.num_frames, width))
        self.blocks = nn.ModuleList(AIMBlock(b, config) for b in visual.transformer.resblocks)
        self.ln_post = visual.ln_post
        self.ln_post.requires_grad_(True)
        self.out_dim: int = width
        self.grad_checkpointing = config.grad_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every AIM block in backward instead of keeping its activations."""
        self.grad_checkpointing = enable

    def _check_frames(self, frames: torch.Tensor) -> None:
        size = self.image_size
        if frames.ndim != 5 or frames.shape[2] != 3 or tuple(frames.shape[3:]) != (size, size):
            raise ValueError(
                f"AIM expects frames (B, T, 3, {size}, {size}), got {tuple(frames.shape)}"
            )
        if frames.shape[1] != self.num_frames:
            raise ValueError(
                f"AIM was built for {self.num_frames} frames (its temporal embedding has one row "
                f"per frame), got {frames.shape[1]}"
            )

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """Patch, position and temporal embedding, then ``ln_pre``: -> tokens ``(B*T, 1+N, D)``."""
        images = rearrange(frames, "b t c h w -> (b t) c h w")
        x = self.conv1(images.to(self.conv1.weight.dtype))  # (B*T, D, h, w)
        x = rearrange(x, "m d h w -> m (h w) d")
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B*T, 1+N, D)
        x = rearrange(x, "(b t) n d -> b t n d", t=self.num_frames)
        x = x + rearrange(self.temporal_embedding.to(x.dtype), "t d -> t 1 d")  # every token
        return self.ln_pre(rearrange(x, "b t n d -> (b t) n d"))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Features ``(B, D)``: ``ln_post`` of the class token, averaged over the frames.

        Args:
            frames: CLIP-normalised frames ``(B, T, 3, H, W)``, T = ``config.num_frames``.

        Raises:
            ValueError: for a frame count or image size the encoder was not built for.
        """
        self._check_frames(frames)
        x = self.embed(frames)
        for block in self.blocks:
            x = recompute(block, x) if self.grad_checkpointing else block(x)  # (B*T, 1+N, D)
        cls = self.ln_post(x[:, 0])  # (B*T, D)
        return rearrange(cls, "(b t) d -> b t d", t=self.num_frames).mean(dim=1)
