"""Hand-written chunked transfer encoding with optional streaming gzip and a drop-the-connection fault."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from io import BufferedIOBase


class Dropped(Exception):
    """The drop_after_bytes fault fired: the caller must close the socket without the final chunk."""


class ChunkedBody:
    def __init__(
        self,
        wfile: BufferedIOBase,  # a request handler's wfile
        *,
        gzip: bool,
        drop_after: int | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.wfile = wfile
        # wbits=31 writes a gzip header/trailer; level 1 keeps compression cheap for big exports.
        self.compressor = zlib.compressobj(1, zlib.DEFLATED, 31) if gzip else None
        self.drop_after = drop_after
        self.on_bytes = on_bytes
        self.sent = 0

    def write(self, data: bytes) -> None:
        if self.compressor is not None:
            data = self.compressor.compress(data)
        self._send(data)

    def finish(self) -> None:
        if self.compressor is not None:
            self._send(self.compressor.flush())
        if self.drop_after is not None:
            # The body was shorter than the drop point: still end abruptly so the fault always shows.
            self.wfile.flush()
            raise Dropped
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _send(self, data: bytes) -> None:
        if not data:
            return
        if self.drop_after is not None and self.sent + len(data) >= self.drop_after:
            keep = data[: self.drop_after - self.sent]
            if keep:
                self._chunk(keep)
            self.wfile.flush()
            raise Dropped
        self._chunk(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"".join((b"%x\r\n" % len(data), data, b"\r\n")))
        self.sent += len(data)
        if self.on_bytes is not None:
            self.on_bytes(len(data))
