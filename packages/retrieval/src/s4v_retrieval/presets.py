"""The retrieval registry: named model presets and methods.

Presets mirror the reference's retrieval scripts (github.com/HJYao00/Side4Video @ 5d72352,
``Retrieval/script_train``, spec section 4). A new backbone size is one :data:`PRESETS` entry; a
new method is one :data:`METHODS` entry saying how the video tower is built.
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
    # spec 4.3) or None for every layer.
    side_layers: tuple[int, ...] | Literal["odd"] | None = None
    similarity: str = "wti"  # "wti" (reference scripts) or "meanP"
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
    # The EVA path at test size: side blocks after the odd layers of the 4-layer s4v-tiny-eva.
    "tiny-eva": RetrievalPreset(
        backbone="s4v-tiny-eva",
        pretrained=None,
        num_frames=8,
        max_words=16,
        side_dim=64,
        image_size=32,
        head_dim=32,
        side_layers="odd",
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
