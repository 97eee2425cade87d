import base64
import io

import numpy as np
import pytest
from PIL import Image

from videoserve.core.media import (
    MediaError,
    decode_base64,
    decode_image,
    encode_mp4,
    fit_image,
    probe_mp4,
    write_atomic,
)


def png_bytes(width=40, height=30, color=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_encode_mp4_is_h264_yuv420p_faststart_with_every_frame():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(9, 64, 96, 3), dtype=np.uint8)
    info = probe_mp4(encode_mp4(frames, fps=8))
    assert (info.frames, info.width, info.height) == (9, 96, 64)
    assert info.codec == "h264" and info.pix_fmt == "yuv420p" and info.faststart
    assert info.fps == pytest.approx(8)


def test_encode_mp4_rejects_float_frames():
    with pytest.raises(ValueError):
        encode_mp4(np.zeros((2, 16, 16, 3), dtype=np.float32), fps=8)


def test_base64_and_data_urls_decode():
    raw = png_bytes()
    encoded = base64.b64encode(raw).decode()
    assert decode_base64(encoded) == raw
    assert decode_base64("data:image/png;base64," + encoded) == raw
    with pytest.raises(MediaError):
        decode_base64("not base64!!")


def test_decode_image_limits_and_errors():
    assert decode_image(png_bytes(), max_pixels=10_000).size == (40, 30)
    with pytest.raises(MediaError, match="pixels"):
        decode_image(png_bytes(), max_pixels=100)
    with pytest.raises(MediaError, match="decoded"):
        decode_image(b"GIF89a-garbage", max_pixels=10_000)
    with pytest.raises(MediaError):
        decode_image(b"", max_pixels=10_000)


def test_decode_image_applies_exif_orientation():
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: a 40x30 landscape file is shown 30x40
    Image.new("RGB", (40, 30)).save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue(), max_pixels=10_000).size == (30, 40)


def test_fit_image_gives_exact_model_size():
    image = Image.new("RGB", (300, 100))
    assert fit_image(image, 64, 48).size == (64, 48)


def test_write_atomic_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "video.mp4"
    write_atomic(target, b"abc")
    write_atomic(target, b"defg")
    assert target.read_bytes() == b"defg"
    assert [p.name for p in target.parent.iterdir()] == ["video.mp4"]


def test_temp_files_of_dead_processes_are_removed(tmp_path):
    from videoserve.core.media import remove_orphaned_temp_files, temp_prefix

    dead = tmp_path / "videoserve-999999999-abc.mp4"  # no such pid
    dead_dir = tmp_path / "videoserve-999999999-in-xyz"
    mine = tmp_path / f"{temp_prefix()}def.mp4"
    other = tmp_path / "videoserve-check-123"
    for path in (dead, mine):
        path.write_bytes(b"x")
    dead_dir.mkdir()
    other.mkdir()
    assert remove_orphaned_temp_files(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name])


def test_any_decoder_failure_is_a_media_error():
    data = bytearray(png_bytes())
    data[8:12] = (5).to_bytes(4, "big")  # IHDR length 5: Pillow raised ValueError before
    with pytest.raises(MediaError):
        decode_image(bytes(data), max_pixels=10_000)
    with pytest.raises(MediaError):  # EPS would go to Ghostscript: not an accepted format
        decode_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n", max_pixels=10_000)
