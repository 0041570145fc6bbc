"""s4v_retrieval: text-video retrieval with the Side4Video side network.

The text tower glue (:mod:`s4v_retrieval.text`), similarity heads (:mod:`~s4v_retrieval.similarity`),
the gathered contrastive loss (:mod:`~s4v_retrieval.loss`), ranking metrics
(:mod:`~s4v_retrieval.metrics`) and the assembled model with its presets (:mod:`~s4v_retrieval.model`).
"""

from s4v_retrieval.loss import all_gather_with_grad, symmetric_infonce
from s4v_retrieval.metrics import dual_softmax_metrics, retrieval_metrics, retrieval_ranks
from s4v_retrieval.model import (
    METHODS,
    PRESETS,
    RetrievalModel,
    RetrievalPreset,
    build_model,
    get_preset,
    tokenizer_for,
)
from s4v_retrieval.similarity import SIMILARITIES, TextFeatures, VideoFeatures

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
    "dual_softmax_metrics",
    "get_preset",
    "retrieval_metrics",
    "retrieval_ranks",
    "symmetric_infonce",
    "tokenizer_for",
]
