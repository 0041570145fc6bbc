"""The frozen CLIP ViT: open_clip's ``VisionTransformer``, read block by block without autograd.

Side4Video (arXiv 2311.15769) runs a CLIP ViT frozen beside a trainable side network. The
reference (github.com/HJYao00/Side4Video @ 5d72352, ``Recognition/clip/model.py``,
``VisualTransformer``) vendors a modified CLIP; here the backbone is an unmodified open_clip
``VisionTransformer`` whose maths is the same (conv patch embedding, class token, positional
embedding, ``ln_pre``, pre-LN residual blocks), read one block at a time so that the side network
can consume each layer's tokens as soon as they exist.
"""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from einops import rearrange
from open_clip.transformer import QuickGELU, ResidualAttentionBlock
from torch import nn

from s4v_core.tower import FrozenTower


def is_open_clip_vit(visual: nn.Module) -> bool:
    """Whether ``visual`` is open_clip's own ``VisionTransformer`` (not a ResNet or timm tower)."""
    return isinstance(visual, open_clip.transformer.VisionTransformer)


def is_plain_block(block: nn.Module) -> bool:
    """Whether ``block`` is open_clip's pre-LN block with nothing :func:`_frozen_block` leaves out.

    Layer scale, a cross-attention norm, extra attention biases or a changed MLP send a block down
    open_clip's own forward instead.
    """
    if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
        return False
    attn = block.attn
    return (
        isinstance(block.ls_1, nn.Identity)
        and isinstance(block.ls_2, nn.Identity)
        and isinstance(attn, nn.MultiheadAttention)
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.in_proj_bias is not None
        and attn.bias_k is None
        and not attn.add_zero_attn
        and list(block.mlp._modules) == ["c_fc", "gelu", "c_proj"]
    )


# A CPU block runs over groups of images whose MLP hidden activations stay below this size. glibc
# serves larger allocations with fresh mmaps whose pages fault in on first touch, which costs more
# than the arithmetic on them (B/16, 16 frames: ~7 % of the backbone's time); smaller buffers are
# reused from the heap and stay in cache longer. Images are independent, so only the grouping of
# the matrix products changes.
CPU_CHUNK_BYTES = 24 << 20


@torch.no_grad()
def _frozen_block(
    block: ResidualAttentionBlock, x: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """open_clip's ``ResidualAttentionBlock.forward`` for inference, tokens ``(M, S, D)``.

    The same maths as open_clip's (``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``), written for
    speed: one packed q/k/v product read as views, fused attention, the activation and the residual
    adds in place, the result written into ``out`` when given. Under CPU autocast this also avoids
    ``nn.MultiheadAttention``'s slow path, which copies the packed projection weight once per
    token (5x slower than fp32 at B/16).
    """
    attn, mlp = block.attn, block.mlp
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # (M, S, 3D)
    q, k, v = rearrange(qkv, "m s (three h e) -> three m h s e", three=3, h=attn.num_heads)
    heads = F.scaled_dot_product_attention(q, k, v)  # (M, heads, S, D / heads)
    branch = F.linear(
        rearrange(heads, "m h s e -> m s (h e)"), attn.out_proj.weight, attn.out_proj.bias
    )
    # x + branch, in branch's fresh storage when the dtypes allow (addition commutes bitwise).
    x = branch.add_(x) if branch.dtype == x.dtype else x + branch
    hidden = F.linear(block.ln_2(x), mlp.c_fc.weight, mlp.c_fc.bias)  # (M, S, 4D)
    if isinstance(mlp.gelu, QuickGELU):
        hidden = hidden.mul_(torch.mul(hidden, 1.702).sigmoid_())  # bitwise QuickGELU, 1 buffer
    else:
        hidden = mlp.gelu(hidden)
    branch = F.linear(hidden, mlp.c_proj.weight, mlp.c_proj.bias)
    if out is None:
        return branch.add_(x) if branch.dtype == x.dtype else x + branch
    return torch.add(branch, x, out=out)


class FrozenViT(FrozenTower):
    """A CLIP ViT that never trains: parameters frozen, every forward under ``torch.no_grad()``.

    Frames are encoded independently; :meth:`iter_blocks` yields the tokens after each residual
    block, ``(B*T, 1+N, D)`` batch-first with the class token first, one layer at a time so that a
    consumer can interleave its own work and only one layer's tokens need to be alive.

    Args:
        visual: an open_clip ``VisionTransformer`` (taken over, not copied).
        identity: where the weights came from (see :func:`s4v_core.backbone.create_clip`).
        with_projection: keep ``ln_post`` and ``proj`` for :meth:`encode_image` (the CLIP image
            embedding). Side4Video does not use them, so they are dropped by default, as in the
            reference (which also leaves them out of its parameter count).
    """

    def __init__(self, visual: nn.Module, identity: dict, *, with_projection: bool = False) -> None:
        super().__init__()
        if not is_open_clip_vit(visual):
            raise TypeError(f"FrozenViT needs an open_clip VisionTransformer, got {type(visual)}")
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.blocks = visual.transformer.resblocks
        self._plain = [is_plain_block(block) for block in self.blocks]
        if not visual.transformer.batch_first:
            raise ValueError("FrozenViT expects an open_clip ViT built with batch_first=True")
        self.ln_post = visual.ln_post if with_projection else None
        self.proj = visual.proj if with_projection else None
        self.width: int = visual.transformer.width
        self.num_layers: int = len(self.blocks)
        self.patch_size: int = visual.patch_size[0]
        self.image_size: int = visual.image_size[0]
        self.grid: tuple[int, int] = tuple(visual.grid_size)
        self.embed_dim: int | None = visual.output_dim if with_projection else None
        preprocess = getattr(visual, "preprocess_cfg", {})
        self.mean: tuple[float, ...] = tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std: tuple[float, ...] = tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD))
        self._identity = dict(identity)
        self.requires_grad_(False)
        self.eval()

    @property
    def identity(self) -> dict:
        """``{"name": open_clip name, "pretrained": tag or path or None, "sha256": hash or None}``."""
        return dict(self._identity)

    def train(self, mode: bool = True) -> FrozenViT:
        # Always eval: the backbone has no dropout or batch statistics to switch, and eval mode lets
        # nn.MultiheadAttention take PyTorch's fused inference path.
        return super().train(False)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch and position embedding: images ``(M, 3, H, W)`` -> tokens ``(M, 1+N, D)``."""
        x = self.conv1(images.to(self.conv1.weight.dtype))  # (M, D, h, w)
        x = rearrange(x, "m d h w -> m (h w) d")
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    @torch.no_grad()
    def block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        """Residual block ``index`` on tokens ``(M, 1+N, D)``."""
        block = self.blocks[index]
        if not self._plain[index]:
            return block(tokens)
        images = tokens.shape[0]
        per_image = tokens.shape[1] * block.mlp.c_fc.out_features * 4  # fp32 hidden bytes
        groups = -(-images * per_image // CPU_CHUNK_BYTES)  # ceil
        if tokens.device.type != "cpu" or groups <= 1:
            return _frozen_block(block, tokens)
        size = -(-images // min(groups, images))  # equal groups, the last one possibly smaller
        out = torch.empty_like(tokens)
        for start in range(0, images, size):
            _frozen_block(block, tokens[start : start + size], out[start : start + size])
        return out
