"""``s4v index`` / ``s4v search``: incremental re-indexing and ranked search."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
from typer.testing import CliRunner

from s4v_orchestration.cli import app
from s4v_orchestration.inference import load_retriever
from s4v_orchestration.inference.index import VideoIndex, build_index

runner = CliRunner()


def test_reindexing_encodes_only_changed_files_and_drops_deleted_ones(
    retrieval_checkpoint, captioned_root, tmp_path, one_thread
):
    path, _, _ = retrieval_checkpoint
    source = sorted((captioned_root / "rawframes").iterdir())
    videos = tmp_path / "videos"
    for folder in source[:3]:
        shutil.copytree(folder, videos / folder.name)
    index_dir = tmp_path / "index"
    result = runner.invoke(
        app,
        [
            "index",
            str(path),
            str(videos),
            "--index",
            str(index_dir),
            "--workers",
            "1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "3 encoded, 0 unchanged, 0 removed" in result.output
    before = VideoIndex(index_dir)
    kept_path = str(videos / source[0].name)
    kept_rows = np.array(before.frames[before.paths.index(kept_path)])

    retriever = load_retriever(path)
    again = build_index(retriever, path, videos, index_dir)
    assert again.encoded == [] and len(again.kept) == 3

    changed = videos / source[1].name  # now holds another video's frames
    shutil.rmtree(changed)
    shutil.copytree(source[5], changed)
    os.utime(changed, ns=(10**18, 10**18))
    shutil.rmtree(videos / source[2].name)
    update = build_index(retriever, path, videos, index_dir)
    assert update.encoded == [str(changed)]
    assert update.kept == [kept_path]
    assert update.removed == [str(videos / source[2].name)]

    after = VideoIndex(index_dir)
    assert after.paths == [kept_path, str(changed)]
    assert np.array_equal(np.array(after.frames[0]), kept_rows)  # not re-encoded
    fresh = retriever.embed_video(source[5]).numpy()
    assert np.allclose(np.array(after.frames[1]), fresh, atol=1e-6)

    result = runner.invoke(
        app, ["search", str(index_dir), "a red square", "-k", "5", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert sorted(h["path"] for h in hits) == sorted(after.paths)
    assert hits[0]["score"] >= hits[1]["score"]
    scores = retriever.scores(retriever.embed_texts(["a red square"]), after.frames[:])[0]
    assert [h["score"] for h in hits] == sorted(scores.tolist(), reverse=True)


def test_search_without_an_index_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["search", str(tmp_path), "anything"])
    assert result.exit_code == 2 and "no index here" in result.output


def test_a_shortlist_scores_only_the_first_pass_best(
    retrieval_checkpoint, captioned_root, tmp_path
):
    path, _, _ = retrieval_checkpoint
    retriever = load_retriever(path)
    for folder in sorted((captioned_root / "rawframes").iterdir())[::5]:
        shutil.copytree(folder, tmp_path / "videos" / folder.name)
    build_index(retriever, path, tmp_path / "videos", tmp_path / "index")
    index = VideoIndex(tmp_path / "index", retriever)
    assert len(index) == 8
    full = index.search("a blue circle", k=8)
    assert len(full) == 8
    short = index.search("a blue circle", k=8, shortlist=5)
    assert len(short) == 5
    assert {h.path for h in short} <= {h.path for h in full}
