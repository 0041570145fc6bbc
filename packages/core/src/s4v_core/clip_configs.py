"""The test-size models s4v ships: two open_clip configs and the timm trunk one of them names.

``s4v-tiny`` (``model_configs/s4v-tiny.json``) is a random 4-layer, 32 px CLIP ViT;
``s4v-tiny-eva`` (``model_configs/s4v-tiny-eva.json``, timm trunk ``s4v_tiny_eva_patch8_32``) is a
random 4-layer EVA-02 with every EVA-02 feature at once (post-norm blocks as EVA02-E, rope and SwiGLU
with the inner LayerNorms as EVA02-B/L). Every unit test and the CPU demo run on them.
:func:`register_model_configs` makes both known to open_clip (and the trunk to timm); everything
that looks up an open_clip model name calls it first.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import open_clip
import timm
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.models import build_model_with_cfg, register_model
from timm.models.eva import Eva

TINY_MODEL = "s4v-tiny"  # the open_clip config of the tiny CLIP ViT
TINY_EVA_MODEL = "s4v-tiny-eva"  # the open_clip config of the tiny EVA-02
TINY_EVA_TRUNK = "s4v_tiny_eva_patch8_32"  # the timm model it names


def s4v_tiny_eva_patch8_32(pretrained: bool = False, **kwargs: Any) -> Eva:
    """A random EVA-02 trunk the size of ``s4v-tiny``: 4 layers, width 64, 2 heads, 8 px patches.

    EVA02-E's post-norm blocks with EVA02-B/L's rope (ref grid = the 4 x 4 grid) and SwiGLU
    (hidden 170 = 64 * 8/3, LayerNorm inside) and attention-output LayerNorm, fused q/k/v with
    q and v biases as in EVA02-E. A timm entrypoint, registered by :func:`register_tiny_eva`.

    Args:
        pretrained: must be False (there are no weights).
        **kwargs: ``Eva`` arguments overriding the defaults (open_clip passes ``num_classes``
            and ``global_pool``).

    Raises:
        ValueError: for ``pretrained=True``.
    """
    if pretrained:
        raise ValueError(f"{TINY_EVA_TRUNK} is a random test model, it has no pretrained weights")
    model_args = dict(
        img_size=32,
        patch_size=8,
        embed_dim=64,
        depth=4,
        num_heads=2,
        mlp_ratio=4 * 2 / 3,
        swiglu_mlp=True,
        scale_mlp=True,
        scale_attn_inner=True,
        use_rot_pos_emb=True,
        ref_feat_shape=(4, 4),
        use_post_norm=True,
        global_pool=kwargs.pop("global_pool", "token"),
    )
    # A pretrained config of its own (the input it expects), so that timm does not warn of none.
    kwargs["pretrained_cfg"] = kwargs.get("pretrained_cfg") or dict(
        input_size=(3, 32, 32), mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, num_classes=64
    )
    return build_model_with_cfg(Eva, TINY_EVA_TRUNK, pretrained=False, **dict(model_args, **kwargs))


def register_tiny_eva() -> None:
    """Make ``s4v_tiny_eva_patch8_32`` known to timm (``s4v-tiny-eva`` names it). Idempotent."""
    if not timm.is_model(TINY_EVA_TRUNK):
        register_model(s4v_tiny_eva_patch8_32)


def register_model_configs() -> None:
    """Make the model configs shipped with s4v (``s4v-tiny``, ``s4v-tiny-eva``) known to open_clip.

    Also registers the timm trunk that ``s4v-tiny-eva`` names. Idempotent.
    """
    register_tiny_eva()
    if TINY_MODEL in open_clip.list_models():  # both configs are in one folder, added together
        return
    with resources.as_file(resources.files("s4v_core") / "model_configs") as config_dir:
        open_clip.add_model_config(Path(config_dir))
