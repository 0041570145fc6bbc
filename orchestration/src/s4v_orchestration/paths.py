"""Default locations: where datasets, caches and the MLflow store live unless the user says otherwise.

Every default can be overridden on the command line; the environment variables below only change the
defaults (they are read, never written).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ROOT_ENV = "S4V_DATA_ROOT"
CACHE_DIR_ENV = "S4V_CACHE_DIR"


def default_data_root() -> Path:
    """Folder that holds prepared datasets (``$S4V_DATA_ROOT`` or ``./data``)."""
    return Path(os.environ.get(DATA_ROOT_ENV, "data")).expanduser().resolve()


def default_cache_dir() -> Path:
    """Folder for generated data such as the synthetic dataset.

    ``$S4V_CACHE_DIR``, else ``$XDG_CACHE_HOME/s4v``, else ``~/.cache/s4v``.
    """
    if env := os.environ.get(CACHE_DIR_ENV):
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "s4v").resolve()


def default_tracking_uri() -> str:
    """MLflow tracking URI: ``$MLFLOW_TRACKING_URI`` or a SQLite store ``./mlflow.db``.

    MLflow 3 deprecates (and from 3.13 refuses) the ``./mlruns`` file store, so the default is the
    SQLite database that ``mlflow ui`` also opens by default.
    """
    if env := os.environ.get("MLFLOW_TRACKING_URI"):
        return env
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def missing_sqlite_store(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI when it does not exist (opening would create it)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    path = Path(tracking_uri.removeprefix(prefix))
    return None if path.exists() or str(path) == ":memory:" else path
