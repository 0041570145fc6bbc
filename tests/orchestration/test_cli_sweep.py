"""`s4v sweep` refuses bad input before Ray starts or any trial runs, naming what to fix; every
shipped sweep file and a retrieval sweep resolve against the run config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from s4v_orchestration.cli import app
from s4v_orchestration.overrides import load_run_config
from s4v_orchestration.sweep.driver import resolve_base_config
from s4v_orchestration.sweep.spec import load_sweep_file

runner = CliRunner()


def _sweep_file(tmp_path: Path, **fields) -> Path:
    spec = {
        "name": "guarded",
        "task": "recognition",
        "dataset": "synthetic",
        "search_space": {"solver.lr": {"type": "grid", "values": [0.003]}},
        **fields,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _invoke(tmp_path: Path, *args: str):
    store = ["--storage", str(tmp_path / "ray"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    return runner.invoke(app, ["sweep", *args, *store], terminal_width=200)


def test_invalid_sweep_file_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("task: recognition\ndataset: synthetic\nsearch_space: {}\nnum_sample: 3\n")
    result = _invoke(tmp_path, str(path))
    assert result.exit_code == 2
    assert f"{path}:3: search_space:" in result.output
    assert f"{path}:4: num_sample: Extra inputs are not permitted" in result.output


def test_search_path_missing_from_the_run_config_is_named(tmp_path: Path) -> None:
    path = _sweep_file(
        tmp_path, search_space={"solver.lrr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}
    )
    result = _invoke(tmp_path, str(path))
    assert result.exit_code == 2
    assert "search_space['solver.lrr']" in result.output
    assert "solver.lrr" in result.output and "unknown field" in result.output
    assert not (tmp_path / "m.db").exists()  # refused before the store was touched


def test_local_ray_sizes_are_refused_with_a_cluster_address(tmp_path: Path) -> None:
    result = _invoke(tmp_path, str(_sweep_file(tmp_path)), "--address", "auto", "--num-cpus", "2")
    assert result.exit_code == 2
    assert "size a local Ray" in result.output


def test_existing_sweep_is_not_overwritten_and_a_missing_one_not_resumed(tmp_path: Path) -> None:
    path = _sweep_file(tmp_path)
    nothing = _invoke(tmp_path, str(path), "--resume")
    assert nothing.exit_code == 2
    assert "nothing to resume" in nothing.output
    (tmp_path / "ray" / "guarded").mkdir(parents=True)
    refused = _invoke(tmp_path, str(path))
    assert refused.exit_code == 2
    assert "already exists: pass --resume" in refused.output


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_shipped_sweep_file_resolves_against_the_run_config(path: Path) -> None:
    spec = load_sweep_file(path)
    base = resolve_base_config(spec, str(path))
    assert base.task == spec.task
    dumped = base.model_dump(mode="json")
    for key, value in spec.set.items():
        node = dumped
        for part in key.split("."):
            node = node[part]
        assert node == value, key
    # Every value a choice or grid names is a valid value of its field.
    for key, dist in spec.search_space.items():
        for value in getattr(dist, "values", ()):
            load_run_config(spec.task, spec.dataset, overrides=[f"{key}={value}"])


def test_retrieval_sweep_resolves_and_optimises_text_to_video_r1(tmp_path: Path) -> None:
    path = tmp_path / "retrieval.yaml"
    path.write_text(
        "task: retrieval\ndataset: synthetic\nset: {solver.epochs: 2}\n"
        "search_space:\n  solver.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}\n"
    )
    spec = load_sweep_file(path)
    base = resolve_base_config(spec, str(path))
    assert (base.task, base.solver.epochs) == ("retrieval", 2)
    assert spec.objective == ("val/t2v/R1", "max")
