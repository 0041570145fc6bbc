"""The workspace's dependency rules hold: each member imports only what its pyproject declares.

Style principle 1: libraries (core, data, recognition, retrieval) never import the app, the direction
is core <- recognition/retrieval, data stands alone, and every third-party import is declared by the
member that makes it (so `uv run --package <member>` cannot break on a stray import).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = {
    "s4v_core": ROOT / "packages/core",
    "s4v_data": ROOT / "packages/data",
    "s4v_recognition": ROOT / "packages/recognition",
    "s4v_retrieval": ROOT / "packages/retrieval",
    "s4v_orchestration": ROOT / "orchestration",
}
ALLOWED_FIRST_PARTY = {
    "s4v_core": set(),
    "s4v_data": set(),
    "s4v_recognition": {"s4v_core"},
    "s4v_retrieval": {"s4v_core"},
    "s4v_orchestration": {"s4v_core", "s4v_data", "s4v_recognition", "s4v_retrieval"},
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(member_dir: Path) -> set[str]:
    project = tomllib.loads((member_dir / "pyproject.toml").read_text())["project"]
    names = set()
    for spec in project.get("dependencies", []):
        names.add(_normalise(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]))
    return names


def _imported_modules(src: Path) -> dict[str, str]:
    """Top-level module name -> first 'file:line' that imports it (absolute imports only)."""
    found: dict[str, str] = {}
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


@pytest.mark.parametrize("module", sorted(MEMBERS))
def test_member_imports_only_declared_dependencies(module: str) -> None:
    member_dir = MEMBERS[module]
    declared = _declared(member_dir)
    dists = packages_distributions()
    problems = []
    for name, where in _imported_modules(member_dir / "src").items():
        if name in sys.stdlib_module_names or name == "__future__" or name == module:
            continue
        if name.startswith("s4v_"):
            if name not in ALLOWED_FIRST_PARTY[module]:
                problems.append(f"{where}: {module} must not import {name}")
            elif _normalise(name) not in declared:
                problems.append(f"{where}: imports {name} without declaring it")
            continue
        providers = {_normalise(d) for d in dists.get(name, [])}
        if not providers:
            problems.append(f"{where}: imports {name}, which no installed distribution provides")
        elif not providers & declared:
            problems.append(
                f"{where}: imports {name} (from {sorted(providers)}) without declaring it"
            )
    assert not problems, "\n".join(problems)


def test_every_member_is_in_the_workspace() -> None:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = {_normalise(d) for d in root["project"]["dependencies"]}
    assert deps == {_normalise(m) for m in MEMBERS}
    for module, member_dir in MEMBERS.items():
        assert (member_dir / "src" / module / "__init__.py").is_file()
