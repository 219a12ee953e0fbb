"""The WebSocket benchmark origin: an echo server on uvloop, hand-written so that it costs little per message.

``GET`` with ``Upgrade: websocket`` (any path): the RFC 6455 handshake (``Sec-WebSocket-Accept`` from the key),
then every data frame comes back as one unmasked frame with the same opcode and payload. Pings are answered
with pongs, a close frame with a close frame (then the connection closes). Fragmented messages are echoed
frame by frame (opcode kept; continuation frames stay continuation frames), which is what an echo needs.
Masked payloads are unmasked with ``websockets``' C helper, and skipped when the key is zero (the harness's
client masks with a zero key, which the RFC allows, so the origin does no per-byte work for it).

Any other ``GET`` is answered ``200`` with a small body and keep-alive, so the harness's readiness probe (and a
proxy's health check) works on the same port.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
from typing import cast

import uvloop
from websockets.speedups import apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 16 * 1024
MAX_FRAME = 64 * 1024 * 1024
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
ZERO_KEY = b"\x00\x00\x00\x00"
CLOSE, PING, PONG = 0x8, 0x9, 0xA


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame_head(first: int, length: int) -> bytes:
    """An unmasked frame head: ``first`` is the FIN/opcode byte."""
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


class Echo(asyncio.Protocol):
    """One connection: an HTTP head first, then WebSocket frames."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        # The frame being echoed: its payload is passed on as it arrives, piece by piece.
        self.remaining = 0  # payload bytes of the current frame still to come
        self.mask = ZERO_KEY
        self.offset = 0  # payload bytes of the current frame already seen (for the mask's phase)
        self.control: int | None = None  # a control frame's opcode: its payload is gathered, not streamed
        self.control_payload = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self.frames(data)
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self.fail(b"400 Bad Request")
            return
        head, rest = bytes(self.buffer[:end]), bytes(self.buffer[end + 4 :])
        self.buffer.clear()
        self.request(head, rest)

    def fail(self, status: bytes) -> None:
        if self.transport is not None:
            self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def request(self, head: bytes, rest: bytes) -> None:
        assert self.transport is not None
        lines = head.split(b"\r\n")
        fields: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if not lines[0].startswith(b"GET "):
            self.fail(b"405 Method Not Allowed")
            return
        if fields.get(b"upgrade", b"").lower() != b"websocket":
            self.transport.write(OK)
            if rest:  # a pipelined request: answer it as well
                self.data_received(rest)
            return
        key = fields.get(b"sec-websocket-key")
        if not key or b"upgrade" not in fields.get(b"connection", b"").lower():
            self.fail(b"400 Bad Request")
            return
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
        )
        self.upgraded = True
        if rest:
            self.frames(rest)

    def frames(self, data: bytes) -> None:
        """Echo frames; ``data`` may end anywhere, inside a head or a payload."""
        view = memoryview(data)
        while view and self.transport is not None:
            if self.remaining:
                piece = view[: self.remaining]
                view = view[len(piece) :]
                self.payload(piece)
                continue
            self.buffer += view
            view = memoryview(b"")
            if not self.head():
                return
            rest = bytes(self.buffer)
            self.buffer.clear()
            view = memoryview(rest)
            if not self.remaining:  # an empty payload: the frame is complete already
                self.frame_done()

    def head(self) -> bool:
        """Parse a frame head from ``buffer`` and drop it from there; False when it is not complete yet."""
        buffer = self.buffer
        if len(buffer) < 2:
            return False
        first, second = buffer[0], buffer[1]
        length, at = second & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                return False
            length, at = int.from_bytes(buffer[2:4], "big"), 4
        elif length == 127:
            if len(buffer) < 10:
                return False
            length, at = int.from_bytes(buffer[2:10], "big"), 10
        masked = second & 0x80
        if masked:
            if len(buffer) < at + 4:
                return False
            self.mask = bytes(buffer[at : at + 4])
            at += 4
        else:
            self.mask = ZERO_KEY
        if length > MAX_FRAME:
            assert self.transport is not None
            self.transport.close()
            return False
        del buffer[:at]
        opcode = first & 0x0F
        self.remaining, self.offset = length, 0
        if opcode >= CLOSE:
            self.control = opcode
            self.control_payload.clear()
        else:
            self.control = None
            assert self.transport is not None
            self.transport.write(frame_head(first, length))
        return True

    def payload(self, piece: memoryview) -> None:
        data: bytes | memoryview = piece
        if self.mask != ZERO_KEY:
            phase = self.offset % 4
            key = self.mask[phase:] + self.mask[:phase]
            data = apply_mask(piece, key)
        self.offset += len(piece)
        self.remaining -= len(piece)
        if self.control is not None:
            self.control_payload += data
        else:
            assert self.transport is not None
            self.transport.write(data)  # a view of the immutable bytes data_received got: nothing copied
        if not self.remaining:
            self.frame_done()

    def frame_done(self) -> None:
        control, self.control = self.control, None
        if control is None or self.transport is None:
            return
        payload = bytes(self.control_payload)
        if control == PING:
            self.transport.write(frame_head(0x80 | PONG, len(payload)) + payload)
        elif control == CLOSE:
            self.transport.write(frame_head(0x80 | CLOSE, len(payload[:2])) + payload[:2])
            self.transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:8010", help="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    uvloop.run(serve(host, int(port)))


if __name__ == "__main__":
    main()
