"""`s4v ui` starts the real MLflow UI on 127.0.0.1, prints its address and stops on Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow  # MLflow's server takes 10-30 s to start on 2 cores
def test_ui_serves_the_store_on_loopback_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = _free_port()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ui = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "s4v_orchestration",
            "ui",
            "--port",
            str(port),
            "--tracking-uri",
            uri,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A test run started in the background of a non-interactive shell inherits an ignored
        # SIGINT, and Python then installs no KeyboardInterrupt handler: give the UI a terminal's.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        address = ui.stdout.readline()
        assert f"MLflow UI: http://127.0.0.1:{port}" in address, address
        deadline = time.monotonic() + 240  # MLflow creates the store and imports its server
        while True:
            assert ui.poll() is None, ui.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                    assert reply.read() == b"OK"
                    break
            except OSError:
                assert time.monotonic() < deadline, "the MLflow UI did not come up"
                time.sleep(1)
        # Bound to loopback only: nothing listens on the machine's other addresses.
        with socket.socket() as probe:
            probe.connect(("127.0.0.1", port))
            bound = {conn.laddr.ip for conn in _connections(port)}
        assert bound <= {"127.0.0.1"}, bound
    finally:
        ui.send_signal(signal.SIGINT)
        out, _ = ui.communicate(timeout=120)
    assert ui.returncode == 0, out
    assert "MLflow UI stopped" in out
    assert not _listening(port)


def _connections(port: int):
    import psutil

    return [
        c for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port
    ]


def test_ui_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "s4v_orchestration", "ui", "--port", str(port)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use" in result.stdout


def test_ui_refuses_a_store_uri_mlflow_cannot_open(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "s4v_orchestration", "ui", "--tracking-uri", "nosuchscheme://x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2
    assert "error: nosuchscheme://x is not a tracking store" in " ".join(result.stdout.split())
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_the_ui_like_ctrl_c(signum) -> None:
    import os

    from s4v_orchestration.commands.ui import stops_on_hangup

    before = signal.getsignal(signum)
    with pytest.raises(KeyboardInterrupt), stops_on_hangup():
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises as soon as the signal arrives
    assert signal.getsignal(signum) == before  # restored afterwards
