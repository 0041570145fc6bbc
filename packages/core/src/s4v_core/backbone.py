"""Frozen CLIP ViT backbones from open_clip, yielding the tokens after every transformer block.

Side4Video (arXiv 2311.15769, reference github.com/HJYao00/Side4Video @ 5d72352) runs a CLIP ViT
frozen beside a trainable side network. The reference vendors a modified CLIP; here the backbone is
an unmodified open_clip ``VisionTransformer`` whose maths is the same (conv patch embedding, class
token, positional embedding, ``ln_pre``, pre-LN residual blocks), read block by block.

Weights come from an open_clip pretrained tag (``openai``, ``laion2b_s34b_b88k``, ...), from a local
file (an OpenAI-format ``.pt``, TorchScript or plain state dict, or an open_clip state dict), or
nowhere (random initialisation). OpenAI weights need the ``-quickgelu`` model names.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import open_clip
import torch
import torch.nn.functional as F
from einops import rearrange
from open_clip.transformer import QuickGELU, ResidualAttentionBlock
from torch import nn

if TYPE_CHECKING:
    from s4v_core.backbone_eva import FrozenEVA

logger = logging.getLogger(__name__)

TINY_MODEL = "s4v-tiny"
# Entries of TorchScript CLIP archives that are not weights (OpenAI's metadata, and the text
# tower's causal mask, a non-persistent buffer in open_clip).
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def register_model_configs() -> None:
    """Make the model configs shipped with s4v (``s4v-tiny``, ``s4v-tiny-eva``) known to open_clip.

    Also registers the timm trunk that ``s4v-tiny-eva`` names. Idempotent.
    """
    from s4v_core.backbone_eva import register_tiny_eva  # backbone_eva builds on this module

    register_tiny_eva()
    if TINY_MODEL in open_clip.list_models():  # both configs are in one folder, added together
        return
    with resources.as_file(resources.files("s4v_core") / "model_configs") as config_dir:
        open_clip.add_model_config(Path(config_dir))


@dataclass(frozen=True, kw_only=True, slots=True)
class ViTGeometry:
    """What the side network needs to know about a ViT, read from its open_clip config."""

    width: int  # D
    num_layers: int  # L
    patch_size: int  # p
    image_size: int
    grid: tuple[int, int]  # (h, w) patches; N = h * w


def vit_geometry(name: str) -> ViTGeometry:
    """The geometry of open_clip ViT ``name`` without building it."""
    register_model_configs()
    config = open_clip.get_model_config(name)
    vision = (config or {}).get("vision_cfg", {})
    if not isinstance(vision.get("layers"), int) or "timm_model_name" in vision:
        raise ValueError(f"{name!r} is not an open_clip ViT config")
    image, patch = vision.get("image_size", 224), vision.get("patch_size", 16)
    return ViTGeometry(
        width=vision.get("width", 768),
        num_layers=vision["layers"],
        patch_size=patch,
        image_size=image,
        grid=(image // patch, image // patch),
    )


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read CLIP weights from a local file without unpickling arbitrary objects.

    Accepts OpenAI's TorchScript archives (read with ``torch.jit.load``, which runs no Python
    pickle), and ``torch.save`` files holding a state dict, optionally under a ``state_dict`` or
    ``model_state_dict`` key (released Side4Video checkpoints) and with a DDP ``module.`` prefix
    (read with ``torch.load(weights_only=True)``).

    Raises:
        ValueError: when the file holds no tensor state dict.
    """
    path = Path(path)
    if _is_torchscript_archive(path):
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", FutureWarning
            )  # torch.jit is deprecated, OpenAI's files are not
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{path}: not a readable weights file ({error})") from error
    for wrapper in ("state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    for key in _NON_WEIGHT_KEYS:
        state.pop(key, None)
    return state


def load_weights_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    *,
    may_miss: tuple[str, ...] = (),
) -> None:
    """``module.load_state_dict(state)`` with an error that names the offending keys and shapes.

    Keys in ``may_miss`` may be absent from ``state`` (they keep their current values).
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state) - set(may_miss))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unknown keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if mismatched:
        problems.append(f"wrong shapes {mismatched[:5]}")
    if problems:
        raise ValueError(f"{source}: weights do not fit the model: " + "; ".join(problems))
    module.load_state_dict(state, strict=False)


@contextlib.contextmanager
def _quiet_root_warning(prefix: str) -> Iterator[None]:
    """Drop open_clip's root-logger messages starting with ``prefix`` while inside."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _is_side4video_release(state: dict[str, torch.Tensor]) -> bool:
    return "visual.side_conv1.weight" in state


def _release_backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The frozen ViT's tensors of a released Side4Video checkpoint (which shares CLIP's names)."""
    side_parts = ("side_conv1", "side_pre_bn3d", "side_post_bn", "transformer.side_")
    return {
        key: value
        for key, value in state.items()
        if key.startswith("visual.") and not key.removeprefix("visual.").startswith(side_parts)
    }


def _projection_keys(visual: nn.Module) -> tuple[str, ...]:
    """Keys of an image tower's state dict that only its CLIP projection reads."""
    from s4v_core.backbone_eva import eva_head_keys, is_eva_tower

    if is_eva_tower(visual):
        return eva_head_keys(visual)
    return ("ln_post.weight", "ln_post.bias", "proj")


def require_open_clip_vit(name: str, method: str) -> None:
    """Refuse, before anything is built, an open_clip model whose image tower is not open_clip's own
    ViT (EVA-02 and other timm towers); ``method`` names the method in the error."""
    register_model_configs()
    config = open_clip.get_model_config(name)
    if config is not None and "timm_model_name" in config.get("vision_cfg", {}):
        raise ValueError(
            f"{method} needs an open_clip VisionTransformer; {name}'s image tower is timm's "
            f"{config['vision_cfg']['timm_model_name']}"
        )


def create_clip(
    name: str, pretrained: str | None = None, *, need_projection: bool = True
) -> tuple[open_clip.CLIP, dict]:
    """Build an open_clip CLIP (vision and text towers) and load its weights.

    Args:
        name: open_clip model name (``ViT-B-16``, ``ViT-B-16-quickgelu``, ``s4v-tiny``, ...).
        pretrained: an open_clip pretrained tag, a path to a local weights file, or None for
            random weights. A local file may hold the whole CLIP, only its ``visual.`` tower, or
            be a released Side4Video checkpoint (whose frozen ViT is then used).
        need_projection: whether the image tower's ``ln_post`` and ``proj`` must be loaded too
            (a Side4Video checkpoint does not have them).

    Returns:
        The model (eval mode, fp32, on the CPU) and its identity
        ``{"name", "pretrained", "sha256"}`` (``sha256`` only for local files).
    """
    register_model_configs()
    if name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {name!r}; see open_clip.list_models()")
    identity = {"name": name, "pretrained": pretrained, "sha256": None}
    if pretrained is not None and Path(pretrained).is_file():
        with _quiet_root_warning("No pretrained weights loaded"):  # they are loaded just below
            model = open_clip.create_model(name, pretrained=None)
        state = read_clip_state_dict(pretrained)
        if _is_side4video_release(state):
            state = _release_backbone(state)
        if all(key.startswith("visual.") for key in state):
            visual_state = {key.removeprefix("visual."): value for key, value in state.items()}
            head = () if need_projection else _projection_keys(model.visual)
            load_weights_strict(model.visual, visual_state, str(pretrained), may_miss=head)
        else:
            load_weights_strict(model, state, str(pretrained))
        identity["sha256"] = file_sha256(pretrained)
        logger.info("loaded %s weights from %s", name, pretrained)
    elif pretrained is not None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise ValueError(
                f"pretrained={pretrained!r} is neither a file nor an open_clip tag for {name} "
                f"(tags: {', '.join(tags) or 'none'})"
            )
        model = open_clip.create_model(name, pretrained=pretrained)
    else:
        with _quiet_root_warning("No pretrained weights loaded"):  # random weights were asked for
            # On the default device, so that under `with torch.device("meta")` nothing is
            # allocated (counting parameters of a large model; open_clip moves to `device`).
            model = open_clip.create_model(name, pretrained=None, device=torch.get_default_device())
    return model.eval(), identity


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


class FrozenTower(nn.Module):
    """What every frozen image tower offers on top of its ``embed`` and ``block``.

    A subclass sets ``num_layers``, ``ln_post`` and ``proj`` and implements ``embed(images)`` and
    ``block(index, tokens)``, both without autograd; the side networks and methods need only this
    interface, so a CLIP ViT (:class:`FrozenViT`) and an EVA-02 (``FrozenEVA``) are interchangeable.
    """

    num_layers: int
    ln_post: nn.Module | None
    proj: torch.Tensor | nn.Module | None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def iter_blocks(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        """Yield the tokens ``(M, 1+N, D)`` after each block for images ``(M, 3, H, W)``."""
        # No grad context spans a yield: that would leak no_grad into the consumer's code.
        tokens = self.embed(images)
        for index in range(self.num_layers):
            tokens = self.block(index, tokens)
            yield tokens

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Tokens after every block: a list of L tensors ``(M, 1+N, D)`` for images ``(M, 3, H, W)``."""
        return list(self.iter_blocks(images))

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embedding ``(M, E)``: ``ln_post`` on the last class token, then ``proj``."""
        if self.proj is None:
            raise RuntimeError("build the backbone with with_projection=True to encode images")
        tokens = self.embed(images)
        for index in range(self.num_layers):
            tokens = self.block(index, tokens)
        return self.ln_post(tokens[:, 0]) @ self.proj


class FrozenViT(FrozenTower):
    """A CLIP ViT that never trains: parameters frozen, every forward under ``torch.no_grad()``.

    Frames are encoded independently; :meth:`iter_blocks` yields the tokens after each residual
    block, ``(B*T, 1+N, D)`` batch-first with the class token first, one layer at a time so that a
    consumer can interleave its own work and only one layer's tokens need to be alive.

    Args:
        visual: an open_clip ``VisionTransformer`` (taken over, not copied).
        identity: where the weights came from (see :func:`create_clip`).
        with_projection: keep ``ln_post`` and ``proj`` for :meth:`encode_image` (the CLIP image
            embedding). Side4Video does not use them, so they are dropped by default, as in the
            reference (which also leaves them out of its parameter count).
    """

    def __init__(self, visual: nn.Module, identity: dict, *, with_projection: bool = False) -> None:
        super().__init__()
        if not isinstance(visual, open_clip.transformer.VisionTransformer):
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


def build_backbone(
    name: str,
    pretrained: str | None = None,
    *,
    with_projection: bool = False,
    weights_dtype: torch.dtype | None = None,
) -> FrozenViT | FrozenEVA:
    """A frozen CLIP image tower: open_clip ``name`` with weights from ``pretrained``.

    Args:
        name: open_clip model name.
        pretrained: an open_clip pretrained tag, a local weights file, or None (random).
        with_projection: keep the tower's ``ln_post`` and ``proj`` (for ``encode_image``).
        weights_dtype: cast the frozen weights once to this dtype (``torch.bfloat16``); None keeps
            fp32. Images are cast to it and tokens come back in it.

    Returns:
        A :class:`~s4v_core.backbone_eva.FrozenEVA` for an image tower around timm's ``Eva``
        (open_clip ``EVA02-*``), a :class:`FrozenViT` otherwise.
    """
    clip, identity = create_clip(name, pretrained, need_projection=with_projection)
    return freeze_image_tower(
        clip.visual, identity, with_projection=with_projection, weights_dtype=weights_dtype
    )


def freeze_image_tower(
    visual: nn.Module,
    identity: dict,
    *,
    with_projection: bool = False,
    weights_dtype: torch.dtype | None = None,
) -> FrozenViT | FrozenEVA:
    """The frozen wrapper of an open_clip image tower: FrozenEVA for EVA-02, FrozenViT otherwise.

    Args are those of :func:`build_backbone`; ``visual`` and ``identity`` come from
    :func:`create_clip` (a caller that also needs the text tower keeps the rest of the CLIP).
    """
    from s4v_core.backbone_eva import FrozenEVA, is_eva_tower  # backbone_eva builds on this module

    if is_eva_tower(visual):
        return FrozenEVA(
            visual, identity, with_projection=with_projection, weights_dtype=weights_dtype
        )
    backbone = FrozenViT(visual, identity, with_projection=with_projection)
    return backbone if weights_dtype is None else backbone.to(weights_dtype)
