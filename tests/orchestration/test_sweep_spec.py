"""Sweep files: validation errors name file, line and field; conversion to Ray Tune is faithful."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.sample import Categorical, Float, Integer

from s4v_orchestration.sweep.space import (
    make_scheduler,
    make_search_algorithm,
    make_tune_config,
    param_space,
)
from s4v_orchestration.sweep.spec import (
    DEFAULT_METRICS,
    SweepFileError,
    load_sweep_file,
    parse_sweep,
)

MINIMAL = """\
task: recognition
dataset: synthetic
search_space:
  solver.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-1}
"""


def _write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_file_gets_documented_defaults(tmp_path: Path) -> None:
    spec = load_sweep_file(_write(tmp_path, MINIMAL, "lr search.yaml"))
    assert spec.name == "lr-search"  # from the file name, made safe for folders
    assert spec.objective == DEFAULT_METRICS["recognition"] == ("val/top1", "max")
    assert spec.scheduler.type == "asha"
    assert spec.search.algorithm == "random"
    assert (spec.resources.cpu, spec.resources.gpu) == (1.0, 0.0)
    assert spec.num_samples == 1


def test_retrieval_sweeps_default_to_text_to_video_r1() -> None:
    spec = parse_sweep(MINIMAL.replace("recognition", "retrieval").replace("synthetic", "msrvtt"))
    assert spec.objective == ("val/t2v/R1", "max")


@pytest.mark.parametrize(
    ("snippet", "line", "field", "message"),
    [
        ("schedular: asha\n", 5, "schedular", "Extra inputs are not permitted"),
        (
            "search_space:\n  solver.lr:\n    type: loguniform\n    low: -1\n    high: 0.1\n",
            7,
            "search_space['solver.lr'].low",
            "greater than 0",
        ),
        (
            "search_space:\n  model.side_dim: {type: choise, values: [8]}\n",
            5,
            "search_space['model.side_dim']",
            "does not match any of the expected tags",
        ),
        ("resources:\n  gpu: 1.5\n", 6, "resources.gpu", "fraction of one GPU or whole GPUs"),
        (
            "search_space:\n  solver.lr: {type: uniform, low: 0.2, high: 0.1}\n",
            5,
            "search_space['solver.lr']",
            "must be smaller than high",
        ),
    ],
    ids=["unknown-key", "negative-loguniform", "unknown-distribution", "gpu-fraction", "range"],
)
def test_invalid_file_error_names_file_line_and_field(
    tmp_path: Path, snippet: str, line: int, field: str, message: str
) -> None:
    base = "task: recognition\ndataset: synthetic\nsearch_space:\n  solver.lr: {type: choice, values: [0.1]}\n"
    if snippet.startswith("search_space:"):
        base = "task: recognition\ndataset: synthetic\nnum_samples: 2\n"
    path = _write(tmp_path, base + snippet)
    with pytest.raises(SweepFileError) as err:
        load_sweep_file(path)
    text = str(err.value)
    assert f"{path}:{line}: {field}: " in text, text
    assert message in text


def test_missing_search_space_and_bad_yaml_are_reported(tmp_path: Path) -> None:
    with pytest.raises(SweepFileError, match="search_space: Field required"):
        parse_sweep("task: recognition\ndataset: synthetic\n", "s.yaml")
    with pytest.raises(SweepFileError, match=r"s\.yaml: not valid YAML"):
        parse_sweep("task: [recognition\n", "s.yaml")
    with pytest.raises(SweepFileError, match="cannot read the sweep file"):
        load_sweep_file(tmp_path / "missing.yaml")


def test_incompatible_combinations_are_rejected() -> None:
    grid = MINIMAL.replace(
        "{type: loguniform, low: 1.0e-4, high: 1.0e-1}", "{type: grid, values: [0.1, 0.01]}"
    )
    with pytest.raises(SweepFileError, match="optuna cannot enumerate a grid"):
        parse_sweep(grid + "search: {algorithm: optuna}\n")
    with pytest.raises(SweepFileError, match=r"solver\.lr is both fixed in `set` and searched"):
        parse_sweep(MINIMAL + "set: {solver.lr: 0.1}\n")
    with pytest.raises(SweepFileError, match="not a dotted config path"):
        parse_sweep(MINIMAL + "  solver..lr: {type: choice, values: [1]}\n")
    with pytest.raises(SweepFileError, match="grace_period"):
        parse_sweep(MINIMAL + "scheduler: {type: asha, grace_period: 5, max_t: 2}\n")


def test_search_space_becomes_ray_domains_with_the_same_bounds() -> None:
    spec = parse_sweep(
        """\
        task: recognition
        dataset: synthetic
        num_samples: 3
        search_space:
          solver.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
          solver.weight_decay: {type: uniform, low: 0.0, high: 0.2}
          model.side_dim: {type: choice, values: [16, 32]}
          data.num_frames: {type: randint, low: 4, high: 9}
          model.dropout: {type: grid, values: [0.0, 0.1]}
        """.replace("        ", "")
    )
    space = param_space(spec)
    assert isinstance(space["solver.lr"], Float) and space["solver.lr"].lower == 1e-4
    assert space["solver.lr"].upper == 1e-2
    assert isinstance(space["solver.weight_decay"], Float)
    assert isinstance(space["model.side_dim"], Categorical)
    assert space["model.side_dim"].categories == [16, 32]
    assert isinstance(space["data.num_frames"], Integer)
    assert (space["data.num_frames"].lower, space["data.num_frames"].upper) == (4, 9)
    assert space["model.dropout"] == {"grid_search": [0.0, 0.1]}
    assert spec.total_trials() == 6  # 3 samples per grid point
    rng = np.random.default_rng(0)
    draws = [space["solver.lr"].sample(random_state=rng) for _ in range(200)]
    assert min(draws) >= 1e-4 and max(draws) <= 1e-2
    # Log-uniform: about half the draws fall below the geometric midpoint 1e-3.
    assert 0.35 < np.mean(np.array(draws) < 1e-3) < 0.65


def test_asha_counts_epochs_and_defaults_max_t_to_the_run_length() -> None:
    spec = parse_sweep(MINIMAL + "scheduler: {type: asha, grace_period: 2, reduction_factor: 3}\n")
    scheduler = make_scheduler(spec, max_epochs=12)
    assert isinstance(scheduler, AsyncHyperBandScheduler)
    assert scheduler._time_attr == "epoch"
    assert scheduler._max_t == 12
    # Rungs at 2 and 6 epochs: grace period times powers of the reduction factor.
    assert [rung for rung, _ in scheduler._brackets[0]._rungs] == [6, 2]
    fifo = parse_sweep(MINIMAL + "scheduler: {type: fifo}\n")
    assert isinstance(make_scheduler(fifo, max_epochs=12), FIFOScheduler)


def test_tune_config_carries_metric_mode_samples_and_concurrency() -> None:
    spec = parse_sweep(
        MINIMAL + "metric: val/top5\nmode: max\nnum_samples: 7\nmax_concurrent_trials: 2\n"
    )
    config = make_tune_config(spec, max_epochs=3)
    assert (config.metric, config.mode, config.num_samples) == ("val/top5", "max", 7)
    # Random search: the limit goes to the generator itself (Ray ignores the TuneConfig one).
    assert isinstance(config.search_alg, BasicVariantGenerator)
    assert config.search_alg.max_concurrent == 2
    assert config.max_concurrent_trials is None
    optuna = parse_sweep(MINIMAL + "max_concurrent_trials: 2\nsearch: {algorithm: optuna}\n")
    assert make_tune_config(optuna, max_epochs=3).max_concurrent_trials == 2


def test_optuna_searcher_proposes_values_inside_the_search_space() -> None:
    spec = parse_sweep(
        MINIMAL
        + "  model.side_dim: {type: choice, values: [16, 32]}\n"
        + "search: {algorithm: optuna, seed: 3}\n"
    )
    searcher = make_search_algorithm(spec)
    assert searcher.set_search_properties("val/top1", "max", param_space(spec))
    for index in range(3):
        proposal = searcher.suggest(f"trial{index}")
        assert 1e-4 <= proposal["solver.lr"] <= 1e-1
        assert proposal["model.side_dim"] in (16, 32)
