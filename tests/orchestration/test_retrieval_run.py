"""`s4v run retrieval` / `s4v eval retrieval`: real CLI, real SQLite MLflow store, resume, DDP."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from s4v_core.checkpoint import load_checkpoint, save_checkpoint
from s4v_orchestration.cli import app
from s4v_orchestration.config import ConfigError
from s4v_orchestration.overrides import load_run_config
from s4v_orchestration.recipes import DATASET_PRESETS
from s4v_orchestration.runtime import DistEnv
from s4v_orchestration.tasks import RunContext
from s4v_orchestration.tasks.retrieval import RetrievalTask
from s4v_orchestration.train import train

runner = CliRunner()


@pytest.fixture(scope="module")
def captioned_root(tmp_path_factory) -> Path:
    """8 classes x 5 videos (4 train, 1 val) of 16 frames at 32 px, three captions each."""
    from s4v_data.synthetic import generate

    root = tmp_path_factory.mktemp("captioned") / "data"
    generate(root, seed=0, videos_per_class=5, num_frames=16, size=32, captions=True)
    return root


@pytest.fixture
def sets(captioned_root: Path, tmp_path: Path):
    """``sets(out_name, **fields)`` -> ``--set`` items of a fast tiny retrieval run."""

    def make(out_name: str = "run", **extra: object) -> list[str]:
        values = {
            "data.root": captioned_root,
            "data.synthetic.videos_per_class": 5,
            "data.synthetic.size": 32,
            "output_dir": tmp_path / out_name,
            "data.batch_size": 4,
            "data.num_workers": 0,
            "data.num_frames": 4,
            "cpu_threads": 1,
            "solver.epochs": 2,
            "solver.warmup_epochs": 1,
            "tracking.enabled": False,
            "tracking.system_metrics": False,
            **extra,
        }
        return [f"{key}={value}" for key, value in values.items()]

    return make


def _invoke(args: list[str]):
    return runner.invoke(app, args, terminal_width=200, catch_exceptions=False)


def _flag_sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_two_step_cli_run_logs_ranking_metrics_to_mlflow_and_evaluates(
    sets, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a SQLite store keeps its artifacts in the working directory
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    items = sets("cli", **{"tracking.enabled": True, "solver.max_steps": 2})
    result = _invoke(
        ["run", "retrieval", "--dataset", "synthetic", "--tracking-uri", store, *_flag_sets(items)]
    )
    assert result.exit_code == 0, result.output
    assert "best val t2v R@1" in result.output and "text->video R@1/5/10" in result.output

    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("retrieval-synthetic").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["s4v.task"] == "retrieval"
    assert run.data.params["retrieval.similarity"] == "null"  # the preset's (wti)
    for direction in ("t2v", "v2t"):
        for name in ("R1", "R5", "R10", "MdR", "MnR"):
            assert f"val/{direction}/{name}" in run.data.metrics
            assert f"test/{direction}/{name}" in run.data.metrics
    assert not any(key.startswith(("val/dsl", "test/dsl")) for key in run.data.metrics)
    eval_files = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert eval_files == {"eval/eval.json", "eval/t2v_ranks.csv", "eval/v2t_ranks.csv"}

    best = tmp_path / "cli" / "best.pt"
    result = _invoke(
        ["eval", "retrieval", "--checkpoint", str(best), "--dual-softmax", "--tracking-uri", store]
    )
    assert result.exit_code == 0, result.output
    assert "dual-softmax text->video" in result.output
    report = tmp_path / "cli" / "eval-best"
    summary = json.loads((report / "eval.json").read_text())
    assert (summary["num_videos"], summary["num_captions"]) == (8, 24)
    assert "dsl/t2v/R1" in summary["metrics"]
    # The random CLIP weights are rebuilt from the seed: the evaluation of best.pt reproduces
    # the run's own final test exactly.
    for key in ("t2v/R1", "t2v/MnR", "v2t/R5", "v2t/MdR"):
        assert summary["metrics"][key] == run.data.metrics[f"test/{key}"], key
    with (report / "t2v_ranks.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and all(1 <= int(r["rank"]) <= 8 for r in rows)
    [evaluation] = [
        r
        for r in client.search_runs([run.info.experiment_id])
        if r.data.tags.get("s4v.kind") == "evaluation"
    ]
    assert "test/dsl/t2v/R1" in evaluation.data.metrics


def test_recognition_checkpoint_is_refused_by_eval_retrieval(tmp_path) -> None:
    path = tmp_path / "rec.pt"
    save_checkpoint(path, {"task": "recognition", "backbone": {}, "model": {}, "config": {}})
    result = _invoke(["eval", "retrieval", "--checkpoint", str(path), "--no-tracking"])
    assert result.exit_code == 2
    assert "s4v eval recognition" in result.output


def test_kill_and_resume_reproduces_the_uninterrupted_retrieval_run(sets) -> None:
    full = train(load_run_config("retrieval", "synthetic", overrides=sets("full")))

    def stop_after_first_epoch(epoch, metrics, checkpoint, run_id):
        if epoch == 1:
            raise KeyboardInterrupt

    killed = load_run_config("retrieval", "synthetic", overrides=sets("killed"))
    with pytest.raises(KeyboardInterrupt):
        train(killed, on_epoch_end=stop_after_first_epoch)
    last = killed.with_defaults().output_dir / "last.pt"
    resumed = train(killed.model_copy(update={"resume": last}))
    timings = ("epoch/time_s", "epoch/peak_mem_mb", "train/epoch_clips_per_s")
    assert {k: v for k, v in resumed.items() if k not in timings} == {
        k: v for k, v in full.items() if k not in timings
    }
    full_weights = load_checkpoint(full_config_dir(sets, "full") / "last.pt")["model"]
    for key, value in load_checkpoint(last)["model"].items():
        assert torch.equal(value, full_weights[key]), key


def full_config_dir(sets, name: str) -> Path:
    return (
        load_run_config("retrieval", "synthetic", overrides=sets(name)).with_defaults().output_dir
    )


def test_a_trained_text_tower_gets_its_own_learning_rate(sets) -> None:
    config = load_run_config(
        "retrieval",
        "synthetic",
        overrides=sets("groups", **{"solver.lr": 1e-3, "retrieval.text_lr_scale": 0.01}),
    )
    task = RetrievalTask()
    parts = task.build(config)
    groups = task.parameter_groups(parts.model, config)
    assert [g["lr"] for g in groups] == [1e-3, 1e-5]
    text = {id(p) for p in parts.model.text.parameters()}
    assert {id(p) for p in groups[1]["params"]} == text
    assert not text & {id(p) for p in groups[0]["params"]}


def test_the_loss_leaves_the_model_alone_and_the_step_hook_clamps_the_temperature(sets) -> None:
    config = load_run_config("retrieval", "synthetic", overrides=sets("clamp")).with_defaults()
    task = RetrievalTask()
    parts = task.build(config)
    run = RunContext(config=config, parts=parts, device=torch.device("cpu"), env=DistEnv())
    scale = parts.model.logit_scale.log_scale
    with torch.no_grad():
        scale.fill_(10.0)  # past CLIP's cap of ln 100, as an optimizer step may leave it
    batch = next(iter(task.train_loader(run, epoch=0)))
    loss, clips = task.loss(parts.model, batch, run)
    assert clips == config.data.batch_size and loss.isfinite()
    assert scale.item() == 10.0  # a forward changes no parameter
    task.after_optimizer_step(parts.model)
    assert scale.item() == pytest.approx(math.log(100))
    assert vars(task) == {}  # the task kept nothing of this run


@pytest.mark.parametrize("dataset", sorted(DATASET_PRESETS["retrieval"]))
def test_every_retrieval_preset_validates(dataset: str) -> None:
    config = load_run_config("retrieval", dataset)
    assert config.task == "retrieval" and config.data.dataset == dataset


def test_retrieval_presets_carry_the_reference_recipe() -> None:
    msrvtt = load_run_config("retrieval", "msrvtt")
    assert (msrvtt.data.num_frames, msrvtt.retrieval.max_words) == (12, 32)
    assert (msrvtt.solver.epochs, msrvtt.solver.lr, msrvtt.solver.weight_decay) == (5, 1e-4, 0.2)
    assert msrvtt.solver.betas == (0.9, 0.98) and msrvtt.solver.clip_grad_norm == 1.0
    assert msrvtt.model.preset == "side4video-b16"
    assert load_run_config("retrieval", "msvd").model.preset == "side4video-b32"
    assert not msrvtt.retrieval.train_text
    root = load_run_config("retrieval", "synthetic").with_defaults().data.root
    assert root.name == "synthetic-captioned-60v-16f-32px-seed0"  # not the recognition set's


def test_a_model_preset_of_the_other_task_is_refused_with_its_field() -> None:
    with pytest.raises(
        ConfigError, match=r"model\.preset: .*unknown retrieval model preset 'side4video-b16-light'"
    ):
        load_run_config("retrieval", "synthetic", overrides=["model.preset=side4video-b16-light"])
    with pytest.raises(ConfigError, match=r"model\.method"):
        load_run_config("recognition", "synthetic", overrides=["model.method=frozen-clip"])
    with pytest.raises(ConfigError, match=r"retrieval\.captions"):
        load_run_config("retrieval", "synthetic", overrides=["retrieval.captions=all"])


def test_missing_annotations_say_what_was_looked_for(tmp_path) -> None:
    result = _invoke(
        ["run", "retrieval", "--dataset", "msvd", "--data-root", str(tmp_path / "nothing"),
         "--no-tracking"]
    )  # fmt: skip
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "train_list.txt: file not found" in output
    assert "--dataset synthetic" in output


@pytest.mark.slow
@pytest.mark.processes
def test_two_gloo_processes_train_like_one_process_with_the_global_batch(sets, tmp_path) -> None:
    # The side network's BatchNorms see per-process batches (as in the reference), so compare
    # the side-network-off model with the parameter-free meanP head and a trained text tower:
    # its loss over the gathered global batch must give the same updates in 2 processes of 2
    # pairs as in 1 process of 4.
    common = {
        "model.method": "frozen-clip",
        "retrieval.similarity": "meanP",
        "solver.epochs": 1,
        "solver.lr": 0.01,
        "eval.final_test": False,
    }
    train(load_run_config("retrieval", "synthetic", overrides=sets("single", **common)))
    ddp_sets = sets("ddp", **common, **{"data.batch_size": 2})
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "s4v_orchestration", "run", "retrieval", "--dataset", "synthetic", "--no-tracking",
        *_flag_sets(ddp_sets),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = load_checkpoint(tmp_path / "single" / "last.pt")
    ddp = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert (single["world_size"], ddp["world_size"]) == (1, 2)
    assert single["step"] == ddp["step"] == 8  # 32 training videos / global batch 4
    for key, value in single["model"].items():
        if key.endswith("attn.in_proj_bias"):
            # Attention is invariant to the key bias, so its gradient is rounding noise that
            # Adam scales up to full steps: compare the query and value biases only.
            width = value.shape[0] // 3
            value, other = value[[*range(width), *range(2 * width, 3 * width)]], ddp["model"][key]
            other = other[[*range(width), *range(2 * width, 3 * width)]]
        else:
            other = ddp["model"][key]
        torch.testing.assert_close(other, value, atol=1e-5, rtol=1e-4, msg=key)
    assert ddp["metrics"]["train/epoch_loss"] == pytest.approx(
        single["metrics"]["train/epoch_loss"], rel=1e-4
    )


def test_tiny_eva_retrieval_run_goes_through_the_training_loop(sets) -> None:
    items = sets("eva", **{"model.preset": "tiny-eva", "solver.epochs": 1, "solver.max_steps": 2})
    metrics = train(load_run_config("retrieval", "synthetic", overrides=items))
    # The final test ranks the validation split with the best (here: the only) weights.
    assert metrics["test/t2v/R1"] == pytest.approx(metrics["val/t2v/R1"])
    assert metrics["test/v2t/R1"] == pytest.approx(metrics["val/v2t/R1"])
