"""Read a JPEG's marker structure without decoding it: dimensions, progressive or not, scans.

A progressive JPEG is decoded scan by scan, and every scan walks every block of the image
however few bytes it holds: a 2048x2048 progressive file with its last scan repeated a
thousand times is 33 KB and takes seconds to decode (about 5 ms per scan here). Pillow
offers no way to stop libjpeg after N scans, so the frame codec counts them first, from
the markers, at the cost of one regex pass over the bytes (C speed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# SOFn markers that carry the frame header (C4 DHT, C8 JPG and CC DAC are not frames).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Progressive frames: SOF2 (Huffman), SOF6 (differential), SOF10/SOF14 (arithmetic).
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
# Inside entropy-coded data a marker is 0xFF followed by anything but 0x00 (a stuffed
# 0xFF byte), 0xD0-0xD7 (restart markers, part of the scan) or 0xFF (fill).
_NEXT_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")


@dataclass(frozen=True)
class JpegLayout:
    width: int
    height: int
    progressive: bool
    scans: int


def is_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8"


def jpeg_layout(data: bytes) -> JpegLayout | None:
    """The layout of a JPEG file, or None when its markers are broken (the decoder then
    gets to say why). Counts every SOS up to EOI or the end of the data."""
    if not is_jpeg(data):
        return None
    pos, n = 2, len(data)
    width = height = 0
    progressive = False
    scans = 0
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == _EOI:
            break
        if marker == _SOI or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2  # markers without a length field
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return None
        if marker in _SOF and pos + 9 <= n:
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            progressive = marker in _PROGRESSIVE
        pos += 2 + length
        if marker == _SOS:
            scans += 1
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                break  # truncated after its last scan: the decoder decides
            pos = found.start()
    return JpegLayout(width, height, progressive, scans)
