"""``s4v ui``: the MLflow UI on the local store, bound to 127.0.0.1 unless asked otherwise."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console

from s4v_orchestration.paths import default_tracking_uri

console = Console()

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Backend stores `mlflow ui` opens (a database URI may name its driver: postgresql+psycopg2://).
STORE_SCHEMES = frozenset({"file", "sqlite", "postgresql", "mysql", "mssql"})


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def ui(
    host: Annotated[
        str,
        typer.Option(
            help="Address to bind. 127.0.0.1 keeps the UI on this machine; 0.0.0.0 exposes it "
            "to the network (then also pass --allowed-hosts)."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the UI.")] = 5000,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="Store to show (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)."
        ),
    ] = None,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(
            help="Host names the UI answers to when exposed, comma separated (MLflow's "
            "--allowed-hosts); by default MLflow accepts only localhost."
        ),
    ] = None,
) -> None:
    """Start the MLflow UI on the s4v store and print its address (Ctrl-C stops it)."""
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        console.print(f"{uri} is a tracking server: open it in a browser", highlight=False)
        return
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else "file"
    if scheme not in STORE_SCHEMES:
        console.print(
            f"[red]error:[/red] {uri} is not a tracking store the MLflow UI can open: use a "
            f"{', '.join(sorted(STORE_SCHEMES))} URI (e.g. sqlite:///$PWD/mlflow.db) or a local "
            "folder, or open an http(s):// tracking server in a browser",
            highlight=False,
        )
        raise typer.Exit(2)
    if not _port_free(host, port):
        console.print(f"[red]error:[/red] port {port} on {host} is in use; pass --port")
        raise typer.Exit(2)
    url_host = f"[{host}]" if ":" in host else host
    url = f"http://{url_host}:{port}"
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--host", host, "--port", str(port)]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    elif host not in LOOPBACK:
        console.print(
            "[yellow]note:[/yellow] MLflow answers only requests addressed to localhost unless "
            "--allowed-hosts names this machine's host name"
        )
    console.print(f"MLflow UI: [bold]{url}[/bold]  (store {uri}; Ctrl-C stops it)", soft_wrap=True)
    # A session of its own: MLflow runs the web server as a child process, and stopping the
    # whole group on Ctrl-C leaves nothing behind holding the port.
    # MLflow's background job runner serves GenAI features s4v does not use and slows start-up.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    server = subprocess.Popen(command, start_new_session=True, env=env)
    try:
        with stops_on_hangup():
            while server.poll() is None and not _healthy(url):
                time.sleep(0.5)
            if server.poll() is None:
                console.print(f"ready: {url}", highlight=False)
            server.wait()
    except KeyboardInterrupt:
        _stop(server)
        console.print("MLflow UI stopped")
        return
    if server.returncode != 0:
        raise typer.Exit(server.returncode)


@contextmanager
def stops_on_hangup() -> Iterator[None]:
    """SIGTERM (``kill``) and SIGHUP (the SSH session ended) stop the UI as Ctrl-C does.

    The server runs in a session of its own, so neither signal reaches it: without this it would
    outlive ``s4v ui`` and keep the port.
    """

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop(server: subprocess.Popen, grace: float = 15.0) -> None:
    """Stop the UI's process group: SIGTERM, then SIGKILL if it is still there after ``grace`` s."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        # A loaded machine can make MLflow's graceful shutdown outlast any patience; the port must
        # still be freed.
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
