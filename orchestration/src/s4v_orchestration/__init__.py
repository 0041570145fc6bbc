"""s4v_orchestration: the ``s4v`` command, run configs, training loop, MLflow and Ray Tune."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("s4v-orchestration")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
