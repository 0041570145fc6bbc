"""Helper process for decoding and frame extraction (run as a script: ``python _worker.py PID``).

decord can hang forever holding the GIL or crash on a broken file, so the package runs it here,
in a process the parent can kill. Requests and replies are length-prefixed pickles on
stdin/stdout:

* ``("open", path, num_threads)`` -> ``("ok", num_frames)``
* ``("get", indices)`` -> ``("ok", frames (U, H, W, 3) uint8)`` from the last opened video
* ``("fps",)`` -> ``("ok", average frames per second)`` of the last opened video
* ``("extract", video, frame_dir, tmp_root, settings)`` -> ``("ok", frames written)``
* any failure -> ``("error", message)``

The file imports only the standard library, NumPy, Pillow and decord (never the s4v_data package,
which would pull in torch), so a helper starts in a fraction of a second. It exits when its stdin
closes, and Linux kills it when its parent dies (even mid-hang).
"""

import math
import os
import pickle
import shutil
import struct
import sys
import uuid
from pathlib import Path

HEADER = struct.Struct(">Q")
CHUNK = 32  # frames per decord call during extraction (bounds memory for long videos)


def resample_indices(n, native_fps, fps):
    """Source frames for a target frame rate: output frame ``k`` shows time ``k / fps``.

    Args:
        n: decoded frames; native_fps: the video's rate; fps: target rate or None.

    Returns:
        Indices into the ``n`` frames; all of them when ``fps`` is None or not below the native
        rate (frames are never duplicated).
    """
    if fps is None or native_fps <= 0 or fps >= native_fps:
        return list(range(n))
    step = native_fps / fps
    return [math.floor(k * step) for k in range(math.floor((n - 1) / step) + 1)]


def _resize_short(image, short):
    from PIL import Image

    if short is None:
        return image
    w, h = image.size
    if min(w, h) == short:
        return image
    scale = short / min(w, h)
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)


def extract_video(video, frame_dir, tmp_root, *, fps, short_side, frame_template, jpeg_quality):
    """Decode one video into JPEG frames in ``frame_dir``; returns the number of frames.

    The frames are written to a fresh folder under ``tmp_root`` (same file system) and renamed
    to ``frame_dir`` only when all are written.
    """
    import decord
    import numpy as np
    from PIL import Image

    reader = decord.VideoReader(str(video), num_threads=1)
    indices = resample_indices(len(reader), reader.get_avg_fps(), fps)
    if not indices:
        raise RuntimeError("the video has no frames")
    tmp = Path(tmp_root) / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir(parents=True)
    try:
        written = 0
        for start in range(0, len(indices), CHUNK):
            batch = reader.get_batch(indices[start : start + CHUNK]).asnumpy()  # (c, H, W, 3)
            for array in batch:
                written += 1
                image = _resize_short(Image.fromarray(np.ascontiguousarray(array)), short_side)
                image.save(tmp / frame_template.format(written), quality=jpeg_quality)
        Path(frame_dir).parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, frame_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return written


def describe(error):
    """One line naming the error type and its first message line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _read(stream, size):
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return data


def _die_with_parent(parent_pid):
    """Ask Linux to kill this process when its parent dies, even if decord hangs holding the GIL."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):  # not Linux: stdin closing still ends an idle helper
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(0)


def _handle(request, state):
    import decord

    kind = request[0]
    if kind == "open":
        state["reader"] = None  # release the previous file before opening the next
        state["reader"] = decord.VideoReader(request[1], num_threads=request[2])
        return len(state["reader"])
    if kind == "get":
        if state.get("reader") is None:
            raise RuntimeError("no video is open")
        return state["reader"].get_batch(request[1]).asnumpy()
    if kind == "fps":
        if state.get("reader") is None:
            raise RuntimeError("no video is open")
        return float(state["reader"].get_avg_fps())
    if kind == "extract":
        video, frame_dir, tmp_root, settings = request[1:]
        return extract_video(video, frame_dir, tmp_root, **settings)
    raise ValueError(f"unknown request {kind!r}")


def main():
    if len(sys.argv) > 1:
        _die_with_parent(int(sys.argv[1]))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    state = {}
    while True:
        try:
            (size,) = HEADER.unpack(_read(stdin, HEADER.size))
            request = pickle.loads(_read(stdin, size))
        except EOFError:
            return
        try:
            reply = ("ok", _handle(request, state))
        except Exception as e:  # every failure is reported, never fatal
            reply = ("error", describe(e))
        payload = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(HEADER.pack(len(payload)) + payload)
        stdout.flush()


if __name__ == "__main__":
    main()
