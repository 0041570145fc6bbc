"""The retrieval registry: named model presets and methods.

Presets mirror the reference's retrieval scripts (github.com/HJYao00/Side4Video @ 5d72352,
``Retrieval/script_train/run_train_{msrvtt,msvd,vatex}.sh``). A new backbone size is one
:data:`PRESETS` entry; a new method is one :data:`METHODS` entry saying how the video tower is
built.
``s4v models``, the run-config validation and :func:`s4v_retrieval.build_model` read only these
two dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from s4v_core.assembly import lookup


@dataclass(frozen=True, kw_only=True, slots=True)
class RetrievalPreset:
    """Everything :func:`build_model` needs."""

    backbone: str  # open_clip model name
    pretrained: str | None  # the weights the reference starts from (open_clip tag)
    num_frames: int  # T, frames per video (reference max_frames: 12)
    max_words: int  # tokens per caption incl. start and end (reference max_words: 32)
    side_dim: int  # C, side network width
    image_size: int  # input resolution; must match the backbone's
    head_dim: int = 64  # side attention head width (reference: heads = C // 64)
    # Backbone layers with a side block: a tuple, "odd" (1, 3, ...: the reference's EVA variant,
    # Retrieval/eva_clip/eva_vit_model.py) or None for every layer.
    side_layers: tuple[int, ...] | Literal["odd"] | None = None
    similarity: str = "wti"  # "wti" (reference scripts) or "meanP"
    # Which reference side network: "clip" (Retrieval/modules/module_clip.py) or "eva"
    # (Retrieval/eva_clip/eva_vit_model.py: post-norm EVA blocks, side_post_bn, N-row position).
    side_network: Literal["clip", "eva"] = "clip"
    # Dtype the frozen vision and text towers are stored and run in ("bf16": half the bytes, no
    # fp32 copy; the reference keeps EVA-CLIP in fp32) or None to keep the weights' own.
    frozen_dtype: Literal["bf16"] | None = None
    description: str = ""


PRESETS: dict[str, RetrievalPreset] = {
    # script_train/run_train_msvd.sh and paper Table 3: ViT-B/32, 12 frames, 32 words, C=320.
    "side4video-b32": RetrievalPreset(
        backbone="ViT-B-32-quickgelu",
        pretrained="openai",
        num_frames=12,
        max_words=32,
        side_dim=320,
        image_size=224,
        description="Side4Video retrieval, CLIP ViT-B/32, C=320, WTI (reference MSVD script)",
    ),
    # script_train/run_train_{msrvtt,vatex}.sh: ViT-B/16, 12 frames, 32 words, C=320.
    "side4video-b16": RetrievalPreset(
        backbone="ViT-B-16-quickgelu",
        pretrained="openai",
        num_frames=12,
        max_words=32,
        side_dim=320,
        image_size=224,
        description="Side4Video retrieval, CLIP ViT-B/16, C=320, WTI (reference MSR-VTT/VATEX)",
    ),
    # For tests and the CPU demo: the 4-layer, 32 px s4v-tiny CLIP shipped with s4v_core.
    "tiny": RetrievalPreset(
        backbone="s4v-tiny",
        pretrained=None,
        num_frames=8,
        max_words=16,
        side_dim=64,
        image_size=32,
        head_dim=32,
        description="tiny Side4Video retrieval on the 32 px s4v-tiny CLIP, for tests and demos",
    ),
    # Retrieval/eva_clip/eva_modeling.py with EVA02-CLIP-bigE-14 (open_clip EVA02-E-14,
    # LAION-2B): EVA-CLIP vision and text towers, side blocks after the odd layers, 12 frames,
    # 32 words, WTI heads of the embedding width E=1024 (the reference hard-codes 1024). The
    # reference scripts ship no EVA command line, so C is the recognition E/14 configs' 576; the
    # frozen towers are kept in bf16 (the reference: fp32).
    "side4video-e14": RetrievalPreset(
        backbone="EVA02-E-14",
        pretrained="laion2b_s4b_b115k",
        num_frames=12,
        max_words=32,
        side_dim=576,
        image_size=224,
        side_layers="odd",
        side_network="eva",
        frozen_dtype="bf16",
        description="Side4Video retrieval, EVA02-CLIP ViT-E/14, C=576, odd layers, WTI (eva_clip)",
    ),
    # The same on EVA02-CLIP-L-14 (open_clip EVA02-L-14, E=768; the reference's WTI width 1024
    # would not fit it, the embedding width does), at the CLIP L/14 width C=512.
    "side4video-eva-l14": RetrievalPreset(
        backbone="EVA02-L-14",
        pretrained="merged2b_s4b_b131k",
        num_frames=12,
        max_words=32,
        side_dim=512,
        image_size=224,
        side_layers="odd",
        side_network="eva",
        frozen_dtype="bf16",
        description="Side4Video retrieval, EVA02-CLIP ViT-L/14, C=512, odd layers, WTI (eva_clip)",
    ),
    # The EVA path at test size: the reference's EVA retrieval network after the odd layers of
    # the 4-layer s4v-tiny-eva, C = 128 (two heads of 64, as the reference's C // 64); fp32.
    "tiny-eva": RetrievalPreset(
        backbone="s4v-tiny-eva",
        pretrained=None,
        num_frames=8,
        max_words=16,
        side_dim=128,
        image_size=32,
        side_layers="odd",
        side_network="eva",
        description="tiny Side4Video retrieval on the 32 px s4v-tiny-eva EVA-02, for tests",
    ),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class RetrievalMethod:
    """How one method builds the video tower over the frozen CLIP ViT."""

    side_network: bool  # correct the frame embeddings with the retrieval side network
    trains: str  # what trains, for `s4v models`


METHODS: dict[str, RetrievalMethod] = {
    "side4video": RetrievalMethod(
        side_network=True, trains="side network + side_proj + similarity head + temperature"
    ),
    "frozen-clip": RetrievalMethod(
        side_network=False, trains="similarity head + temperature on plain CLIP frames"
    ),
}


def get_preset(name: str) -> RetrievalPreset:
    """The preset called ``name``; a clear error listing the known ones otherwise."""
    return lookup(PRESETS, name, "preset")


def get_method(name: str) -> RetrievalMethod:
    """The method called ``name``; a clear error listing the known ones otherwise."""
    return lookup(METHODS, name, "method")
