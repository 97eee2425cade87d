"""Images in (decoding with limits, orientation, resizing); MP4 out (H.264, yuv420p, faststart)."""

from __future__ import annotations

import base64
import binascii
import io
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps


class MediaError(ValueError):
    """An input image that cannot be used; the message is safe to show to the client."""


def decode_base64(data: str) -> bytes:
    """Bytes of a base64 string or a ``data:image/...;base64,`` URL."""
    payload = data.strip()
    if payload.startswith("data:"):
        header, _, payload = payload.partition(",")
        if ";base64" not in header:
            raise MediaError("image data URLs must be base64-encoded")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError("image is not valid base64") from exc


# Formats accepted as input images. Pillow can open many more (some through external programs,
# e.g. EPS through Ghostscript); a client's upload is only ever tried as one of these.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
UNDECODABLE = "image could not be decoded (PNG, JPEG or WebP expected)"


def image_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding it; refuses broken, unknown
    and over-large images."""
    if not data:
        raise MediaError("image is empty")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
            width, height = probe.size
    except Exception as exc:  # noqa: BLE001 - a client's bytes may break the decoder any way
        raise MediaError(UNDECODABLE) from exc
    if width * height > max_pixels:
        raise MediaError(f"image is {width}x{height}; at most {max_pixels} pixels are accepted")
    return width, height


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode image bytes to an upright RGB image, refusing huge or broken files."""
    image_size(data, max_pixels)
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
            probe.load()
            image = ImageOps.exif_transpose(probe)
            return image.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - whatever the decoder raises, the image is bad
        raise MediaError(UNDECODABLE) from exc


def fitted_png(data: bytes, max_pixels: int, width: int, height: int) -> bytes:
    """The image in ``data`` decoded, fitted to ``width`` x ``height`` and saved as PNG."""
    return image_to_png(fit_image(decode_image(data, max_pixels), width, height))


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale and centre-crop ``image`` to exactly ``width`` x ``height``."""
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)


def image_to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_to_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def temp_prefix() -> str:
    """Prefix of this process's temp files: they name the process, so that files left by one
    that was killed can be told apart and removed (``remove_orphaned_temp_files``)."""
    return f"videoserve-{os.getpid()}-"


def remove_orphaned_temp_files(folder: Path | None = None) -> int:
    """Remove temp files and folders of videoserve processes that no longer run (a replica
    killed while encoding cannot remove its own); how many were removed."""
    folder = folder or Path(tempfile.gettempdir())
    removed = 0
    for path in folder.glob("videoserve-*-*"):
        pid = path.name.split("-")[1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed += 1
        except OSError:
            pass  # another process removed it, or it is not ours to remove
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


class Mp4Writer:
    """H.264 yuv420p MP4 with the index up front (+faststart), fed frame chunks in order.

    ``add`` encodes at once on the caller's thread; ``StreamingMp4Encoder`` runs it on a
    thread of its own so encoding overlaps with whatever produces the frames.
    """

    def __init__(self, fps: int):
        self.fps = fps
        self.frames = 0
        self.height = self.width = 0
        self._container: Any = None
        self._stream: Any = None
        # faststart rewrites the file after muxing, which needs a real seekable file.
        fd, self._path = tempfile.mkstemp(prefix=temp_prefix(), suffix=".mp4")
        os.close(fd)

    def _open(self, height: int, width: int) -> None:
        import av

        self.height, self.width = height, width
        self._container = av.open(self._path, mode="w", options={"movflags": "+faststart"})
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        # zerolatency: no lookahead and no B-frames, so each frame is written as it arrives and
        # finishing the file after the last frame takes milliseconds (with x264's default frame
        # threads and lookahead it encoded ~25 buffered frames at the end: +0.23 s at 480x832).
        # The cost is a somewhat larger file at the same quality (crf 18).
        stream.options = {"crf": "18", "preset": "veryfast", "tune": "zerolatency"}
        self._stream = stream

    def add(self, frames: np.ndarray) -> None:
        """Encode ``frames`` (T, H, W, 3 uint8)."""
        import av

        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {frames.shape}")
        if self._container is None:
            self._open(frames.shape[1], frames.shape[2])
        elif frames.shape[1:3] != (self.height, self.width):
            raise ValueError(f"frame size changed to {frames.shape[1:3]} mid-video")
        for frame in frames:
            packets = self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24"))
            self._container.mux(packets)
        self.frames += len(frames)

    def finish(self) -> bytes:
        """Flush the encoder and return the MP4 bytes; the temp file is removed."""
        try:
            if self._container is None:
                raise ValueError("no frames to encode")
            self._container.mux(self._stream.encode())
            self._container.close()
            self._container = None
            return Path(self._path).read_bytes()
        finally:
            self.abort()

    def abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the file is thrown away anyway
                pass
            self._container = None
        Path(self._path).unlink(missing_ok=True)


class StreamingMp4Encoder:
    """Encodes chunks on a background thread while the producer makes the next ones.

    ``put`` takes a callable returning a (T, H, W, 3) uint8 array; it is called on the encoder
    thread, so it may block (e.g. waiting for a GPU-to-host copy) without stalling the producer.
    """

    def __init__(self, fps: int):
        self._writer = Mp4Writer(fps)
        self._queue: queue.Queue[Callable[[], np.ndarray] | None] = queue.Queue()
        self._error: BaseException | None = None
        self.busy_s = 0.0  # time spent encoding (overlapped with the producer)
        self._thread = threading.Thread(target=self._run, name="mp4-encoder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                frames = chunk()
                start = time.perf_counter()
                self._writer.add(frames)
                self.busy_s += time.perf_counter() - start
            except BaseException as exc:  # noqa: BLE001 - re-raised by finish()
                self._error = exc

    def put(self, chunk: Callable[[], np.ndarray]) -> None:
        self._queue.put(chunk)

    @property
    def frames(self) -> int:
        return self._writer.frames

    @property
    def size(self) -> tuple[int, int]:
        return self._writer.height, self._writer.width

    def finish(self) -> bytes:
        """Wait for queued chunks, flush and return the MP4 bytes."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            self._writer.abort()
            raise self._error
        start = time.perf_counter()
        data = self._writer.finish()
        self.busy_s += time.perf_counter() - start
        return data

    def abort(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._writer.abort()


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """Encode ``frames`` (T, H, W, 3 uint8) as H.264 yuv420p MP4 with the index up front."""
    writer = Mp4Writer(fps)
    try:
        writer.add(frames)
        return writer.finish()
    finally:
        writer.abort()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class VideoInfo:
    """What a player sees in an MP4: decoded frame count, size, codec and layout."""

    frames: int
    width: int
    height: int
    codec: str
    pix_fmt: str
    fps: float
    faststart: bool


def top_level_boxes(data: bytes) -> list[str]:
    """Names of the top-level ISO-BMFF boxes, in file order."""
    names, offset = [], 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        names.append(data[offset + 4 : offset + 8].decode("latin-1"))
        if size == 1:
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        if size < 8:
            break
        offset += size
    return names


def probe_mp4(data: bytes) -> VideoInfo:
    """Decode every frame of an MP4 and report what was found."""
    import av

    boxes = top_level_boxes(data)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        count, width, height, pix_fmt = 0, 0, 0, ""
        for frame in container.decode(stream):
            count += 1
            width, height, pix_fmt = frame.width, frame.height, frame.format.name
        return VideoInfo(
            frames=count,
            width=width,
            height=height,
            codec=stream.codec_context.name,
            pix_fmt=pix_fmt,
            fps=float(stream.average_rate or 0),
            faststart="moov" in boxes
            and "mdat" in boxes
            and boxes.index("moov") < boxes.index("mdat"),
        )
