"""What ``s4v bench predict`` measures: encoding throughput, search latency, and that predicting,
searching, exporting and the MLflow model reproduce what ``s4v eval`` reports.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from s4v_core.backbone import create_clip
from s4v_data import read_list
from s4v_data.specs import RETRIEVAL_LAYOUTS
from s4v_orchestration.evaluate import evaluate_checkpoint
from s4v_orchestration.inference.api import Recognizer, Retriever
from s4v_orchestration.inference.export import write_export
from s4v_orchestration.inference.index import (
    EMBEDDINGS,
    FRAME_WEIGHTS,
    FRAMES,
    INDEX_FORMAT,
    INDEX_VERSION,
    MANIFEST,
    VideoIndex,
    build_index,
)
from s4v_orchestration.inference.loading import LoadedModel, load_model
from s4v_orchestration.inference.media import Preprocessing, read_clips
from s4v_orchestration.inference.pyfunc import log_pyfunc, tracking_uri_set_to
from s4v_orchestration.overrides import load_run_config
from s4v_orchestration.tasks.recognition import recognition_data_files
from s4v_orchestration.tasks.retrieval import VAL_SPLIT, build_retrieval_model
from s4v_recognition import build_model


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AVX512-BF16 / AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _autocast(precision: str) -> Any:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def encode_throughput(
    *, preset: str, num_frames: int, clips: int, repeats: int, precision: str
) -> dict[str, Any]:
    """clips/s of s4v's clip encoding (the whole model: frozen ViT + side network + head) against
    a plain open_clip ``encode_image`` loop over the same frames, in the same precision."""
    model = build_model(preset, 174, num_frames=num_frames, pretrained=None).eval()
    size = model.preset.image_size
    clip, _ = create_clip(model.preset.backbone, None)
    clip.eval()
    frames = torch.randn(
        clips, num_frames, 3, size, size, generator=torch.Generator().manual_seed(0)
    )

    def s4v() -> None:
        with _autocast(precision):
            model(frames)

    def plain() -> None:
        with _autocast(precision):
            for video in frames:
                for frame in video:
                    clip.encode_image(frame[None])

    s4v_s, plain_s = _timed(s4v, repeats), _timed(plain, repeats)
    return {
        "preset": preset,
        "backbone": model.preset.backbone,
        "frames": num_frames,
        "size": size,
        "clips": clips,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "s4v_clips_per_s": clips / s4v_s,
        "plain_clips_per_s": clips / plain_s,
        "ratio": plain_s / s4v_s,
    }


def _synthetic_index(folder: Path, rows: int, num_frames: int, width: int) -> None:
    """An index of ``rows`` random per-frame embeddings, written in chunks (memory-mapped)."""
    rng = np.random.default_rng(0)
    frames = np.lib.format.open_memmap(folder / FRAMES, "w+", np.float32, (rows, num_frames, width))
    embeddings = np.lib.format.open_memmap(folder / EMBEDDINGS, "w+", np.float32, (rows, width))
    for start in range(0, rows, 10_000):
        block = rng.standard_normal((min(10_000, rows - start), num_frames, width), np.float32)
        frames[start : start + len(block)] = block
        mean = torch.from_numpy(block).mean(dim=1)
        embeddings[start : start + len(block)] = F.normalize(mean, dim=-1).numpy()
    # Frame weights as a wti index stores them (their values do not change the search's cost).
    logits = torch.from_numpy(rng.standard_normal((rows, num_frames), np.float32))
    np.save(folder / FRAME_WEIGHTS, logits.softmax(dim=-1).numpy())
    frames.flush()
    embeddings.flush()
    del frames, embeddings
    files = [
        {
            "path": f"video_{i:06d}.mp4",
            "size": 0,
            "mtime_ns": 0,
            "rows": [i, i + 1],
            "segments": [[0.0, 1.0]],
        }
        for i in range(rows)
    ]
    manifest = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "rows": rows, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest))


@torch.no_grad()
def search_latency(*, preset: str, rows: int, queries: int, shortlist: int) -> dict[str, Any]:
    """ms per query over ``rows`` indexed embeddings: the index part (first pass, the model's head
    on the shortlist, per-file ranking) and the caption's text encoding, separately."""
    config = load_run_config(
        "retrieval", "synthetic", overrides=[f"model.preset={preset}", "tracking.enabled=false"]
    ).with_defaults()
    model = build_retrieval_model(config).eval()
    loaded = LoadedModel(
        task="retrieval",
        model=model,
        config=config,
        preprocessing=Preprocessing.from_config(config),
        backbone=model.backbone_identity,
        source=Path("<random weights>"),
    )
    retriever = Retriever(loaded)
    captions = [f"a person doing thing number {i} in a room" for i in range(queries)]
    with tempfile.TemporaryDirectory(prefix="s4v-bench-index-") as tmp:
        _synthetic_index(Path(tmp), rows, model.num_frames, model.video.embed_dim)
        index = VideoIndex(tmp, retriever)
        texts = [retriever.embed_texts([c]) for c in captions[:2]]  # warm-up
        index.search_text(texts[0], 10, shortlist=shortlist)
        text_times, search_times = [], []
        for caption in captions:
            start = time.perf_counter()
            text = retriever.embed_texts([caption])
            text_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            index.search_text(text, 10, shortlist=shortlist)
            search_times.append(time.perf_counter() - start)
        del index
    return {
        "preset": preset,
        "rows": rows,
        "frames": model.num_frames,
        "width": model.video.embed_dim,
        "similarity": model.preset.similarity,
        "shortlist": shortlist,
        "search_ms": 1000 * statistics.median(search_times),
        "text_ms": 1000 * statistics.median(text_times),
    }


def recognition_agreement(checkpoint: Path) -> dict[str, Any]:
    """``s4v eval`` top-1 against ``predict`` over the same test videos and views; export and
    MLflow-model round trips of the same checkpoint."""
    result = evaluate_checkpoint(checkpoint, overrides=["tracking.enabled=false"])
    eval_top1 = result.evaluation.metrics["top1"]
    loaded = load_model(checkpoint)
    files = recognition_data_files(loaded.config)
    records = read_list(files.test_list)
    folders = [files.root / r.path for r in records]
    recognizer = Recognizer(loaded)
    predictions = list(recognizer.predict_files(folders, k=1, batch_size=16))
    names = loaded.class_names
    hits = [p.top_k[0][0][0] == names[r.label] for p, r in zip(predictions, records, strict=True)]
    out = {"eval_top1": eval_top1, "predict_top1": 100 * sum(hits) / len(hits), "videos": len(hits)}
    with tempfile.TemporaryDirectory(prefix="s4v-bench-export-") as tmp:
        exported = load_model(write_export(loaded, Path(tmp) / "export"))
        views = recognizer.preprocessing
        clips = torch.stack([_views(views, f) for f in folders[:8]]).flatten(0, 1)
        with torch.no_grad():
            out["export_bit_identical"] = bool(
                torch.equal(loaded.model(clips), exported.model(clips))
            )
    out["pyfunc_same_answer"] = _pyfunc_agrees(checkpoint, folders[:8], recognizer)
    return out


def _views(prep: Preprocessing, folder: Path) -> torch.Tensor:
    return read_clips(folder, prep).views[0]


def _pyfunc_agrees(checkpoint: Path, folders: list[Path], recognizer: Recognizer) -> bool:
    with tempfile.TemporaryDirectory(prefix="s4v-bench-mlflow-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        client = mlflow.MlflowClient(uri)
        experiment = client.create_experiment("bench", artifact_location=f"{tmp}/artifacts")
        run = client.create_run(experiment)
        log_pyfunc(checkpoint, run_id=run.info.run_id, tracking_uri=uri)
        with tracking_uri_set_to(uri):
            model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
            answer = model.predict(
                pd.DataFrame({"path": [str(f) for f in folders]}), params={"k": 5}
            )
    for row, folder in zip(answer.itertuples(), folders, strict=True):
        expected = recognizer.predict(folder, k=5)
        if list(row.labels) != [label for label, _ in expected]:
            return False
        if not np.allclose(list(row.probabilities), [p for _, p in expected], atol=1e-6):
            return False
    return True


def retrieval_agreement(checkpoint: Path) -> dict[str, Any]:
    """``s4v eval retrieval``'s text-to-video R@1 against ``index`` + ``search`` of the same test
    videos queried with their captions (ranks counted the same pessimistic way)."""
    result = evaluate_checkpoint(checkpoint, overrides=["tracking.enabled=false"])
    eval_r1 = result.evaluation.metrics["t2v/R1"]
    loaded = load_model(checkpoint)
    config = loaded.config
    layout = RETRIEVAL_LAYOUTS[config.data.dataset]
    annotations = layout.read(Path(config.data.root), VAL_SPLIT)
    media = Path(config.retrieval.media_root or config.data.root)
    folders = [
        media / layout.frame_dir.format(split=VAL_SPLIT, video_id=v) for v in annotations.video_ids
    ]
    retriever = Retriever(loaded)
    with tempfile.TemporaryDirectory(prefix="s4v-bench-rt-") as tmp:
        videos = Path(tmp) / "videos"
        videos.mkdir()
        for number, folder in enumerate(folders):  # the index keeps files in name order
            (videos / f"{number:06d}").symlink_to(folder.resolve())
        build_index(retriever, checkpoint, videos, Path(tmp) / "index")
        index = VideoIndex(Path(tmp) / "index", retriever)
        order = [int(Path(p).name) for p in index.paths]
        captions = [caption for _, caption in annotations.pairs()]
        text = retriever.embed_texts(captions)
        scores, _ = index.file_scores(index.scores_for(text, shortlist=len(order)))
        del index
    by_video = scores[:, torch.tensor(order).argsort()]  # columns in annotation order
    truth = torch.tensor(annotations.text_to_video())
    true_scores = by_video.gather(1, truth[:, None])
    ranks = (by_video >= true_scores).sum(dim=1) - 1
    return {
        "eval_t2v_R1": eval_r1,
        "search_t2v_R1": 100 * float((ranks == 0).float().mean()),
        "captions": len(captions),
        "videos": len(folders),
    }
