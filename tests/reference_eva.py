"""A tiny re-statement of the reference's EVA models, for the release-import tests.

Written for these tests from reading github.com/HJYao00/Side4Video @ 5d72352 (not copied, and
sharing no code or name table with s4v's importer): ``Recognition/eva_clip/eva_vit_model.py``
(``EVAVisionTransformer`` with ``Block``, ``Attention``, ``Mlp``, ``SwiGLU``, ``PatchEmbed``,
``AttnCBlock``, ``SideAttention``), ``Recognition/train_vision.py`` (``VideoCLIP``: ``visual``
and ``fc``, saved as ``{"epoch", "model_state_dict", "optimizer_state_dict"}``),
``Retrieval/eva_clip/eva_vit_model.py`` (adds ``side_post_bn`` and a zero ``side_proj``),
``Retrieval/eva_clip/model.py`` (``CustomCLIP``: ``visual``, ``text``, ``logit_scale``),
``Retrieval/eva_clip/transformer.py`` (``TextTransformer``) and
``Retrieval/eva_clip/eva_modeling.py`` (``CLIP4CLIP``: ``clip``, ``text_weight_fc``,
``video_weight_fc``; saved as a bare state dict), and EVA-CLIP's ``rope.py`` that the reference
imports. Module and attribute names are the reference's, so ``state_dict()`` has the keys of its
files; every forward is the reference's maths in plain PyTorch (softmax attention in place of
xformers, ``nn.LayerNorm`` in place of apex's, no activation checkpointing: same values).

One liberty: the reference gives every side block ``C // 64`` heads; here the head width is an
argument (64 by default) so that models narrower than 64 stay constructible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def _ln(width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, eps=1e-6)  # the vision tower's norm_layer (eps=1e-6)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    pairs = rearrange(x, "... (d r) -> ... d r", r=2)
    first, second = pairs.unbind(-1)
    return rearrange(torch.stack([-second, first], dim=-1), "... d r -> ... (d r)")


class Rope(nn.Module):
    """EVA-CLIP's ``VisionRotaryEmbeddingFast``: persistent ``freqs_cos``/``freqs_sin`` buffers."""

    def __init__(self, dim: int, pt_seq_len: int, ft_seq_len: int) -> None:
        super().__init__()
        freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        t = torch.arange(ft_seq_len) / ft_seq_len * pt_seq_len
        freqs = torch.einsum("i,f->if", t, freqs).repeat_interleave(2, dim=-1)  # (ft, dim)
        rows = freqs[:, None, :].expand(ft_seq_len, ft_seq_len, dim)
        cols = freqs[None, :, :].expand(ft_seq_len, ft_seq_len, dim)
        table = torch.cat([rows, cols], dim=-1).reshape(ft_seq_len * ft_seq_len, 2 * dim)
        self.register_buffer("freqs_cos", table.cos())
        self.register_buffer("freqs_sin", table.sin())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.freqs_cos + _rotate_half(t) * self.freqs_sin


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, *, subln: bool, rope: Rope | None) -> None:
        super().__init__()
        self.heads, self.subln = heads, subln
        if subln:
            self.q_proj = nn.Linear(dim, dim, bias=False)
            self.k_proj = nn.Linear(dim, dim, bias=False)
            self.v_proj = nn.Linear(dim, dim, bias=False)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.randn(dim) * 0.1)
        self.v_bias = nn.Parameter(torch.randn(dim) * 0.1)
        self.inner_attn_ln = _ln(dim) if subln else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        if self.subln:
            q = F.linear(x, self.q_proj.weight, self.q_bias)
            k = F.linear(x, self.k_proj.weight)
            v = F.linear(x, self.v_proj.weight, self.v_bias)
        else:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
            q, k, v = F.linear(x, self.qkv.weight, bias).chunk(3, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        if self.rope is not None:  # patches only, the class token stays put
            q = torch.cat([q[:, :, :1], self.rope(q[:, :, 1:])], dim=2)
            k = torch.cat([k[:, :, :1], self.rope(k[:, :, 1:])], dim=2)
        weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        out = rearrange(weights.softmax(-1) @ v, "b h n d -> b n (h d)")
        return self.proj(self.inner_attn_ln(out.reshape(b, n, -1)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, *, subln: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.ffn_ln = _ln(hidden) if subln else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.ffn_ln(F.gelu(self.fc1(x))))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, *, subln: bool) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.ffn_ln = _ln(hidden) if subln else nn.Identity()
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, hidden, *, postnorm, subln, swiglu, rope) -> None:
        super().__init__()
        self.norm1 = _ln(dim)
        self.attn = Attention(dim, heads, subln=subln, rope=rope)
        self.norm2 = _ln(dim)
        self.mlp = (SwiGLU if swiglu else Mlp)(dim, hidden, subln=subln)
        self.postnorm = postnorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.postnorm:
            x = x + self.norm1(self.attn(x))
            return x + self.norm2(self.mlp(x))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class SideAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = rearrange(self.q_proj(x[:, 1:]), "b n (h d) -> b h n d", h=self.heads)
        k = rearrange(self.k_proj(x), "b n (h d) -> b h n d", h=self.heads)
        v = rearrange(self.v_proj(x), "b n (h d) -> b h n d", h=self.heads)
        weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        return self.proj(rearrange(weights.softmax(-1) @ v, "b h n d -> b n (h d)"))


class AttnCBlock(nn.Module):
    """The post-norm side block (``post_norm = True``)."""

    def __init__(self, dim: int, frames: int, head_width: int) -> None:
        super().__init__()
        self.bn_1 = nn.BatchNorm3d(dim)
        self.conv = nn.Sequential(
            nn.Conv3d(dim, dim, 1),
            nn.Conv3d(dim, dim, (3, 1, 1), padding=(1, 0, 0), groups=dim),
            nn.Conv3d(dim, dim, 1),
        )
        self.bn_2 = nn.BatchNorm3d(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.attn = SideAttention(dim, dim // head_width)
        self.ln_1 = nn.LayerNorm(dim)  # apex FusedLayerNorm(dim): eps 1e-5
        self.T = frames

    def shift_token(self, token: torch.Tensor) -> torch.Tensor:
        token = rearrange(token, "(b t) n d -> n b t d", t=self.T)
        fold = token.shape[-1] // 2
        out = torch.zeros_like(token)
        out[:, :, :-1, :fold] = token[:, :, 1:, :fold]
        out[:, :, 1:, fold:] = token[:, :, :-1, fold:]
        return rearrange(out, "n b t d -> (b t) n d")

    def forward(self, x: torch.Tensor, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        h = int(x.shape[1] ** 0.5)
        x = rearrange(x, "(b t) (h w) d -> b d t h w", h=h, t=self.T)
        x = x + self.bn_1(self.conv(x))
        x = rearrange(x, "b d t h w -> (b t) (h w) d")
        xt = torch.cat([self.shift_token(token), x], dim=1)
        xt = torch.cat([xt[:, :1], xt[:, 1:] + pos], dim=1)
        x = x + self.ln_1(self.attn(xt))
        y = rearrange(self.mlp(x), "(b t) (h w) d -> b d t h w", h=h, t=self.T)
        return x + rearrange(self.bn_2(y), "b d t h w -> (b t) (h w) d")


class EVAVisionTransformer(nn.Module):
    """The reference ViT with its side network; ``retrieval`` adds side_post_bn and side_proj."""

    def __init__(
        self,
        *,
        image: int,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        hidden: int,
        embed_dim: int,
        frames: int,
        side_dim: int,
        postnorm: bool,
        subln: bool,
        swiglu: bool,
        rope: bool,
        retrieval: bool = False,
        side_head_width: int = 64,
    ) -> None:
        super().__init__()
        grid = image // patch
        self.T = frames
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, dim) * 0.02)
        self.rope = Rope(dim // heads // 2, grid, grid) if rope else None
        self.blocks = nn.ModuleList(
            Block(dim, heads, hidden, postnorm=postnorm, subln=subln, swiglu=swiglu, rope=self.rope)
            for _ in range(depth)
        )
        self.norm = _ln(dim)
        self.head = nn.Linear(dim, embed_dim)
        self.side_conv1 = nn.Conv3d(3, side_dim, (3, patch, patch), (1, patch, patch), (1, 0, 0))
        self.side_pre_bn3d = nn.BatchNorm3d(side_dim)
        self.side_spatial_position_embeddings = nn.Parameter(torch.randn(grid * grid, side_dim))
        self.drop_layer = list(range(0, depth, 2))
        kept = [i for i in range(depth) if i not in self.drop_layer]
        self.side_blocks = nn.ModuleList(
            AttnCBlock(side_dim, frames, side_head_width) for _ in kept
        )
        self.side_linears = nn.ModuleList(nn.Linear(dim, side_dim) for _ in kept)
        self.side_lns = nn.ModuleList(nn.LayerNorm(side_dim) for _ in kept)
        self.retrieval = retrieval
        if retrieval:
            self.side_post_bn = nn.BatchNorm3d(side_dim)
            self.side_proj = nn.Parameter(torch.randn(side_dim, dim) * 0.1)  # zero at init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = rearrange(x, "(b t) c h w -> b c t h w", t=self.T)
        side = rearrange(self.side_pre_bn3d(self.side_conv1(side)), "b c t h w -> (b t) (h w) c")
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        k = 0
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.drop_layer:
                continue
            y = self.side_lns[k](self.side_linears[k](x))
            side = 0.5 * side + 0.5 * y[:, 1:]
            side = self.side_blocks[k](side, y[:, :1], self.side_spatial_position_embeddings)
            k += 1
        h = int(side.shape[1] ** 0.5)
        side = rearrange(side, "(b t) (h w) d -> b d t h w", t=self.T, h=h)
        if not self.retrieval:
            return side.flatten(2).mean(-1)  # (B, C)
        side = self.side_post_bn(side).permute(0, 2, 1, 3, 4).flatten(3).mean(-1)  # (B, T, C)
        cls = rearrange(x[:, 0], "(b t) d -> b t d", t=self.T) + side @ self.side_proj
        return self.head(self.norm(cls))  # (B, T, E)


class VideoCLIP(nn.Module):
    """``train_vision.VideoCLIP``: the ViT under ``visual``, the head under ``fc``."""

    def __init__(self, visual: EVAVisionTransformer, side_dim: int, num_classes: int) -> None:
        super().__init__()
        self.visual = visual
        self.fc = nn.Linear(side_dim, num_classes)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames ``(B, T, 3, H, W)`` -> logits."""
        return self.fc(self.visual(rearrange(frames, "b t c h w -> (b t) c h w")))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))


class TextTransformer(nn.Module):
    """Token features ``ln_final(x) @ text_projection`` of every position (``return_all_features``).

    The reference's mask is a hard-coded 32 x 32 causal mask; this one is causal over the
    caption's length (the same for its 32 words).
    """

    def __init__(self, *, context: int, width: int, heads: int, layers: int, embed: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(49408, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.01)
        self.transformer = Transformer(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed) * width**-0.5)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text) + self.positional_embedding[: text.shape[1]]
        length = text.shape[1]
        mask = torch.full((length, length), float("-inf")).triu_(1)
        x = x.permute(1, 0, 2)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        return self.ln_final(x.permute(1, 0, 2)) @ self.text_projection


class CustomCLIP(nn.Module):
    def __init__(self, visual: EVAVisionTransformer, text: TextTransformer) -> None:
        super().__init__()
        self.visual = visual
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(3.0))


def _weight_fc(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))


class CLIP4CLIP(nn.Module):
    """``eva_modeling.CLIP4CLIP`` with ``interaction='wti'``; weight heads of width ``embed``."""

    def __init__(self, clip: CustomCLIP, embed: int) -> None:
        super().__init__()
        self.clip = clip
        self.text_weight_fc = _weight_fc(embed)
        self.video_weight_fc = _weight_fc(embed)

    def similarity(self, text: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Unscaled WTI scores (eval mode) for token ids ``text`` (B, L) and frames (B, T, ...)."""
        text_mask = (text != 0).float()
        text_feat = self.clip.text(text)
        video_feat = self.clip.visual(rearrange(frames, "b t c h w -> (b t) c h w"))
        video_mask = torch.ones(video_feat.shape[:2])
        text_weight = self.text_weight_fc(text_feat).squeeze(2)
        text_weight = text_weight.masked_fill(text_mask == 0, float("-inf")).softmax(-1)
        video_weight = self.video_weight_fc(video_feat).squeeze(2).softmax(-1)
        text_feat = text_feat / text_feat.norm(dim=-1, keepdim=True)
        video_feat = video_feat / video_feat.norm(dim=-1, keepdim=True)
        logits = torch.einsum("atd,bvd->abtv", text_feat, video_feat)
        logits = torch.einsum("abtv,at->abtv", logits, text_mask)
        logits = torch.einsum("abtv,bv->abtv", logits, video_mask)
        t2v = torch.einsum("abt,at->ab", logits.max(dim=-1)[0], text_weight)
        v2t = torch.einsum("abv,bv->ab", logits.max(dim=-2)[0], video_weight)
        return (t2v + v2t) / 2.0


def tiny_eva_tower(**overrides) -> dict:
    """The reference config that matches ``s4v-tiny-eva`` (4 layers, width 64, 2 heads, 8 px
    patches, 32 px images): EVA02-CLIP-L-14's ``subln``, ``rope``, ``naiveswiglu`` with
    EVA02-CLIP-bigE-14's ``postnorm``; SwiGLU hidden int(64 * 8/3) = 170."""
    return (
        dict(
            image=32,
            patch=8,
            dim=64,
            depth=4,
            heads=2,
            hidden=170,
            embed_dim=64,
            postnorm=True,
            subln=True,
            swiglu=True,
            rope=True,
        )
        | overrides
    )


def randomise_batch_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial running statistics and affine weights in every BatchNorm (eval uses them)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm3d):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)
