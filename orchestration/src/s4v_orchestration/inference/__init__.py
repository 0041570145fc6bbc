"""Using a trained model: exact loading, the Python API, export, video search, the MLflow model.

    from s4v_orchestration.inference import load_recognizer, load_retriever

    recognizer = load_recognizer("runs/recognition-synthetic-tiny-side4video/best.pt")
    recognizer.predict("video.mp4", k=5)          # [(label, probability), ...]

    retriever = load_retriever("runs/retrieval-synthetic-tiny-side4video/best.pt")
    retriever.search("a red square moves left", ["a.mp4", "b.mp4"], k=1)

Every entry point (``s4v predict``, ``s4v index``/``search``, ``s4v export``, the MLflow pyfunc
model) goes through :func:`load_model`, which rebuilds the trained model exactly or refuses.
"""

from s4v_orchestration.inference.api import (
    Recognizer,
    Result,
    Retriever,
    load_recognizer,
    load_retriever,
)
from s4v_orchestration.inference.loading import LoadedModel, ModelLoadError, load_model
from s4v_orchestration.inference.media import Preprocessing, Segment

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "Preprocessing",
    "Recognizer",
    "Result",
    "Retriever",
    "Segment",
    "load_model",
    "load_recognizer",
    "load_retriever",
]
