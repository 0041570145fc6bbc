"""``s4v bench predict`` at test size: the measurements run and the agreement checks hold."""

from __future__ import annotations

import pytest

from s4v_orchestration.inference import bench


def test_throughput_and_search_latency_are_measured(one_thread):
    speed = bench.encode_throughput(
        preset="tiny", num_frames=8, clips=1, repeats=1, precision="fp32"
    )
    assert speed["s4v_clips_per_s"] > 0 and speed["plain_clips_per_s"] > 0
    search = bench.search_latency(preset="tiny", rows=300, queries=2, shortlist=50)
    assert search["rows"] == 300 and search["search_ms"] > 0 and search["width"] == 64


def test_predict_export_and_mlflow_model_agree_with_eval(
    recognition_checkpoint, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    path, _, _ = recognition_checkpoint
    agree = bench.recognition_agreement(path)
    assert agree["predict_top1"] == agree["eval_top1"] and agree["videos"] == 8
    assert agree["export_bit_identical"] and agree["pyfunc_same_answer"]


def test_index_search_reproduces_eval_retrieval_r1(retrieval_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, _, _ = retrieval_checkpoint
    agree = bench.retrieval_agreement(path)
    # The same captions ranked first (eval's percentage is computed in float32).
    assert agree["search_t2v_R1"] == pytest.approx(agree["eval_t2v_R1"], abs=1e-4)
    assert agree["videos"] == 8 and agree["captions"] == 24
