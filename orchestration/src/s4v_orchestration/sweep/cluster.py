"""Where trials run: a local Ray started for the sweep, or an existing cluster.

``--address`` takes what ``ray.init`` takes: ``auto`` (a cluster started on this machine with
``ray start --head``), ``HOST:PORT`` of a head node, or ``ray://HOST:PORT`` (Ray Client, from a
machine outside the cluster). Trials log to MLflow themselves, so every node must reach the
tracking store: a SQLite file only works when all nodes are this machine.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

import ray
from ray._private import ray_constants

from s4v_orchestration.sweep.tracking import is_server_uri


class ClusterError(RuntimeError):
    """Trials on this cluster could not record their runs; the message says what to use."""


def _is_local_ip(ip: str) -> bool:
    """True if ``ip`` belongs to this machine (binding to it succeeds only then)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as sock:
            sock.bind((ip, 0))
        return True
    except OSError:
        return False


def connect_ray(
    address: str | None, *, num_cpus: int | None, num_gpus: int | None, verbose: int = 0
) -> bool:
    """Start a local Ray (returns True: we own it) or join the cluster at ``address``.

    A local Ray's trial workers run this very interpreter (``py_executable``), in its environment,
    from any working directory; a cluster's workers run the Python its nodes were started with.
    With ``verbose`` 0 Ray keeps its INFO messages and the trials' own output to its log files
    (``<ray temp dir>/session_latest/logs``): s4v prints a line per trial event instead. 1 lets
    Ray's INFO messages through, 2 also the trials' output.
    """
    quiet = {
        "logging_level": logging.INFO if verbose >= 1 else logging.WARNING,
        "log_to_driver": verbose >= 2,
    }
    if verbose == 0:
        # Tune warns on every sweep that TensorboardX is not installed (s4v logs to MLflow) and,
        # with short epochs, that it snapshots its state often (each epoch is a checkpoint).
        for name in ("ray.tune.utils.callback", "ray.tune.execution.experiment_state"):
            logging.getLogger(name).setLevel(logging.ERROR)
    with _without_uv_run_hook():
        if address is None:
            ray.init(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                runtime_env={"py_executable": sys.executable},
                **quiet,
            )
            return True
        ray.init(address=address, **quiet)
    return False


@contextmanager
def _without_uv_run_hook() -> Iterator[None]:
    """Turn off Ray's runtime-environment hook for drivers started by ``uv run`` while Ray starts.

    The hook replaces the job's environment by ``uv run ... python`` in an uploaded copy of the
    working directory, and refuses to start (``RuntimeError: Your .../pyproject.toml is not in
    the working_dir``) unless the directory holds the project: ``s4v sweep`` started from a
    sub-folder or with ``uv run --project`` failed before any trial. Ray documents turning it off
    (``RAY_ENABLE_UV_RUN_RUNTIME_ENV``, read into ``ray_constants``) when the driver chooses the
    workers' environment itself, as :func:`connect_ray` does.
    """
    previous = ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV
    ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False
    try:
        yield
    finally:
        ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = previous


def check_trials_can_log(tracking_uri: str, address: str | None) -> None:
    """Refuse a local SQLite store when trials may run on other machines: they would each write to
    a file of their own. A tracking server (``--tracking-uri http://...``) works everywhere."""
    if address is None or is_server_uri(tracking_uri):
        return
    hint = "start `mlflow server` and pass --tracking-uri http://HOST:5000 (see README, Sweeps)"
    if address.startswith("ray://"):
        host = urlparse(address).hostname or ""
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ClusterError(f"trials on {address} cannot write to {tracking_uri}; {hint}")
        return
    remote = sorted(
        node["NodeManagerAddress"]
        for node in ray.nodes()
        if node["Alive"] and not _is_local_ip(node["NodeManagerAddress"])
    )
    if remote:
        raise ClusterError(
            f"the cluster has nodes on other machines ({', '.join(remote)}) that cannot write to "
            f"{tracking_uri}; {hint}"
        )
