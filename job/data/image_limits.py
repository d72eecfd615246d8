"""The pixel limit: an image's width x height read from its header, without decoding it.

A decoder allocates width x height x channels bytes before it looks at a single pixel, and
an image's file size says nothing about that: a 48 KB PNG of 20000 x 20000 pixels costs
~1.2 GB per decode (and ~4.8 GB more once resized as float32). So every place that decodes
an image the user hands in checks its pixel count first, against one limit (`data.max_pixels`,
default `DEFAULT_MAX_PIXELS`):

- `prepare` refuses such an image as a bad row (`--max-pixels`), before PIL opens it;
- training and evaluation input pipelines skip it, counted and logged
  (`pipeline.within_pixel_limit`, the same reading done in the TensorFlow graph);
- `predict` refuses the file with an error line and predicts the others;
- an exported SavedModel's `serving_default` refuses it with an InvalidArgumentError.

`read_image_size` reads only the header of the four encodings TensorFlow decodes:
JPEG (the first SOFn segment), PNG (IHDR), GIF (the logical screen, which TensorFlow
allocates for every frame) and BMP (the DIB header). It is pure Python (no TensorFlow, no
PIL), reads a few hundred bytes for most files, and never more than the JPEG segments
before the frame header.
"""

from __future__ import annotations

import io
import struct
from typing import BinaryIO

from job.config import DEFAULT_MAX_PIXELS

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "check_pixel_limit",
    "format_pixels",
    "pixel_limit_problem",
    "read_image_size",
    "read_image_size_of_file",
]

# JPEG start-of-frame markers: SOF0-3, 5-7, 9-11, 13-15 (C4 is DHT, C8 JPG, CC DAC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field: TEM, RST0-7, SOI.
_JPEG_NO_LENGTH = frozenset([0x01, *range(0xD0, 0xD9)])


def read_image_size(source: bytes | BinaryIO) -> tuple[str, int, int] | None:
    """(encoding, width, height) from an image's header, or None if it cannot be read there.

    Args:
        source: the encoded image, or a binary file positioned at its start (seekable).
    Returns:
        ("jpeg" | "png" | "gif" | "bmp", width, height); None for other encodings and for a
        header that is cut short or malformed (the decoder then says what is wrong).
    """
    fh = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    head = fh.read(26)
    if head.startswith(b"\xff\xd8\xff"):
        fh.seek(-len(head) + 2, io.SEEK_CUR)
        size = _jpeg_size(fh)
        return ("jpeg", *size) if size else None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(head) < 24 or head[12:16] != b"IHDR":
            return None
        width, height = struct.unpack(">II", head[16:24])
        return "png", width, height
    if head.startswith(b"GIF8"):
        if len(head) < 10:
            return None
        width, height = struct.unpack("<HH", head[6:10])
        return "gif", width, height
    if head.startswith(b"BM"):
        if len(head) < 18:
            return None
        (dib_size,) = struct.unpack("<I", head[14:18])
        if dib_size == 12:  # BITMAPCOREHEADER: 16-bit sizes
            if len(head) < 22:
                return None
            width, height = struct.unpack("<HH", head[18:22])
        else:
            if len(head) < 26:
                return None
            width, height = struct.unpack("<ii", head[18:26])
        return "bmp", abs(width), abs(height)  # a negative height means top-down rows
    return None


def _jpeg_size(fh: BinaryIO) -> tuple[int, int] | None:
    """(width, height) from the first SOFn segment; `fh` is just past the SOI marker."""
    while True:
        byte = fh.read(1)
        if byte != b"\xff":
            return None  # not at a marker: a malformed stream
        marker = fh.read(1)
        while marker == b"\xff":  # fill bytes
            marker = fh.read(1)
        if not marker:
            return None
        code = marker[0]
        if code in _JPEG_NO_LENGTH:
            continue
        if code in (0xD9, 0xDA):  # EOI or a scan before any frame header
            return None
        raw = fh.read(2)
        if len(raw) < 2:
            return None
        (length,) = struct.unpack(">H", raw)
        if length < 2:
            return None
        if code in _JPEG_SOF:
            body = fh.read(5)
            if len(body) < 5:
                return None
            height, width = struct.unpack(">HH", body[1:5])
            return width, height
        fh.seek(length - 2, io.SEEK_CUR)


def read_image_size_of_file(path: str) -> tuple[str, int, int] | None:
    """`read_image_size` of a local file, reading only its header."""
    with open(path, "rb") as fh:
        return read_image_size(fh)


def format_pixels(pixels: int) -> str:
    """A pixel count as people say it: "400 Mpx", "40 Mpx", "1.2 Mpx", "4,096 px"."""
    return f"{pixels / 1e6:.4g} Mpx" if pixels >= 1_000_000 else f"{pixels:,} px"


def pixel_limit_problem(width: int, height: int, max_pixels: int, setting: str) -> str | None:
    """None if width x height is within `max_pixels`, else the problem in words.

    Args:
        setting: how the user changes the limit, e.g. "--max-pixels" or "data.max_pixels".
    """
    pixels = int(width) * int(height)
    if pixels <= max_pixels:
        return None
    limit = format_pixels(max_pixels)
    return f"{width}x{height} = {format_pixels(pixels)} is above the pixel limit of {limit} ({setting})"


def check_pixel_limit(source: bytes | BinaryIO, max_pixels: int, setting: str) -> str | None:
    """None if the image is within the limit or its header cannot be read, else the problem.

    An image whose header cannot be read is left to the decoder, which then says what is
    wrong with it (and, for the four encodings above, allocates nothing for a header it
    cannot read either).
    """
    fh = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    start = fh.tell()
    size = read_image_size(fh)
    if size is None:
        return None
    encoding, width, height = size
    problem = pixel_limit_problem(width, height, max_pixels, setting)
    if problem or encoding != "gif":
        return problem
    # TensorFlow's GIF decoder reads every frame (even when only the first is kept), each
    # at least the screen's size: the frames together are what it allocates.
    fh.seek(start)
    frames = _gif_frames(fh)
    pixels = sum(max(width * height, w * h) for w, h in frames)
    if pixels <= max_pixels:
        return None
    return (
        f"a GIF of {len(frames)} frames on a {width}x{height} screen decodes to {format_pixels(pixels)}, above "
        f"the pixel limit of {format_pixels(max_pixels)} ({setting})"
    )


def _skip_sub_blocks(fh: BinaryIO) -> bool:
    """Skip GIF data sub-blocks up to the terminator; False if the stream ends first."""
    while True:
        size = fh.read(1)
        if not size:
            return False
        if size[0] == 0:
            return True
        fh.seek(size[0], io.SEEK_CUR)


def _gif_frames(fh: BinaryIO) -> list[tuple[int, int]]:
    """(width, height) of every image in a GIF, from the image descriptors (no LZW decoding)."""
    header = fh.read(13)
    if len(header) < 13:
        return []
    if header[10] & 0x80:  # a global colour table follows the screen descriptor
        fh.seek(3 * 2 ** ((header[10] & 0x07) + 1), io.SEEK_CUR)
    frames = []
    while True:
        kind = fh.read(1)
        if kind == b"\x2c":  # image descriptor
            desc = fh.read(9)
            if len(desc) < 9:
                return frames
            frames.append(struct.unpack("<HH", desc[4:8]))
            if desc[8] & 0x80:  # local colour table
                fh.seek(3 * 2 ** ((desc[8] & 0x07) + 1), io.SEEK_CUR)
            fh.read(1)  # LZW minimum code size
            if not _skip_sub_blocks(fh):
                return frames
        elif kind == b"\x21":  # extension: a label, then sub-blocks
            fh.read(1)
            if not _skip_sub_blocks(fh):
                return frames
        else:  # trailer, or anything a decoder would stop at
            return frames
