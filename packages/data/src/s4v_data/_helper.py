"""Parent side of the ``_worker.py`` helper process: start, request with a deadline, kill."""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HEADER = struct.Struct(">Q")  # must match _worker.HEADER
WORKER = Path(__file__).with_name("_worker.py")


class HelperTimeout(Exception):
    """The helper did not answer before the deadline (it has been killed)."""


class HelperDied(Exception):
    """The helper process ended while working (crash or kill); the message says how."""


class HelperError(Exception):
    """The helper reported an error for this request (it is still usable)."""


class Helper:
    """One helper process, started lazily in the process that uses it, restarted after a failure."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = 0  # pid that started the helper (a forked copy must start its own)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._owner == os.getpid()

    def fileno(self) -> int:
        """The helper's stdout, for select()."""
        proc = self._ensure()
        return proc.stdout.fileno()  # type: ignore[union-attr]

    def _ensure(self) -> subprocess.Popen[bytes]:
        if not self.running:
            self._proc = subprocess.Popen(
                [sys.executable, str(WORKER), str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # FFmpeg's complaints; errors come back as messages
            )
            self._owner = os.getpid()
        return self._proc  # type: ignore[return-value]

    def send(self, message: tuple) -> None:
        """Send one request (starts the helper if needed)."""
        proc = self._ensure()
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            proc.stdin.write(HEADER.pack(len(payload)) + payload)  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass  # it died; receive() reports how

    def receive(self, deadline: float) -> Any:
        """The reply to the last request; raises HelperTimeout, HelperDied or HelperError."""
        proc = self._ensure()
        try:
            status, value = pickle.loads(_read_message(proc.stdout.fileno(), deadline))  # type: ignore[union-attr]
        except TimeoutError:
            self.kill()
            raise HelperTimeout from None
        except EOFError:
            code = proc.wait()
            self._forget()
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            raise HelperDied(f"the decoder process died ({how})") from None
        if status != "ok":
            raise HelperError(value)
        return value

    def request(self, message: tuple, timeout: float) -> Any:
        """Send a request and wait at most ``timeout`` seconds for its reply."""
        self.send(message)
        return self.receive(time.monotonic() + timeout)

    def kill(self) -> None:
        """Stop the helper now (a later request starts a fresh one)."""
        if self.running:
            proc = self._proc
            proc.kill()  # type: ignore[union-attr]
            proc.wait()  # type: ignore[union-attr]
        self._forget()

    def _forget(self) -> None:
        if self._proc is not None and self._owner == os.getpid():
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):  # unflushed bytes to a dead process
                        stream.close()
        self._proc = None


def _read_exactly(fd: int, size: int, deadline: float) -> bytes:
    chunks, remaining = [], size
    while remaining:
        wait = deadline - time.monotonic()
        if wait <= 0 or not select.select([fd], [], [], wait)[0]:
            raise TimeoutError
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_message(fd: int, deadline: float) -> bytes:
    (size,) = HEADER.unpack(_read_exactly(fd, HEADER.size, deadline))
    return _read_exactly(fd, size, deadline)
