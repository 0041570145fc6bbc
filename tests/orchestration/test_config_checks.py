"""Run-config validation gaps: infinite numbers, duplicate YAML keys, the source of a bad --set."""

from __future__ import annotations

import pytest

from s4v_orchestration.config import ConfigError
from s4v_orchestration.overrides import load_run_config


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_infinite_or_nan_numbers_are_refused(value) -> None:
    with pytest.raises(ConfigError, match=r"solver\.lr: .*\[from --set solver\.lr="):
        load_run_config("recognition", "synthetic", overrides=[f"solver.lr={value}"])


def test_duplicate_yaml_keys_are_refused_naming_both_lines(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("solver:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"run\.yaml line 4: solver\.lr is given twice.*line 2"):
        load_run_config("recognition", "synthetic", path)


def test_an_unknown_nested_set_names_its_source() -> None:
    with pytest.raises(
        ConfigError, match=r"data\.foo: unknown field  \[from --set data\.foo\.bar=1\]"
    ):
        load_run_config("recognition", "synthetic", overrides=["data.foo.bar=1"])
