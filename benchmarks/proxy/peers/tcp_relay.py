"""A bare TCP relay on uvloop: bytes in, same bytes out, no HTTP parsing at all.

Each client connection gets its own upstream connection; flow control both ways (a side whose write buffer
is full pauses reading on the other side). The ceiling for any Python proxy on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import uvloop


class Half(asyncio.Protocol):
    """One side of a relayed connection; ``peer`` is the other side."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Half | None = None
        self.pending: list[bytes] = []
        self.closed = False
        self.got_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:  # the upstream connection is still being made
            self.pending.append(data)

    def eof_received(self) -> bool:
        self.got_eof = True
        peer = self.peer
        if peer is None or peer.transport is None or peer.got_eof or not peer.transport.can_write_eof():
            # Both directions are finished (or cannot be half-closed): close both, or the sockets linger.
            if peer is not None and peer.transport is not None:
                peer.transport.close()
            return False
        peer.transport.write_eof()  # pass the half-close on; the other direction may still carry data
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()

    # Our write buffer is full: stop reading from the other side until it drains.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class ClientSide(Half):
    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self.upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self.connect_upstream())

    async def connect_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(Half, *self.upstream)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        assert isinstance(upstream, Half)
        if self.closed:
            assert upstream.transport is not None
            upstream.transport.close()
            return
        upstream.peer, self.peer = self, upstream
        assert upstream.transport is not None
        for data in self.pending:
            upstream.transport.write(data)
        self.pending.clear()


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ClientSide(upstream), *listen, backlog=4096)
    async with server:
        await server.serve_forever()


def split_address(text: str) -> tuple[str, int]:
    text = text.removeprefix("http://").rstrip("/")
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT or HOST:PORT")
    parser.add_argument("--listen", default="127.0.0.1:8003", help="HOST:PORT")
    args = parser.parse_args()
    uvloop.run(serve(split_address(args.listen), split_address(args.upstream)))


if __name__ == "__main__":
    main()
