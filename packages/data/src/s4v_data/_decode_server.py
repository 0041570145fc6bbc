"""Decoder helper process for ``s4v_data.decode.IsolatedVideoReader`` (run as a script).

Reads length-prefixed pickled requests on stdin and answers on stdout:
``("open", path, num_threads)`` -> ``("ok", num_frames)``; ``("get", indices)`` ->
``("ok", frames (U, H, W, 3) uint8)``; any failure -> ``("error", message)``. It imports only
decord and NumPy so that it starts fast, and exits when its stdin closes.
"""

import os
import pickle
import struct
import sys

HEADER = struct.Struct(">Q")


def _read(stream, size):
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return data


def _describe(error):
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _die_with_parent(parent_pid):
    """Ask Linux to kill this process when its parent dies, even if decord hangs holding the GIL."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):  # not Linux: stdin closing still ends an idle helper
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(0)


def main():
    if len(sys.argv) > 1:
        _die_with_parent(int(sys.argv[1]))
    import decord

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    reader = None
    while True:
        try:
            (size,) = HEADER.unpack(_read(stdin, HEADER.size))
            request = pickle.loads(_read(stdin, size))
        except EOFError:
            return
        try:
            if request[0] == "open":
                reader = None  # release the previous file before opening the next
                reader = decord.VideoReader(request[1], num_threads=request[2])
                reply = ("ok", len(reader))
            elif request[0] == "get":
                if reader is None:
                    raise RuntimeError("no video is open")
                reply = ("ok", reader.get_batch(request[1]).asnumpy())
            else:
                reply = ("error", f"unknown request {request[0]!r}")
        except Exception as e:  # every decoding failure is reported, never fatal
            reply = ("error", _describe(e))
        payload = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(HEADER.pack(len(payload)) + payload)
        stdout.flush()


if __name__ == "__main__":
    main()
