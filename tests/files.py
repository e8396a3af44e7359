"""Files the tests write byte by byte, where Pillow cannot (a header alone, 48-bit RGB, a 16-bit transparency key)."""

import struct
import zlib


def png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes | None = None,
        chunks: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A PNG: IHDR, then `chunks` ((kind, payload), e.g. (b"tRNS", ...)), the filtered `rows` (each led by its
    filter byte) as IDAT unless None (a header alone: no pixel data), IEND."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    body = b"".join(chunk(kind, payload) for kind, payload in chunks)
    if rows is not None:
        body += chunk(b"IDAT", zlib.compress(rows))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + body + chunk(b"IEND", b"")
