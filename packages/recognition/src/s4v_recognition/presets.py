"""The recognition registry: named model presets and methods.

Presets mirror the reference Side4Video configs (github.com/HJYao00/Side4Video @ 5d72352,
``Recognition/configs/{sthv1,sthv2,k400}/*``). Every shipped config uses T=8
frames at 224 px, dropout 0 and OpenAI CLIP weights, which use QuickGELU (hence the ``-quickgelu``
open_clip names).

A new backbone size is one :data:`PRESETS` entry; a new method is one :data:`METHODS` entry naming
its builder in :mod:`s4v_recognition.encoders` (its model code lives in core, as the rival methods'
do in :mod:`s4v_core.methods`).
``s4v models``, the run-config validation and :func:`s4v_recognition.build_model` read only these
two dicts.
"""

from __future__ import annotations

from s4v_core.assembly import lookup
from s4v_recognition import encoders
from s4v_recognition.config import RecognitionMethod, RecognitionPreset

PRESETS: dict[str, RecognitionPreset] = {
    # Recognition/configs/{sthv1,sthv2,k400}/*vitb-32*: ViT-B/32, T=8, n_emb=320.
    "side4video-b32": RecognitionPreset(
        backbone="ViT-B-32-quickgelu",
        pretrained="openai",
        num_frames=8,
        side_dim=320,
        image_size=224,
        description="Side4Video, CLIP ViT-B/32, C=320 (reference configs vitb-32)",
    ),
    # Recognition/configs/{sthv1,sthv2,k400}/*vitb-16*: ViT-B/16, T=8, n_emb=320.
    "side4video-b16": RecognitionPreset(
        backbone="ViT-B-16-quickgelu",
        pretrained="openai",
        num_frames=8,
        side_dim=320,
        image_size=224,
        description="Side4Video, CLIP ViT-B/16, C=320 (reference configs vitb-16)",
    ),
    # Recognition/configs/{sthv1,sthv2,k400}/*vitl-14*: ViT-L/14, T=8, n_emb=512.
    "side4video-l14": RecognitionPreset(
        backbone="ViT-L-14-quickgelu",
        pretrained="openai",
        num_frames=8,
        side_dim=512,
        image_size=224,
        description="Side4Video, CLIP ViT-L/14, C=512 (reference configs vitl-14)",
    ),
    # Paper Table 2 "Ours (light)" B/16 row: 4 M tunable params, 8.9 G. No config ships it; C=128
    # reproduces its 4.3 M parameters and 444 GFLOPs (a width inferred from the table, not stated).
    "side4video-b16-light": RecognitionPreset(
        backbone="ViT-B-16-quickgelu",
        pretrained="openai",
        num_frames=8,
        side_dim=128,
        image_size=224,
        description="Side4Video light, CLIP ViT-B/16, C=128 (paper Table 2, width inferred)",
    ),
    # EVA02-CLIP-bigE-14 (open_clip EVA02-E-14, LAION-2B): the reference's evae-14 configs and the
    # paper's headline numbers. C=576, side blocks after the 32 odd layers (the drop_layer of
    # Recognition/eva_clip/eva_vit_model.py skips the even ones); the 4.35 B
    # frozen weights in bf16 and the side blocks recomputed, so that it trains on one 24 GB card.
    "side4video-e14": RecognitionPreset(
        backbone="EVA02-E-14",
        pretrained="laion2b_s4b_b115k",
        num_frames=8,
        side_dim=576,
        image_size=224,
        side_layers="odd",
        backbone_dtype="bf16",
        grad_checkpointing=True,
        description="Side4Video, EVA02-CLIP ViT-E/14, C=576, odd layers (reference evae-14)",
    ),
    # No reference config: the EVA side network on EVA02-CLIP-L/14 at the CLIP L/14 width C=512.
    "side4video-eva-l14": RecognitionPreset(
        backbone="EVA02-L-14",
        pretrained="merged2b_s4b_b131k",
        num_frames=8,
        side_dim=512,
        image_size=224,
        side_layers="odd",
        backbone_dtype="bf16",
        grad_checkpointing=True,
        description="Side4Video, EVA02-CLIP ViT-L/14, C=512 (width of the CLIP L/14 configs)",
    ),
    # For tests and the CPU demo: the 4-layer, 32 px s4v-tiny CLIP shipped with s4v_core.
    "tiny": RecognitionPreset(
        backbone="s4v-tiny",
        pretrained=None,
        num_frames=8,
        side_dim=128,  # two heads of 64, like every reference config has C // 64 heads
        image_size=32,
        description="tiny Side4Video on the 32 px s4v-tiny ViT, for tests and demos",
    ),
    # The EVA path at test size: the 4-layer, 32 px s4v-tiny-eva (rope, SwiGLU, post-norm) with
    # side blocks after its odd layers 1 and 3; fp32 weights so that CPU runs are exact.
    "tiny-eva": RecognitionPreset(
        backbone="s4v-tiny-eva",
        pretrained=None,
        num_frames=8,
        side_dim=128,
        image_size=32,
        side_layers="odd",
        description="tiny Side4Video on the 32 px s4v-tiny-eva EVA-02, for tests and demos",
    ),
}


METHODS: dict[str, RecognitionMethod] = {
    "side4video": RecognitionMethod(build=encoders.side4video, trains="side network + head"),
    "linear-probe": RecognitionMethod(
        build=encoders.linear_probe, trains="head on time-averaged frozen CLIP embeddings"
    ),
    "full-finetune": RecognitionMethod(
        build=encoders.full_finetune, trains="the whole CLIP ViT + head, time-averaged"
    ),
    # The paper's rivals (its Table 2), each in its own s4v_core.methods module.
    "st-adapter": RecognitionMethod(
        build=encoders.st_adapter,
        trains="depth-wise 3D-conv adapters in every frozen block + head (backprop through ViT)",
    ),
    "aim": RecognitionMethod(
        build=encoders.aim,
        trains="spatial, temporal and joint adapters in every frozen block + head (backprop "
        "through ViT)",
    ),
    "evl": RecognitionMethod(
        build=encoders.evl,
        trains="temporal modules + query decoder over every frozen layer's tokens, + head",
    ),
    "dist": RecognitionMethod(
        build=encoders.dist,
        trains="temporal encoder + integration branches + pooling over a frozen CLIP, + head",
    ),
}


def get_preset(name: str) -> RecognitionPreset:
    """The preset called ``name``; a clear error listing the known ones otherwise."""
    return lookup(PRESETS, name, "preset")


def get_method(name: str) -> RecognitionMethod:
    """The method called ``name``; a clear error listing the known ones otherwise."""
    return lookup(METHODS, name, "method")
