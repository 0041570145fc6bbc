"""``s4v export``: a trained model as ``model.safetensors``, ``config.json`` and a model card.

``model.safetensors`` holds what trained (the side network, head, BatchNorm statistics and any
buffer outside the frozen tower, exactly :meth:`TrainableModule.trainable_state_dict`);
``config.json`` everything exact loading needs (task, run config, backbone identity, class names,
preprocessing, the digest of a random tower) plus the run's metrics; ``README.md`` says what the
model is and how to load it. Reading an export back uses JSON and safetensors only, no pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from s4v_orchestration import __version__
from s4v_orchestration.inference.loading import (
    CONFIG_FILE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    WEIGHTS_FILE,
    LoadedModel,
    ModelLoadError,
    load_model,
)

CARD_FILE = "README.md"


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


def _test_metrics(source: Path) -> dict[str, float]:
    """The final test's metrics of the run a checkpoint came from (``eval/eval.json`` beside it)."""
    report = source.parent / "eval" / "eval.json"
    if not source.is_file() or not report.is_file():
        return {}
    try:
        metrics = json.loads(report.read_text()).get("metrics", {})
    except (OSError, json.JSONDecodeError):
        return {}
    return {f"test/{k}": v for k, v in metrics.items() if isinstance(v, int | float)}


def export_config(loaded: LoadedModel) -> dict[str, Any]:
    """The ``config.json`` of an export of ``loaded``."""
    info = dict(loaded.info)
    info["metrics"] = {**info.get("metrics", {}), **_test_metrics(loaded.source)}
    info.setdefault("exported_from", str(loaded.source))
    return _json_safe(
        {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "s4v_version": __version__,
            "task": loaded.task,
            "config": loaded.config.model_dump(mode="json"),
            "backbone": loaded.backbone,
            "frozen_sha256": loaded.frozen_sha256,
            "class_names": loaded.class_names,
            "preprocessing": loaded.preprocessing.to_json(),
            "info": info,
        }
    )


def _metric_lines(metrics: dict[str, Any]) -> list[str]:
    keys = sorted(k for k in metrics if k.startswith(("test/", "val/")))
    return [f"| `{k}` | {metrics[k]:.2f} |" for k in keys if isinstance(metrics[k], int | float)]


def model_card(meta: dict[str, Any]) -> str:
    """A Markdown model card: task, dataset, backbone, method, metrics and how to load it."""
    config, backbone, prep = meta["config"], meta["backbone"], meta["preprocessing"]
    task, model = meta["task"], config["model"]
    weights = backbone.get("pretrained") or f"random (seeded from the run's seed {config['seed']})"
    if backbone.get("sha256"):
        weights += f", sha256 {backbone['sha256']}"
    lines = [
        f"# s4v {task} model: {model['preset']} / {model['method']} on {config['data']['dataset']}",
        "",
        "Side4Video (arXiv 2311.15769): a side network beside a frozen CLIP ViT. Exported by "
        f"`s4v export` (s4v {meta['s4v_version']}).",
        "",
        "| | |",
        "|---|---|",
        f"| task | {task} |",
        f"| dataset | {config['data']['dataset']} |",
        f"| backbone | `{backbone['name']}`, weights: {weights} |",
        f"| method | `{model['method']}` (preset `{model['preset']}`) |",
        f"| input | {prep['num_frames']} frames of {prep['input_size']} px, "
        f"{prep['crops']}x{prep['clips']} views, sampling `{prep['sampling']}` |",
    ]
    if task == "recognition":
        names = meta["class_names"]
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        lines.append(f"| classes | {len(names)}: {shown} |")
    metric_rows = _metric_lines(meta["info"].get("metrics", {}))
    if metric_rows:
        lines += ["", "## Metrics of the run", "", "| metric | value |", "|---|---|", *metric_rows]
    run_id = meta["info"].get("mlflow_run_id")
    if run_id:
        lines += ["", f"Trained in MLflow run `{run_id}`."]
    lines += [
        "",
        "## Use it",
        "",
        "```python",
        "from s4v_orchestration.inference import "
        + ("load_recognizer" if task == "recognition" else "load_retriever"),
        "",
    ]
    if task == "recognition":
        lines += ['model = load_recognizer("THIS_FOLDER")', 'model.predict("video.mp4", k=5)']
    else:
        lines += [
            'model = load_retriever("THIS_FOLDER")',
            'model.search("a person opening a jar", ["a.mp4", "b.mp4"], k=1)',
        ]
    lines += [
        "```",
        "",
        "or `s4v predict THIS_FOLDER video.mp4` / `s4v index THIS_FOLDER videos/ --index idx`. "
        "Loading reads `config.json` and `model.safetensors` only (no pickle) and rebuilds the "
        "frozen backbone from its identity above; a random backbone must redraw to the digest in "
        "`config.json`.",
        "",
    ]
    return "\n".join(lines)


def write_export(loaded: LoadedModel, out_dir: str | Path) -> Path:
    """Write the export of an already loaded model to ``out_dir`` (created; files replaced)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelLoadError(f"{out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().cpu().contiguous().clone()
        for k, v in loaded.model.trainable_state_dict().items()
    }
    meta = export_config(loaded)
    files = {
        WEIGHTS_FILE: lambda path: save_file(state, path, metadata={"format": EXPORT_FORMAT}),
        CONFIG_FILE: lambda path: Path(path).write_text(json.dumps(meta, indent=2) + "\n"),
        CARD_FILE: lambda path: Path(path).write_text(model_card(meta)),
    }
    for name, write in files.items():
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out_dir)
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, out_dir / name)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return out_dir


def export_model(
    source: str | Path, out_dir: str | Path, *, weights: str | Path | None = None
) -> Path:
    """Rebuild the model of ``source`` exactly (:func:`load_model`) and export it to ``out_dir``."""
    return write_export(load_model(source, weights=weights), out_dir)
