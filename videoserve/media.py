"""Images in (decoding with limits, orientation, resizing); MP4 out (H.264, yuv420p, faststart)."""

from __future__ import annotations

import base64
import binascii
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


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


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode image bytes to an upright RGB image, refusing huge or broken files."""
    if not data:
        raise MediaError("image is empty")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise MediaError(
                    f"image is {width}x{height}; at most {max_pixels} pixels are accepted"
                )
            probe.load()
            image = ImageOps.exif_transpose(probe)
            return image.convert("RGB")
    except MediaError:
        raise
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise MediaError("image could not be decoded (PNG, JPEG or WebP expected)") from exc


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


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """Encode ``frames`` (T, H, W, 3 uint8) as H.264 yuv420p MP4 with the index up front."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {frames.shape}")
    _, height, width, _ = frames.shape
    # faststart rewrites the file after muxing, which needs a real seekable file.
    fd, tmp = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        with av.open(tmp, mode="w", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18", "preset": "veryfast"}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)


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
