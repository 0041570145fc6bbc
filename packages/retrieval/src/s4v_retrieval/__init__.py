"""s4v_retrieval: text-video retrieval with the Side4Video side network.

The text tower glue (:mod:`s4v_retrieval.text`), similarity heads (:mod:`~s4v_retrieval.similarity`),
the gathered contrastive loss (:mod:`~s4v_retrieval.loss`), ranking metrics
(:mod:`~s4v_retrieval.metrics`) and the assembled model with its presets (:mod:`~s4v_retrieval.model`).

Names are imported on first use (PEP 562), so that the loss and the metrics load without open_clip.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from s4v_retrieval.loss import all_gather_with_grad, symmetric_infonce
    from s4v_retrieval.metrics import dual_softmax_metrics, retrieval_metrics, retrieval_ranks
    from s4v_retrieval.model import RetrievalModel, build_model, count_parameters, tokenizer_for
    from s4v_retrieval.presets import METHODS, PRESETS, RetrievalPreset, get_preset
    from s4v_retrieval.similarity import SIMILARITIES, TextFeatures, VideoFeatures

# where each public name lives (imported on first access)
_WHERE = {
    "all_gather_with_grad": "loss",
    "symmetric_infonce": "loss",
    "dual_softmax_metrics": "metrics",
    "retrieval_metrics": "metrics",
    "retrieval_ranks": "metrics",
    "METHODS": "presets",
    "PRESETS": "presets",
    "RetrievalModel": "model",
    "RetrievalPreset": "presets",
    "build_model": "model",
    "count_parameters": "model",
    "get_preset": "presets",
    "tokenizer_for": "model",
    "SIMILARITIES": "similarity",
    "TextFeatures": "similarity",
    "VideoFeatures": "similarity",
}

__all__ = [
    "METHODS",
    "PRESETS",
    "SIMILARITIES",
    "RetrievalModel",
    "RetrievalPreset",
    "TextFeatures",
    "VideoFeatures",
    "all_gather_with_grad",
    "build_model",
    "count_parameters",
    "dual_softmax_metrics",
    "get_preset",
    "retrieval_metrics",
    "retrieval_ranks",
    "symmetric_infonce",
    "tokenizer_for",
]


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 's4v_retrieval' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"s4v_retrieval.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
