"""Run-config validation: presets, YAML and --set layering, and errors that name the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from s4v_data import DATASETS
from s4v_orchestration.config import ConfigError, RunConfig, flatten, parse_views, to_yaml
from s4v_orchestration.overrides import load_run_config
from s4v_orchestration.recipes import DATASET_PRESETS
from s4v_orchestration.tasks.recognition import build_recognition_model
from s4v_orchestration.tasks.retrieval import build_retrieval_model
from s4v_recognition import get_preset as get_recognition_preset
from s4v_retrieval import get_preset as get_retrieval_preset


@pytest.mark.parametrize(
    ("task", "dataset"),
    [
        (task, dataset)
        for task in sorted(DATASET_PRESETS)
        for dataset in sorted(DATASET_PRESETS[task])
    ],
)
def test_every_shipped_preset_builds_the_model_its_config_describes(
    task: str, dataset: str
) -> None:
    config = load_run_config(task, dataset).with_defaults()
    preset = config.model.preset
    tiny = preset.startswith("tiny")
    # Real presets are built on the meta device (shapes, no data) and without their weights
    # (no download): which weights load does not change what is built.
    config.model.pretrained = None
    with torch.device("cpu" if tiny else "meta"):
        if task == "recognition":
            model = build_recognition_model(config, DATASETS[dataset].num_classes)
            assert model.head.out_features == DATASETS[dataset].num_classes
        else:
            model = build_retrieval_model(config)
    registered = (get_recognition_preset if task == "recognition" else get_retrieval_preset)(preset)
    assert (model.preset.backbone, model.method) == (registered.backbone, config.model.method)
    assert model.preset.num_frames == config.data.num_frames
    if config.model.side_dim is not None:
        assert model.preset.side_dim == config.model.side_dim
    assert model.trainable_state_dict(), "nothing would train"
    if tiny:  # built for real: one forward of the clip the config asks for
        size = config.data.input_size or model.preset.image_size
        clip = torch.randn(1, config.data.num_frames, 3, size, size)
        with torch.no_grad():
            if task == "recognition":
                assert model.eval()(clip).shape == (1, DATASETS[dataset].num_classes)
            else:
                video = model.eval().encode_video(clip)
                assert video.frames.shape[:2] == (1, config.data.num_frames)


def test_presets_carry_the_reference_recipes() -> None:
    ssv1 = load_run_config("recognition", "ssv1")
    assert (ssv1.solver.epochs, ssv1.solver.warmup_epochs, ssv1.solver.lr) == (40, 4, 1e-3)
    assert (ssv1.solver.weight_decay, ssv1.solver.label_smoothing) == (0.15, 0.1)
    assert (ssv1.data.num_frames, ssv1.data.batch_size, ssv1.data.num_sample) == (8, 16, 2)
    assert ssv1.data.rand_augment
    assert (ssv1.eval.test_crops, ssv1.eval.test_clips) == (3, 2)
    assert ssv1.model.preset == "side4video-b16"
    assert load_run_config("recognition", "ssv2").solver.epochs == 30
    k400 = load_run_config("recognition", "k400")
    assert (k400.data.batch_size, k400.data.num_sample, k400.data.rand_augment) == (32, 1, False)
    assert (k400.eval.test_crops, k400.eval.test_clips) == (3, 4)


def test_yaml_then_set_overrides_apply_in_order(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("solver:\n  lr: 0.01\n  epochs: 3\nmodel:\n  method: linear-probe\n")
    config = load_run_config(
        "recognition",
        "synthetic",
        path,
        overrides=["solver.lr=2e-4", "data.batch_size=4", "model.pretrained=none"],
        shortcuts=[("solver.epochs", 5, "--epochs")],
    )
    assert config.solver.lr == 2e-4
    assert config.solver.epochs == 5  # the shortcut beats the file
    assert config.model.method == "linear-probe"
    assert config.data.batch_size == 4
    assert config.model.pretrained is None


def test_unknown_field_in_set_names_the_path_and_the_option() -> None:
    with pytest.raises(ConfigError) as err:
        load_run_config("recognition", "synthetic", overrides=["solver.learning_rate=1"])
    assert "solver.learning_rate: unknown field" in str(err.value)
    assert "--set solver.learning_rate=1" in str(err.value)


def test_unknown_field_in_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("solver:\n  lr: 0.01\ndata:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError) as err:
        load_run_config("recognition", "synthetic", path)
    assert "data.batch_sise: unknown field" in str(err.value)
    assert f"{path} line 4" in str(err.value)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("solver.lr=-1", "solver.lr"),
        ("data.batch_size=many", "data.batch_size"),
        ("model.method=lora", "model.method"),
        ("model.preset=vit-huge", "model.preset"),
        ("eval.test_crops=5", "eval.test_crops"),
        ("device=tpu", "device"),
    ],
)
def test_bad_value_fails_naming_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"{field}: .*\[from --set {override}\]"):
        load_run_config("recognition", "synthetic", overrides=[override])


def test_setting_inside_a_value_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"solver\.lr is a value, not a section"):
        load_run_config("recognition", "synthetic", overrides=["solver.lr.x=1"])


def test_unknown_dataset_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown recognition dataset 'diving48'.*synthetic"):
        load_run_config("recognition", "diving48")


def test_views_parse_crops_by_clips() -> None:
    assert parse_views("3x2") == (3, 2)
    assert parse_views("1X4") == (1, 4)
    for bad in ("3", "2x2", "3x0", "axb"):
        with pytest.raises(ConfigError, match="--views"):
            parse_views(bad)


def test_resolved_config_round_trips_through_yaml(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("S4V_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    config = load_run_config("recognition", "synthetic", overrides=["seed=7"]).with_defaults()
    assert config.data.root == tmp_path / "cache" / "synthetic"
    assert config.tracking.uri == "sqlite:///x.db"
    assert config.tracking.experiment == "recognition-synthetic"
    assert re.fullmatch(
        r"recognition-synthetic-tiny-side4video-\d{8}-\d{6}", config.output_dir.name
    )
    assert config.with_defaults() == config
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(config))
    assert load_run_config("recognition", None, path) == config
    params = flatten(config)
    assert params["seed"] == "7"
    assert params["solver.betas"] == "[0.9, 0.999]"
    assert params["model.pretrained"] == "null"


def test_run_config_forbids_unknown_top_level_fields() -> None:
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        RunConfig.model_validate({"data": {"dataset": "synthetic"}, "sede": 1})
