"""Video readers, and the helper process that runs them (as a script: ``python _worker.py PID``).

Two backends read videos through one interface (:func:`open_reader`): decord where its wheels
exist (Linux x86_64, Windows AMD64) and PyAV everywhere else (:func:`default_backend` picks).

decord can hang forever holding the GIL or crash on a broken file, so the package runs the readers
here, in a process the parent can kill. Requests and replies are length-prefixed pickles on
stdin/stdout:

* ``("open", path, num_threads, backend)`` -> ``("ok", num_frames)``
* ``("get", indices)`` -> ``("ok", frames (U, H, W, 3) uint8)`` from the last opened video
* ``("fps",)`` -> ``("ok", average frames per second)`` of the last opened video
* ``("extract", video, frame_dir, tmp_root, settings)`` -> ``("ok", frames written)``
* any failure -> ``("error", message)``

The file imports only the standard library, NumPy, Pillow and decord or PyAV (never s4v_data,
which would pull in torch), so a helper starts in a fraction of a second. It exits when its stdin
closes, and Linux kills it when its parent dies (even mid-hang).
"""

import importlib.util
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
BACKENDS = ("decord", "pyav")


def default_backend():
    """``"decord"`` where it is installed (its wheels exist for Linux x86_64 and Windows), else ``"pyav"``."""
    return "decord" if importlib.util.find_spec("decord") is not None else "pyav"


def backend_version(backend):
    """``"decord 0.6.0"`` / ``"pyav 18.1.0"``: the decoder and its version, for cache keys."""
    if backend == "decord":
        import decord

        return f"decord {decord.__version__}"
    import av

    return f"pyav {av.__version__}"


class DecordReader:
    """decord's ``VideoReader``: frame count from the container, random access by index."""

    def __init__(self, path, num_threads=1):
        import decord

        self._reader = decord.VideoReader(str(path), num_threads=num_threads)
        self.fps = float(self._reader.get_avg_fps())

    def __len__(self):
        return len(self._reader)

    def get_batch(self, indices):
        """Frames at ``indices`` (any order, repeats allowed) as ``(U, H, W, 3)`` uint8."""
        return self._reader.get_batch(list(indices)).asnumpy()

    def iter_frames(self, indices):
        """Yield the frames at sorted ``indices`` one by one, decoding ``CHUNK`` at a time."""
        for start in range(0, len(indices), CHUNK):
            yield from self.get_batch(indices[start : start + CHUNK])


class PyAVReader:
    """PyAV (FFmpeg bundled in its wheels): frames counted by demuxing, decoded forward.

    Seeking in PyAV lands on key frames, so frames are found by decoding from the start and
    keeping the wanted indices: exact, and cheap for the short clips action datasets hold.
    """

    def __init__(self, path, num_threads=1):
        import av

        self.path = str(path)
        self.num_threads = num_threads
        with av.open(self.path) as container:
            if not container.streams.video:
                raise RuntimeError("the file has no video stream")
            stream = container.streams.video[0]
            self.fps = float(stream.average_rate or 0)
            self._count = sum(1 for packet in container.demux(stream) if packet.size)

    def __len__(self):
        return self._count

    def iter_frames(self, indices):
        """Yield the frames at sorted ``indices`` (``(H, W, 3)`` uint8) in one forward pass."""
        import av

        wanted = list(indices)
        if not wanted:
            return
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = self.num_threads
            position = 0
            for index, frame in enumerate(container.decode(stream)):
                if index != wanted[position]:
                    continue
                array = frame.to_ndarray(format="rgb24")
                while position < len(wanted) and wanted[position] == index:
                    yield array
                    position += 1
                if position == len(wanted):
                    return
        raise RuntimeError(
            f"frame {wanted[position]} is past the last decodable frame "
            f"(the container reports {self._count})"
        )

    def get_batch(self, indices):
        """Frames at ``indices`` (any order, repeats allowed) as ``(U, H, W, 3)`` uint8."""
        import numpy as np

        unique = sorted(set(indices))
        decoded = dict(zip(unique, self.iter_frames(unique), strict=True))
        return np.stack([decoded[i] for i in indices])


def open_reader(path, num_threads=1, backend=None):
    """Open a video with ``backend`` (``"decord"``, ``"pyav"``; None: :func:`default_backend`).

    Returns:
        A reader with ``len()``, ``fps``, ``get_batch(indices)`` and ``iter_frames(sorted_indices)``.
    """
    backend = backend or default_backend()
    if backend == "decord":
        return DecordReader(path, num_threads)
    if backend == "pyav":
        return PyAVReader(path, num_threads)
    raise ValueError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")


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


def extract_video(
    video, frame_dir, tmp_root, *, fps, short_side, frame_template, jpeg_quality, backend=None
):
    """Decode one video into JPEG frames in ``frame_dir``; returns the number of frames.

    The frames are written to a fresh folder under ``tmp_root`` (same file system) and renamed
    to ``frame_dir`` only when all are written.
    """
    import numpy as np
    from PIL import Image

    reader = open_reader(video, 1, backend)
    indices = resample_indices(len(reader), reader.fps, fps)
    if not indices:
        raise RuntimeError("the video has no frames")
    tmp = Path(tmp_root) / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir(parents=True)
    try:
        written = 0
        for array in reader.iter_frames(indices):  # (H, W, 3)
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
    kind = request[0]
    if kind == "open":
        state["reader"] = None  # release the previous file before opening the next
        state["reader"] = open_reader(request[1], request[2], request[3])
        return len(state["reader"])
    if kind == "get":
        if state.get("reader") is None:
            raise RuntimeError("no video is open")
        return state["reader"].get_batch(request[1])
    if kind == "fps":
        if state.get("reader") is None:
            raise RuntimeError("no video is open")
        return state["reader"].fps
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
