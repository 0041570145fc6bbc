"""``s4v bench predict``: clip-encoding throughput against a plain open_clip loop, search latency
over a large index, and (given trained checkpoints) that predict/search/export/MLflow reproduce
``s4v eval``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()

THROUGHPUT_TARGET = 2.0  # s4v's clips/s at least 2x the plain open_clip loop's
SEARCH_TARGET_MS = 50.0  # per query over 100,000 indexed embeddings


def predict(
    preset: Annotated[
        str, typer.Option(help="Recognition preset whose backbone is timed.")
    ] = "side4video-b16",
    frames: Annotated[int, typer.Option(min=1, help="Frames per clip.")] = 8,
    clips: Annotated[int, typer.Option(min=1, help="Clips per timed forward pass.")] = 2,
    repeats: Annotated[int, typer.Option(min=1, help="Timed passes (the median is shown).")] = 2,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where the CPU supports it, else fp32), fp32 or bf16.")
    ] = "auto",
    index_rows: Annotated[
        int, typer.Option(min=1, help="Embeddings in the searched index.")
    ] = 100_000,
    retrieval_preset: Annotated[
        str, typer.Option(help="Retrieval preset whose widths and heads the search uses.")
    ] = "side4video-b16",
    queries: Annotated[int, typer.Option(min=1, help="Timed queries.")] = 20,
    shortlist: Annotated[
        int, typer.Option(min=1, help="Entries the similarity head scores.")
    ] = 1000,
    recognition: Annotated[
        Path | None,
        typer.Option(help="A trained recognition checkpoint: check predict against s4v eval."),
    ] = None,
    retrieval: Annotated[
        Path | None,
        typer.Option(help="A trained retrieval checkpoint: check index+search against s4v eval."),
    ] = None,
    skip_speed: Annotated[
        bool, typer.Option("--skip-speed", help="Only the checks against s4v eval.")
    ] = False,
    output: Annotated[
        Path | None, typer.Option(help="Also write the results as JSON here.")
    ] = None,
) -> None:
    """Throughput of s4v's clip encoding against a plain open_clip encode_image loop over the same
    frames (random weights), search latency over a large index, and agreement with s4v eval."""
    from s4v_orchestration.inference import bench

    report: dict = {}
    if not skip_speed:
        if precision == "auto":
            precision = "bf16" if bench.bf16_supported() else "fp32"
        speed = bench.encode_throughput(
            preset=preset, num_frames=frames, clips=clips, repeats=repeats, precision=precision
        )
        report["throughput"] = speed
        met = "met" if speed["ratio"] >= THROUGHPUT_TARGET else "NOT met"
        console.print(
            f"encode {speed['backbone']} {frames}x{speed['size']}px {precision}, "
            f"{speed['threads']} threads: s4v {speed['s4v_clips_per_s']:.3f} clips/s, plain "
            f"open_clip loop {speed['plain_clips_per_s']:.3f} clips/s: {speed['ratio']:.2f}x "
            f"(target >= {THROUGHPUT_TARGET:g}x: {met})",
            highlight=False,
        )
        search = bench.search_latency(
            preset=retrieval_preset, rows=index_rows, queries=queries, shortlist=shortlist
        )
        report["search"] = search
        met = "met" if search["search_ms"] <= SEARCH_TARGET_MS else "NOT met"
        console.print(
            f"search {search['rows']:,} entries ({search['frames']} frames x {search['width']}, "
            f"{search['similarity']} head on the best {search['shortlist']}): "
            f"{search['search_ms']:.1f} ms/query (target <= {SEARCH_TARGET_MS:g}: {met}); "
            f"encoding the caption {search['text_ms']:.1f} ms",
            highlight=False,
        )
    if recognition is not None:
        agree = bench.recognition_agreement(recognition)
        report["recognition"] = agree
        console.print(
            f"recognition {agree['videos']} videos: s4v eval top-1 {agree['eval_top1']:.2f} %, "
            f"s4v predict top-1 {agree['predict_top1']:.2f} %; export bit-identical: "
            f"{agree['export_bit_identical']}; MLflow model same answer: "
            f"{agree['pyfunc_same_answer']}",
            highlight=False,
        )
    if retrieval is not None:
        agree = bench.retrieval_agreement(retrieval)
        report["retrieval"] = agree
        console.print(
            f"retrieval {agree['videos']} videos, {agree['captions']} captions: s4v eval t2v "
            f"R@1 {agree['eval_t2v_R1']:.2f} %, index+search t2v R@1 {agree['search_t2v_R1']:.2f} %",
            highlight=False,
        )
    if output is not None:
        output.write_text(json.dumps(report, indent=2))
