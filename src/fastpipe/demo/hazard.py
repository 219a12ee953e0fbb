"""``fastpipe demo hazard``: the bug fastpipe exists for, shown side by side.

A local origin streams a body over HTTP/1.1 on 127.0.0.1. A minimal client response object (the *owner*)
closes its connection when it is collected, as client libraries' finalizers do. Two gateways hand on only
the body and drop the response object while forcing garbage collection between chunks:

* the naive passthrough (``async for chunk in body: yield chunk``) loses the owner, its finalizer closes
  the connection, and the stream ends early *as if it were complete*;
* ``fastpipe.Pipe(body, owner=response)`` keeps the owner until the body ends: every byte arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from .._backend import EXTENSION, Pipe
from .._loop import run as run_on_best_loop

CHUNK_PAUSE = 0.0005  # seconds between origin chunks: the body must still be in flight when gc runs


def origin_body(size: int, chunk_size: int) -> list[bytes]:
    """A deterministic body, in the chunks the origin will send."""
    pattern = hashlib.sha256(b"fastpipe").digest() * (chunk_size // 32 + 1)
    chunks = []
    for offset in range(0, size, chunk_size):
        length = min(chunk_size, size - offset)
        chunks.append(bytes([offset // chunk_size % 251]) + pattern[: length - 1])
    return chunks


async def start_origin(chunks: list[bytes]) -> asyncio.Server:
    """An HTTP/1.1 origin on 127.0.0.1 that streams `chunks` slowly, with a Content-Length."""
    total = sum(len(chunk) for chunk in chunks)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % total)
            for chunk in chunks:
                if writer.is_closing():
                    break  # the naive gateway's client hung up: that is the failure the table shows
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(CHUNK_PAUSE)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: that is the naive gateway's failure, shown in the table
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


class OriginResponse:
    """A client response that owns its connection and closes it when collected, like a library's would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, length: int) -> None:
        self._reader = reader
        self._writer = writer
        self.length = length

    def body(self) -> AsyncIterator[bytes]:
        # The body holds the reader only, not the response: exactly what a gateway passes on.
        return read_until_eof(self._reader)

    def __del__(self) -> None:
        self._writer.transport.close()


async def read_until_eof(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while chunk := await reader.read(65536):
        yield chunk


async def fetch(port: int) -> OriginResponse:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /body HTTP/1.1\r\nHost: origin\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    return OriginResponse(reader, writer, length)


async def naive_gateway(port: int) -> tuple[AsyncIterator[bytes], int]:
    response = await fetch(port)
    body = response.body()

    async def passthrough() -> AsyncIterator[bytes]:
        async for chunk in body:
            yield chunk

    return passthrough(), response.length  # the response object is dropped here


async def pipe_gateway(port: int) -> tuple[AsyncIterator[bytes], int]:
    response = await fetch(port)
    return Pipe(response.body(), response), response.length  # the pipe keeps the response alive


@dataclass
class Outcome:
    name: str
    expected: int
    received: int
    sha256_ok: bool

    @property
    def verdict(self) -> str:
        if self.received == self.expected and self.sha256_ok:
            return "complete"
        return f"LOST {self.expected - self.received:,} bytes (ended cleanly!)"


async def stream_through(name: str, gateway: object, port: int, expected_sha: str) -> Outcome:
    body, length = await gateway(port)  # type: ignore[operator]
    digest = hashlib.sha256()
    received = 0
    async for chunk in body:
        digest.update(chunk)
        received += len(chunk)
        gc.collect()  # what a busy server does at any moment
    return Outcome(name, length, received, digest.hexdigest() == expected_sha)


async def run(size: int, chunk_size: int) -> list[Outcome]:
    chunks = origin_body(size, chunk_size)
    expected_sha = hashlib.sha256(b"".join(chunks)).hexdigest()
    server = await start_origin(chunks)
    port = server.sockets[0].getsockname()[1]
    try:
        return [
            await stream_through("naive passthrough", naive_gateway, port, expected_sha),
            await stream_through(
                f"fastpipe.Pipe ({'compiled' if EXTENSION else 'pure Python'})", pipe_gateway, port, expected_sha
            ),
        ]
    finally:
        server.close()
        await server.wait_closed()


def render(outcomes: Sequence[Outcome]) -> str:
    rows = [("gateway", "expected", "received", "sha256", "result")]
    for outcome in outcomes:
        rows.append(
            (
                outcome.name,
                f"{outcome.expected:,}",
                f"{outcome.received:,}",
                "match" if outcome.sha256_ok else "MISMATCH",
                outcome.verdict,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastpipe demo hazard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2 * 1024 * 1024, help="body size in bytes (default 2 MiB)")
    parser.add_argument("--chunk", type=int, default=16 * 1024, help="origin chunk size (default 16 KiB)")
    args = parser.parse_args(argv)
    if args.size < 1 or args.chunk < 2:
        parser.error("--size must be >= 1 and --chunk >= 2")
    print(f"Streaming a {args.size:,}-byte body from a local origin, forcing gc.collect() after every chunk...")
    outcomes = run_on_best_loop(lambda: run(args.size, args.chunk))
    print(render(outcomes))
    naive, piped = outcomes
    if not piped.sha256_ok or piped.received != piped.expected:
        print("fastpipe lost data: this is a bug, please report it.", file=sys.stderr)
        return 1
    if naive.received < naive.expected:
        print("\nThe naive gateway's body ended early without an error; the Pipe kept the owner and lost nothing.")
    else:
        print("\nThe naive gateway got lucky this time (the body was buffered before collection).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
