"""The reference implementation's computation, restated as a yardstick for s4v's own model.

Side4Video's reference (github.com/HJYao00/Side4Video @ 5d72352, ``Recognition/clip/model.py``,
its ``VisualTransformer`` and ``AttnCBlock``) computes the same function as
:class:`s4v_recognition.VideoClassifier`, laid out differently: tokens are sequence-first ``(S, B*T, C)``; every BatchNorm3d and Conv3d of
the side network runs on a ``(B, C, T, h, w)`` view of them; the side attention is an
``nn.MultiheadAttention`` whose queries are the patch rows of a LayerNorm'd
``[shifted class token; patches + position]`` sequence; each tap is a LayerNorm over the backbone
width followed by a Linear; the MLP is Linear, exact GELU, Linear under plain autograd; and the frozen
CLIP runs in training mode with autograd on (its weights need no gradient, so it records no graph).

:class:`ReferenceLayoutClassifier` performs those operations in that order, with the parameter
names of the reference's checkpoints (its ``state_dict`` is the ``model_state_dict`` a release
holds: the ``visual`` and ``fc`` children of ``VideoCLIP`` in ``Recognition/train_vision.py``).
It exists for two jobs and is not a training path:

* ``s4v bench memory --methods reference-layout`` times and meters it beside s4v on one machine
  (the reference measured 1,159.5 MiB saved for backward at B/16, 2 x 8 frames, fp32);
* tests load one set of weights into both and check that s4v computes the reference's function in
  training mode: logits, every gradient, and the BatchNorm running statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from s4v_recognition.model import VideoClassifier
from s4v_recognition.releases.clip import convert_reference_state, reference_key_map


def _sequence_first_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An open_clip CLIP block on sequence-first tokens ``(S, M, D)``, as the reference runs it.

    open_clip's blocks are batch-first; fed a transposed view, ``nn.MultiheadAttention`` would
    take a much slower path than the reference's sequence-first module does. This is what that
    module computes in training mode (``need_weights=False``), on the block's own weights.
    """
    attn = block.attn
    h = block.ln_1(x)
    attended = F.multi_head_attention_forward(
        h, h, h, attn.embed_dim, attn.num_heads,
        attn.in_proj_weight, attn.in_proj_bias, None, None, False, 0.0,
        attn.out_proj.weight, attn.out_proj.bias,
        training=True, need_weights=False,
    )[0]  # fmt: skip
    x = x + attended
    return x + block.mlp(block.ln_2(x))


class _SideMlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _SideBlock(nn.Module):
    """One side block on sequence-first tokens ``(N, B*T, C)``; names as in the reference."""

    def __init__(self, width: int, num_frames: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.num_frames, self.grid = num_frames, grid
        self.bn_1 = nn.BatchNorm3d(width)
        self.conv = nn.Sequential(
            nn.Conv3d(width, width, 1),
            nn.Conv3d(width, width, (3, 1, 1), padding=(1, 0, 0), groups=width),
            nn.Conv3d(width, width, 1),
        )
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, width // 64)  # sequence-first
        self.bn_2 = nn.BatchNorm3d(width)
        self.mlp = _SideMlp(width, 4 * width)

    def _video(self, tokens: torch.Tensor) -> torch.Tensor:
        return rearrange(tokens, "(h w) (b t) c -> b c t h w", h=self.grid[0], t=self.num_frames)

    def _tokens(self, video: torch.Tensor) -> torch.Tensor:
        return rearrange(video, "b c t h w -> (h w) (b t) c")

    def _shift(self, cls: torch.Tensor) -> torch.Tensor:
        """Half the channels from frame t+1, half from t-1, zeros past the clip: ``(1, B*T, C)``."""
        frames = rearrange(cls, "n (b t) c -> n b t c", t=self.num_frames)
        half = frames.shape[-1] // 2
        shifted = torch.zeros_like(frames)
        shifted[:, :, :-1, :half] = frames[:, :, 1:, :half]
        shifted[:, :, 1:, half:] = frames[:, :, :-1, half:]
        return rearrange(shifted, "n b t c -> n (b t) c")

    def forward(self, x: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        video = self._video(x)
        x = self._tokens(video + self.conv(self.bn_1(video)))
        # The position embedding is added in place, through a batch-first view of the
        # concatenation; the layouts of these views decide the layouts (and the speed) downstream.
        z = torch.cat([self._shift(cls), x]).permute(1, 0, 2)  # (B*T, 1+N, C) view
        z[:, 1:] = z[:, 1:] + pos
        z = self.ln_1(z.permute(1, 0, 2))
        x = x + self.attn(z[1:], z, z, need_weights=False)[0]
        return x + self.mlp(self._tokens(self.bn_2(self._video(x))))


class _Transformer(nn.Module):
    """The reference's ``visual.transformer``: frozen CLIP blocks and the side modules."""

    def __init__(
        self, resblocks: nn.ModuleList, width: int, side_dim: int, num_frames: int, grid
    ) -> None:
        super().__init__()
        self.resblocks = resblocks
        self.side_lns = nn.ModuleList(nn.LayerNorm(width) for _ in resblocks)
        self.side_linears = nn.ModuleList(nn.Linear(width, side_dim) for _ in resblocks)
        self.side_transformer = nn.ModuleList(
            _SideBlock(side_dim, num_frames, grid) for _ in resblocks
        )
        self.side_spatial_position_embeddings = nn.Parameter(
            torch.zeros(grid[0] * grid[1], side_dim)
        )


class _Visual(nn.Module):
    """The reference's ``visual``: CLIP embedding and blocks, side stem, side network, post-BN."""

    def __init__(self, source: VideoClassifier) -> None:
        super().__init__()
        backbone, side = source.encoder.backbone, source.encoder.side
        if side.side_layers != tuple(range(side.num_layers)):
            raise ValueError("the reference layout has a side block after every backbone layer")
        self.num_frames, self.grid = side.num_frames, backbone.grid
        c = side.out_dim
        self.conv1 = backbone.conv1
        self.class_embedding = backbone.class_embedding
        self.positional_embedding = backbone.positional_embedding
        self.ln_pre = backbone.ln_pre
        self.transformer = _Transformer(
            backbone.blocks, backbone.width, c, side.num_frames, backbone.grid
        )
        patch = backbone.patch_size
        self.side_conv1 = nn.Conv3d(3, c, (3, patch, patch), (1, patch, patch), (1, 0, 0))
        self.side_pre_bn3d = nn.BatchNorm3d(c)
        self.side_post_bn = nn.BatchNorm3d(c)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B*T, 3, H, W)`` -> video features ``(B, C)``.

        The reshapes, permutes and copies are the reference's, in its order: they fix the memory
        layout every later operation sees, and with it the time it takes.
        """
        t = self.num_frames
        side = rearrange(images, "(b t) c h w -> b c t h w", t=t)
        x = self.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B*T, N, D) view
        side = self.side_pre_bn3d(self.side_conv1(side))
        side = rearrange(side, "b c t h w -> (b t) (h w) c")
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x).permute(1, 0, 2)  # sequence-first view, (1+N, B*T, D)
        side = side.permute(1, 0, 2)  # (N, B*T, C) view
        blocks = self.transformer
        for i, block in enumerate(blocks.resblocks):
            x = _sequence_first_block(block, x)
            y = blocks.side_linears[i](blocks.side_lns[i](x))  # (1+N, B*T, C)
            side = 0.5 * side + 0.5 * y[1:]
            side = blocks.side_transformer[i](side, y[:1], blocks.side_spatial_position_embeddings)
        video = rearrange(side.permute(1, 0, 2), "(b t) (h w) c -> b c t h w", t=t, h=self.grid[0])
        return self.side_post_bn(video).flatten(2).mean(-1)


class ReferenceLayoutClassifier(nn.Module):
    """Side4Video as the reference lays it out; ``state_dict()`` has the release key names.

    Build it from an s4v side4video model with :meth:`from_model`: it shares that model's frozen
    CLIP modules (run here sequence-first, in training mode, with autograd on) and copies its
    trainable weights and BatchNorm statistics.
    """

    def __init__(self, source: VideoClassifier) -> None:
        super().__init__()
        if source.method != "side4video":
            raise ValueError(f"the reference layout is a side4video model, not {source.method}")
        self.visual = _Visual(source)
        self.fc = nn.Linear(source.encoder.side.out_dim, source.num_classes)
        self.num_frames = source.num_frames
        for name, parameter in self.named_parameters():  # the reference's my_fix_clip rule
            parameter.requires_grad_(not name.startswith("visual.") or "side" in name)

    @classmethod
    def from_model(cls, model: VideoClassifier) -> ReferenceLayoutClassifier:
        """The reference layout holding ``model``'s weights."""
        reference = cls(model)
        ours = model.state_dict()
        targets = reference.state_dict()
        state = {
            key: ours[mine].reshape(targets[key].shape)
            for key, mine in reference_key_map(model).items()
        }
        reference.load_state_dict(state, strict=True)
        return reference

    def s4v_state_dict(self, model: VideoClassifier) -> dict[str, torch.Tensor]:
        """This module's weights renamed into ``model``'s keys (how a release is imported)."""
        return convert_reference_state(self.state_dict(), model, "reference layout")

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` for frames ``(B, T, 3, H, W)``."""
        if frames.dim() != 5 or frames.shape[1] != self.num_frames:
            raise ValueError(
                f"expected frames (B, {self.num_frames}, 3, H, W), got {tuple(frames.shape)}"
            )
        return self.fc(self.visual(rearrange(frames, "b t c h w -> (b t) c h w")))
