"""The MLflow model of a run: an MLflow pyfunc over an s4v export, logged from code.

:func:`log_pyfunc` writes the export of a checkpoint (:mod:`~s4v_orchestration.inference.export`)
as the model's artifacts and logs :class:`S4VPyfunc` *from code* (``python_model`` is the path of
:mod:`~s4v_orchestration.inference.mlflow_code`, so no object is pickled), with a signature, as
a LoggedModel of the run (MLflow 3; it shows under the run's "Logged models"). Then

    mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(pd.DataFrame({"path": [...]}))

returns per video the top-k labels and probabilities (recognition, ``params={"k": 5}``) or the
normalised video embedding (retrieval). The loaded model needs s4v installed where it runs.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch.nn.functional as F
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

from s4v_orchestration.inference.api import Recognizer, Retriever
from s4v_orchestration.inference.export import write_export
from s4v_orchestration.inference.loading import ModelLoadError, load_model

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the name under the run: runs:/<run_id>/model
CODE_FILE = Path(__file__).with_name("mlflow_code.py")
EXPORT_ARTIFACT = "export"


class S4VPyfunc(PythonModel):
    """Video paths in, top-k labels (recognition) or embeddings (retrieval) out."""

    def load_context(self, context: Any) -> None:
        loaded = load_model(context.artifacts[EXPORT_ARTIFACT])
        self.model = Recognizer(loaded) if loaded.task == "recognition" else Retriever(loaded)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        column = model_input["path"] if isinstance(model_input, pd.DataFrame) else model_input
        paths = []
        for value in column:  # a dict input {"path": [...]} arrives as one row holding the list
            paths += [str(p) for p in value] if isinstance(value, list | tuple) else [str(value)]
        if isinstance(self.model, Recognizer):
            k = int((params or {}).get("k", 5))
            rows = []
            for result in self.model.predict_files(paths, k=k):
                top = result.top_k[0] if result.error is None else []
                rows.append(
                    {
                        "path": result.source,
                        "labels": [label for label, _ in top],
                        "probabilities": [p for _, p in top],
                        "error": result.error or "",
                    }
                )
            return pd.DataFrame(rows, columns=["path", "labels", "probabilities", "error"])
        rows = []
        for result in self.model.embed_videos(paths):
            if result.error is None:
                embedding = F.normalize(result.embeddings[0].mean(dim=0), dim=-1).tolist()
            else:
                embedding = []
            rows.append(
                {"path": result.source, "embedding": embedding, "error": result.error or ""}
            )
        return pd.DataFrame(rows, columns=["path", "embedding", "error"])


def signature(task: str) -> ModelSignature:
    """Input: a ``path`` column of video files or frame folders; output per task."""
    inputs = Schema([ColSpec("string", "path")])
    if task == "recognition":
        outputs = Schema(
            [
                ColSpec("string", "path"),
                ColSpec(Array("string"), "labels"),
                ColSpec(Array("double"), "probabilities"),
                ColSpec("string", "error"),
            ]
        )
        return ModelSignature(inputs, outputs, ParamSchema([ParamSpec("k", "long", 5)]))
    outputs = Schema(
        [
            ColSpec("string", "path"),
            ColSpec(Array("double"), "embedding"),
            ColSpec("string", "error"),
        ]
    )
    return ModelSignature(inputs, outputs)


def _requirements() -> list[str]:
    out = []
    for dist in (
        "torch",
        "torchvision",
        "open_clip_torch",
        "safetensors",
        "decord",
        "mlflow",
        "pandas",
    ):
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return out


@contextmanager
def tracking_uri_set_to(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to ``uri`` for the body, then restored.

    ``mlflow.set_tracking_uri`` also writes ``$MLFLOW_TRACKING_URI``; restoring an unset URI
    unsets it again, so the process (and s4v's own default store) is left as it was.
    """
    previous = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def log_pyfunc(checkpoint: str | Path, *, run_id: str, tracking_uri: str) -> ModelInfo:
    """Log the model of ``checkpoint`` as the MLflow model ``model`` of run ``run_id``."""
    loaded = load_model(checkpoint)
    run = mlflow.MlflowClient(tracking_uri).get_run(run_id)
    with (
        tempfile.TemporaryDirectory(prefix="s4v-export-") as tmp,
        tracking_uri_set_to(tracking_uri),
    ):
        export_dir = write_export(loaded, Path(tmp) / EXPORT_ARTIFACT)
        # Created in the run's experiment (not the process's active one), so that
        # runs:/<run_id>/model finds it.
        logged = mlflow.initialize_logged_model(
            name=MODEL_NAME,
            source_run_id=run_id,
            experiment_id=run.info.experiment_id,
            params=dict(run.data.params),
            tags={"s4v.task": loaded.task, "s4v.preset": loaded.config.model.preset},
        )
        # No input example: a video path would be predicted at logging time (slow, and the file
        # may be gone); the signature states the input.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*An input example was not provided")
            return Model.log(
                artifact_path=None,
                name=MODEL_NAME,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                model_id=logged.model_id,
                python_model=str(CODE_FILE),
                artifacts={EXPORT_ARTIFACT: str(export_dir)},
                signature=signature(loaded.task),
                pip_requirements=_requirements(),
            )


def run_model_ids(run_id: str, *, tracking_uri: str) -> list[str]:
    """The ids of the models run ``run_id`` logged (its "Logged models"), oldest first."""
    outputs = mlflow.MlflowClient(tracking_uri).get_run(run_id).outputs
    return [o.model_id for o in (outputs.model_outputs if outputs else [])]


def ensure_run_model(run_id: str, checkpoint: str | Path | None, *, tracking_uri: str) -> None:
    """Log ``checkpoint`` as run ``run_id``'s model unless the run has logged one (a trial that a
    scheduler stopped early never reached the end of training, where runs log their model)."""
    if run_model_ids(run_id, tracking_uri=tracking_uri):
        return
    if checkpoint is None:
        raise ModelLoadError(f"MLflow run {run_id} has no model and no checkpoint to log one from")
    log_pyfunc(checkpoint, run_id=run_id, tracking_uri=tracking_uri)


def register_run_model(
    run_id: str, name: str, *, tracking_uri: str, alias: str | None = "best"
) -> Any:
    """Register the model logged by run ``run_id`` as a new version of ``name``; ``alias`` on it."""
    client = mlflow.MlflowClient(tracking_uri)
    model_ids = run_model_ids(run_id, tracking_uri=tracking_uri)
    if not model_ids:
        raise ModelLoadError(f"MLflow run {run_id} has no logged model to register")
    with tracking_uri_set_to(tracking_uri):
        model_version = mlflow.register_model(f"models:/{model_ids[-1]}", name)
    if alias:
        client.set_registered_model_alias(name, alias, model_version.version)
    return model_version
