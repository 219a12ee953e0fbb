"""Batched writes that keep flow control: ``transport.writelines``, or one ``write`` per piece where the
transport's own ``writelines`` forgets it.

asyncio's selector transport gained its own ``writelines`` in Python 3.12 (one ``sendmsg`` for the batch),
and that method never checks the high-water mark: ``pause_writing`` is not called however much it
buffers, so a client that reads nothing could make the proxy hold every response. uvloop's ``writelines``
and the inherited ``WriteTransport.writelines`` (which joins and calls ``write``) both pause as they should.
"""

from __future__ import annotations

import asyncio
from asyncio import selector_events
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ("writelines_of",)

_UNPAUSING_WRITELINES = vars(selector_events._SelectorSocketTransport).get("writelines")  # type: ignore[attr-defined]


def writelines_of(transport: asyncio.BaseTransport) -> Callable[[Iterable[Any]], None]:
    """The batched write to use on ``transport``: its ``writelines`` where that honours the write marks."""
    writelines: Callable[[Iterable[Any]], None] = transport.writelines  # type: ignore[attr-defined]
    if _UNPAUSING_WRITELINES is None or getattr(type(transport), "writelines", None) is not _UNPAUSING_WRITELINES:
        return writelines
    write = transport.write  # type: ignore[attr-defined]

    def write_each(pieces: Iterable[Any]) -> None:
        for piece in pieces:
            write(piece)

    return write_each
