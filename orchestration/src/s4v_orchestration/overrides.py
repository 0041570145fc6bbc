"""The layers above the recipe: a YAML run-config file, CLI shortcuts and ``--set`` overrides.

:func:`load_run_config` builds a validated :class:`~s4v_orchestration.config.RunConfig` from the
dataset recipe (:mod:`s4v_orchestration.recipes`), an optional YAML file, the typed CLI shortcuts
(``--epochs``, ...) and ``path.to.field=value`` overrides, each overriding the one before. An
invalid result raises :class:`~s4v_orchestration.config.ConfigError` naming every bad field and
where it came from: the ``--set`` item, the option, or the file and line.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from s4v_data.dataset_file import is_dataset_file
from s4v_orchestration.config import ConfigError, RunConfig
from s4v_orchestration.recipes import (
    dataset_file_config,
    deep_merge,
    model_recipe,
    preset_config,
)


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``"solver.lr=3e-4"`` -> ``(("solver", "lr"), 0.0003)``; the value is read as YAML.

    ``none`` / ``None`` / ``null`` mean no value, so ``--set model.pretrained=none`` works.
    """
    key, sep, raw = text.partition("=")
    path = tuple(part.strip() for part in key.split("."))
    if not sep or not all(path):
        raise ConfigError(f"--set {text!r}: expected path.to.field=value, e.g. solver.lr=3e-4")
    if raw.strip() in {"none", "None", "null", "~", ""}:
        return path, None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return path, value


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any, source: str) -> None:
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(path[: depth + 1])
            raise ConfigError(f"{source}: {where} is a value, not a section")
        node = child
    node[path[-1]] = value


def _yaml_line(node: yaml.Node | None, path: Sequence[str | int]) -> int | None:
    """1-based line of the deepest YAML node along ``path`` (for error messages)."""
    line = None
    for part in path:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next((kv for kv in node.value if kv[0].value == str(part)), None)
        if match is None:
            break
        line = match[0].start_mark.line + 1
        node = match[1]
    return line


def read_yaml_config(path: Path) -> tuple[dict[str, Any], yaml.Node | None]:
    """Parse a YAML run config into a dict (and its node tree, for line numbers in errors)."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from err
    try:
        tree = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    _refuse_duplicate_keys(path, tree)
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections (data:, model:, ...)"
        )
    return data, tree


def _refuse_duplicate_keys(path: Path, node: yaml.Node | None, prefix: str = "") -> None:
    """YAML lets a later key silently replace an earlier one; a run config must not."""
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(path, item, prefix)
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key, value in node.value:
        name = f"{prefix}{key.value}"
        line = key.start_mark.line + 1
        if key.value in seen:
            raise ConfigError(
                f"{path} line {line}: {name} is given twice (first on line {seen[key.value]}); "
                "keep one"
            )
        seen[key.value] = line
        _refuse_duplicate_keys(path, value, f"{name}.")


# A typed override from a CLI shortcut: (dotted field path, value, the option that set it).
Shortcut = tuple[str, Any, str]


def load_run_config(
    task: str,
    dataset: str | None,
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    shortcuts: Sequence[Shortcut] = (),
) -> RunConfig:
    """Build a validated run config: dataset preset, YAML file, shortcuts, then ``--set`` overrides.

    Args:
        task: "recognition" (or "retrieval").
        dataset: preset name or a dataset file (``path/to/dataset.yaml``); None takes
            ``data.dataset`` from the YAML file.
        config_file: optional YAML file with any subset of the RunConfig fields.
        overrides: ``path.to.field=value`` strings, applied in order (last wins).
        shortcuts: typed values of CLI options such as ``--epochs``, applied before ``overrides``.

    Raises:
        ConfigError: naming the field path (and file line, option or ``--set`` item) of every
            problem.
    """
    file_data, file_tree = read_yaml_config(config_file) if config_file else ({}, None)
    file_dataset = (file_data.get("data") or {}).get("dataset")
    if dataset is None:
        dataset = file_dataset
    if dataset is None:
        raise ConfigError("no dataset chosen: pass --dataset (e.g. --dataset synthetic)")
    if is_dataset_file(dataset):
        recipe, recipe_dataset = dataset_file_config(task, Path(dataset))
    else:
        recipe, recipe_dataset = preset_config(task, dataset), dataset
    name = recipe["data"]["dataset"]
    if file_dataset is not None and file_dataset not in (dataset, name):
        raise ConfigError(
            f"{config_file}: data.dataset is {file_dataset!r} but --dataset is {dataset!r}"
        )
    file_data = deep_merge(file_data, {"data": {"dataset": name}}) if file_dataset else file_data
    preset = _chosen_preset(recipe, file_data, overrides, shortcuts)
    if isinstance(preset, str):
        recipe = deep_merge(recipe, model_recipe(task, recipe_dataset, preset))
    merged = deep_merge(recipe, file_data)
    return apply_overrides(merged, overrides, shortcuts, file=(config_file, file_tree, file_data))


def _chosen_preset(
    recipe: dict[str, Any],
    file_data: dict[str, Any],
    overrides: Sequence[str],
    shortcuts: Sequence[Shortcut],
) -> Any:
    """The model preset the layers end up with (the last layer that names one wins)."""
    preset = (recipe.get("model") or {}).get("preset")
    preset = (file_data.get("model") or {}).get("preset", preset)
    for dotted, value, _ in shortcuts:
        if dotted == "model.preset":
            preset = value
    for text in overrides:
        path, value = parse_override(text)
        if path == ("model", "preset"):
            preset = value
    return preset


def apply_overrides(
    tree: dict[str, Any],
    overrides: Sequence[str] = (),
    shortcuts: Sequence[Shortcut] = (),
    *,
    file: tuple[Path | None, yaml.Node | None, dict[str, Any]] = (None, None, {}),
) -> RunConfig:
    """Apply shortcuts and ``--set`` overrides to a config tree and validate it.

    Used by :func:`load_run_config` and to adjust the config stored in a checkpoint.
    """
    merged = copy.deepcopy(tree)
    source: dict[tuple[str, ...], str] = {}
    for dotted, value, option in shortcuts:
        path = tuple(dotted.split("."))
        _set_path(merged, path, value, option)
        source[path] = option
    for text in overrides:
        path, value = parse_override(text)
        _set_path(merged, path, value, f"--set {text}")
        source[path] = f"--set {text}"
    try:
        return RunConfig.model_validate(merged, context={"task": merged.get("task", "recognition")})
    except ValidationError as err:
        raise ConfigError(_describe(err, *file, source)) from None


def _describe(
    err: ValidationError,
    config_file: Path | None,
    file_tree: yaml.Node | None,
    file_data: dict[str, Any],
    override_source: dict[tuple[str, ...], str],
) -> str:
    lines = ["invalid run configuration:"]
    for item in err.errors():
        loc = tuple(str(part) for part in item["loc"])
        field = ".".join(loc) or "(top level)"
        # A --set below an unknown section (data.foo.bar=1) is reported at the section.
        source = next(
            (
                src
                for path, src in override_source.items()
                if loc[: len(path)] == path or path[: len(loc)] == loc
            ),
            None,
        )
        if source is None and file_tree is not None and _in_tree(file_data, loc):
            source = f"{config_file} line {_yaml_line(file_tree, loc)}"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif "input" in item and not isinstance(item["input"], dict):
            message += f" (got {item['input']!r})"
        lines.append(f"  {field}: {message}" + (f"  [from {source}]" if source else ""))
    return "\n".join(lines)


def _in_tree(tree: dict[str, Any], loc: tuple[str, ...]) -> bool:
    node: Any = tree
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
