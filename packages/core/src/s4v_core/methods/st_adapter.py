"""ST-Adapter: depth-wise 3D-convolution adapters inside every frozen CLIP ViT block.

Paper: J. Pan, Z. Lin, X. Zhu, J. Shao, H. Li, "ST-Adapter: Parameter-Efficient Image-to-Video
Transfer Learning", NeurIPS 2022, arXiv 2206.13559. Official repository: github.com/linziyi96/st-adapter
(``models_adapter.py`` at commit bded03c). Every detail below was checked against that code; the
paper's section and figure pointers are recalled, not re-checked: its full text could not be opened
where this was written, so where the two might differ the code is followed.

What follows which part of the method:

* The adapter (paper Sec. 3, Fig. 2; repo ``Adapter``): a bottleneck over the patch tokens,
  ``x + up(dwconv3d(down(x)))``; ``down`` and ``up`` are linear maps D -> r -> D, ``dwconv3d`` a
  depth-wise (one filter per channel) 3D convolution over the ``(T, h, w)`` grid of patch tokens,
  kernel ``(3, 1, 1)`` (temporal only), "same" zero padding. The class token passes through
  unchanged. Main setting: r = 384 bottleneck channels.
* Initialisation (repo ``Adapter.__init__``): the convolution's weight and bias and both linear
  biases start at zero; the linear weights keep PyTorch's default init. Every adapter is then the
  identity, so training starts from the unmodified CLIP.
* Placement (paper Fig. 2: one adapter before the multi-head self-attention of every block):
  ``positions=("attn",)``, one adapter per block, x = x + ST-Adapter(x) in front of
  ``x + attn(ln_1(x))``. The repo's two released B/16 configs are also expressible:
  ``adapter12x384`` (K400) is ``positions=("mlp",)``, ``adapter24x384`` (SSv2) is
  ``("attn", "mlp")``. There, the last block's pre-MLP adapter never receives gradient: it changes
  patch tokens after the last attention, and only the class token is read (kept, as in the repo,
  whose parameter counts include it).
* Training (paper Sec. 1 and 3; repo ``VisionTransformer.__init__``): every CLIP weight is frozen
  and only the adapters (and the classifier that s4v adds) train. The backbone runs WITH autograd:
  gradients flow through the frozen blocks to the adapters below them, which is the activation
  memory Side4Video avoids.
* Output (repo ``VisionTransformer.forward``): the class token after the last block, averaged over
  the T frames, then CLIP's ``ln_post``; no ``proj``. The repo's classifier (dropout 0.5 and a
  linear layer on these D-wide features) is s4v's ``VideoClassifier`` head, not part of this module.

Parameter counts (trainable, with a 174-way SSv2 head): ViT-B/16 7,110,144 adapter parameters
(12 x 592,512) + 133,806 head = 7,243,950 (paper: 7M); ViT-L/14 18,945,024 (24 x 789,376) + 178,350
head = 19,123,374 (paper: 20M, ours 4.4 % below; r = 512 at L/14 would give 25.4M, further off).

Deviations:

* No non-linearity between the convolution and ``up``: the released code applies none. (The
  paper's adapter equation may write an activation there; not verified, see above.)
* r = 384 also at ViT-L/14: the repo ships B/16 configs only; 384 reproduces the paper's L/14 count
  (above) within 5 %.
* Frozen weights stay in their loaded dtype (fp32) instead of the repo's fp16 copies; mixed
  precision is the trainer's autocast.
* T is fixed when building (``num_frames``) and a clip of another length is refused; the repo
  reads T from the input. The convolution itself works for any T; fixing it lets each block be a
  module of the tokens alone, which :func:`s4v_core.recompute.recompute` can checkpoint.
* Gradient checkpointing recomputes each block (its adapters and the frozen layers) in backward with
  :func:`~s4v_core.recompute.recompute`; the repo at bded03c has no checkpointing.
* open_clip's ``patch_dropout`` and ``proj`` are not used (CLIP's configs have no patch dropout; the
  repo reads the class token before ``proj``); the text tower is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import open_clip
import torch
from einops import rearrange
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from s4v_core.recompute import recompute

POSITIONS = ("attn", "mlp")


@dataclass(frozen=True, kw_only=True, slots=True)
class STAdapterConfig:
    """Shape of the adapters; the defaults are the paper's main ViT-B/16 setting."""

    bottleneck: int = 384  # r, channels between down and up (paper and repo: 384)
    # (t, h, w) kernel of the depth-wise conv over the (T, h, w) patch grid; odd sizes keep the
    # grid's shape under "same" padding. (3, 1, 1) mixes each patch with its neighbouring frames.
    kernel_size: tuple[int, int, int] = (3, 1, 1)
    # Where in each block an adapter sits: "attn" = before the self-attention (paper Fig. 2),
    # "mlp" = before the MLP. ("attn", "mlp") is the repo's 24x384 SSv2 config.
    positions: tuple[str, ...] = ("attn",)
    grad_checkpointing: bool = False  # recompute each block in backward instead of keeping it

    def __post_init__(self) -> None:
        if self.bottleneck < 1:
            raise ValueError(f"bottleneck must be positive, got {self.bottleneck}")
        if len(self.kernel_size) != 3 or any(k < 1 or k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"kernel_size must be 3 odd positive sizes, got {self.kernel_size}")
        if not self.positions or len(set(self.positions)) != len(self.positions):
            raise ValueError(f"positions must be distinct and non-empty, got {self.positions}")
        unknown = [p for p in self.positions if p not in POSITIONS]
        if unknown:
            raise ValueError(f"unknown adapter positions {unknown}; choose from {POSITIONS}")


class STAdapter(nn.Module):
    """One ST-Adapter on tokens ``(B*T, 1+N, D)``: patch tokens get ``+ up(dwconv3d(down(x)))``.

    Args:
        width: D, the ViT's token width.
        config: bottleneck width and kernel size.
        num_frames: T, to unfold the batch of frames into videos.
        grid: (h, w) patch grid; N = h * w.
    """

    def __init__(
        self, width: int, config: STAdapterConfig, *, num_frames: int, grid: tuple[int, int]
    ) -> None:
        super().__init__()
        r = config.bottleneck
        self.num_frames = num_frames
        self.grid = grid
        self.down = nn.Linear(width, r)  # the repo's fc1
        self.conv = nn.Conv3d(
            r,
            r,
            kernel_size=config.kernel_size,
            padding=tuple(k // 2 for k in config.kernel_size),
            groups=r,  # depth-wise: one (t, h, w) filter per channel
        )
        self.up = nn.Linear(r, width)  # the repo's fc2
        # The repo's init: a zero conv makes the adapter the identity at the start of training.
        for tensor in (self.conv.weight, self.conv.bias, self.down.bias, self.up.bias):
            nn.init.zeros_(tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B*T, 1+N, D)`` -> tokens ``(B*T, 1+N, D)``, class token unchanged."""
        cls, patches = x[:, :1], x[:, 1:]
        y = self.down(patches)  # (B*T, N, r)
        y = rearrange(y, "(b t) (h w) r -> b r t h w", t=self.num_frames, h=self.grid[0])
        y = self.conv(y)  # (B, r, T, h, w)
        y = rearrange(y, "b r t h w -> (b t) (h w) r")
        return torch.cat([cls, patches + self.up(y)], dim=1)  # (B*T, 1+N, D)


class AdaptedBlock(nn.Module):
    """A frozen open_clip residual block with ST-Adapters before its attention and/or MLP.

    Computes open_clip's ``x + ls_1(attn(ln_1(x)))``, ``x + ls_2(mlp(ln_2(x)))`` with the block's
    own (frozen) submodules, an adapter in front of each branch named in ``config.positions``.

    Args:
        block: an open_clip ``ResidualAttentionBlock`` (batch-first, self-attention), frozen.
        config: adapter shape and placement.
        num_frames: T.
        grid: (h, w) patch grid.
    """

    def __init__(
        self,
        block: ResidualAttentionBlock,
        config: STAdapterConfig,
        *,
        num_frames: int,
        grid: tuple[int, int],
    ) -> None:
        super().__init__()
        self.block = block
        width = block.ln_1.normalized_shape[0]

        def adapter(position: str) -> STAdapter | None:
            if position not in config.positions:
                return None
            return STAdapter(width, config, num_frames=num_frames, grid=grid)

        self.adapter_attn = adapter("attn")
        self.adapter_mlp = adapter("mlp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B*T, 1+N, D)`` -> tokens ``(B*T, 1+N, D)``."""
        block = self.block
        if self.adapter_attn is not None:
            x = self.adapter_attn(x)
        x = x + block.ls_1(block.attention(block.ln_1(x)))
        if self.adapter_mlp is not None:
            x = self.adapter_mlp(x)
        return x + block.ls_2(block.mlp(block.ln_2(x)))


def _check_supported(visual: nn.Module) -> None:
    """Refuse open_clip image towers whose maths :class:`STAdapterEncoder` does not reproduce."""
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise ValueError(f"ST-Adapter needs an open_clip VisionTransformer, got {type(visual)}")
    if not visual.transformer.batch_first:
        raise ValueError("ST-Adapter expects an open_clip ViT built with batch_first=True")
    if visual.attn_pool is not None or visual.pool_type != "tok":
        raise ValueError("ST-Adapter reads the class token; this ViT pools otherwise")
    for index, block in enumerate(visual.transformer.resblocks):
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            raise ValueError(f"block {index} is a {type(block).__name__}, not a plain ViT block")


class STAdapterEncoder(nn.Module):
    """Frozen CLIP ViT with trainable ST-Adapters: frames ``(B, T, 3, H, W)`` -> ``(B, D)``.

    Args:
        visual: an open_clip ``VisionTransformer`` (its modules are taken over and frozen).
        config: adapter shape and placement.
        num_frames: T, the clip length every input must have.
    """

    def __init__(self, visual: nn.Module, config: STAdapterConfig, *, num_frames: int) -> None:
        super().__init__()
        _check_supported(visual)
        if num_frames < 1:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        # Structural freezing, before any adapter exists: everything taken from CLIP is frozen,
        # everything created below trains.
        visual.requires_grad_(False)
        self.config = config
        self.num_frames = num_frames
        self.image_size: tuple[int, int] = tuple(visual.image_size)
        self.grid: tuple[int, int] = tuple(visual.grid_size)
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.blocks = nn.ModuleList(
            AdaptedBlock(block, config, num_frames=num_frames, grid=self.grid)
            for block in visual.transformer.resblocks
        )
        self.ln_post = visual.ln_post
        self.out_dim: int = visual.transformer.width
        self.grad_checkpointing = config.grad_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block (adapters and frozen layers) in backward instead of keeping it."""
        self.grad_checkpointing = enable

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's patch and position embedding: images ``(M, 3, H, W)`` -> ``(M, 1+N, D)``."""
        x = self.conv1(images.to(self.conv1.weight.dtype))  # (M, D, h, w)
        x = rearrange(x, "m d h w -> m (h w) d")
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (M, 1+N, D)
        return self.ln_pre(x)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Video features.

        Args:
            frames: CLIP-normalised frames ``(B, T, 3, H, W)``, T = ``num_frames``, (H, W) the
                ViT's input size (its positional embedding is not interpolated).

        Returns:
            ``(B, D)``: ``ln_post`` of the last block's class token averaged over the T frames.

        Raises:
            ValueError: for frames of another shape.
        """
        expected = (self.num_frames, 3, *self.image_size)
        if frames.dim() != 5 or tuple(frames.shape[1:]) != expected:
            raise ValueError(
                f"expected frames (B, {', '.join(map(str, expected))}), got {tuple(frames.shape)}"
            )
        images = rearrange(frames, "b t c h w -> (b t) c h w")
        x = self.embed(images)  # (B*T, 1+N, D)
        for block in self.blocks:
            # Gradients reach the adapters of lower blocks through every frozen block above them.
            x = recompute(block, x) if self.grad_checkpointing else block(x)
        cls = rearrange(x[:, 0], "(b t) d -> b t d", t=self.num_frames)
        return self.ln_post(cls.mean(dim=1))  # (B, D)
