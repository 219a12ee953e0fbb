"""Batched writes that keep flow control: ``transport.writelines``, or one ``write`` per piece where the
transport's own ``writelines`` forgets it.

asyncio's selector transport gained its own ``writelines`` in Python 3.12 (one ``sendmsg`` for the batch),
and that method never checks the high-water mark: ``pause_writing`` is not called however much it
buffers, so a client that reads nothing could make the proxy hold every response. uvloop's ``writelines``
and the inherited ``WriteTransport.writelines`` (which joins and calls ``write``) both pause as they should.

Over TLS, uvloop's and asyncio's ``writelines`` encrypt each piece as a TLS record of its own: a response
head and its small body, or a request head and its JSON body, would cost two records (two encryptions here,
two decryptions at the peer) where one carries both. Small batches are joined into one write there.
"""

from __future__ import annotations

import asyncio
from asyncio import selector_events
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ("writelines_of",)

# The most plaintext one TLS record carries: a batch up to this size goes out as one record when joined,
# and joining a larger one would copy a body for no record saved.
TLS_RECORD_PAYLOAD = 16384

_UNPAUSING_WRITELINES = vars(selector_events._SelectorSocketTransport).get("writelines")  # type: ignore[attr-defined]


def writelines_of(transport: asyncio.BaseTransport) -> Callable[[Iterable[Any]], None]:
    """The batched write to use on ``transport``: its ``writelines`` where that honours the write marks,
    joined into one write where the transport encrypts (TLS) and the batch fits one record."""
    writelines: Callable[[Iterable[Any]], None] = transport.writelines  # type: ignore[attr-defined]
    if transport.get_extra_info("sslcontext") is not None:
        return _joined_when_small(transport.write, writelines)  # type: ignore[attr-defined]
    if _UNPAUSING_WRITELINES is None or getattr(type(transport), "writelines", None) is not _UNPAUSING_WRITELINES:
        return writelines
    write = transport.write  # type: ignore[attr-defined]

    def write_each(pieces: Iterable[Any]) -> None:
        for piece in pieces:
            write(piece)

    return write_each


def _joined_when_small(
    write: Callable[[Any], None], writelines: Callable[[Iterable[Any]], None]
) -> Callable[[Iterable[Any]], None]:
    def write_joined(pieces: Iterable[Any]) -> None:
        pieces = pieces if isinstance(pieces, (list, tuple)) else list(pieces)
        if sum(map(len, pieces)) <= TLS_RECORD_PAYLOAD:
            write(b"".join(pieces))
        else:
            writelines(pieces)

    return write_joined
