"""Zero-copy: each chunk yielded is the very object the source produced."""

from __future__ import annotations

import array
from types import ModuleType
from typing import Any

import pytest

from ._support import BareSource, drain

CHUNKS: dict[str, Any] = {
    "bytes": lambda: bytes(range(200)),
    "bytearray": lambda: bytearray(b"mutable" * 10),
    "memoryview": lambda: memoryview(b"0123456789")[2:8],
    "memoryview_of_ints": lambda: memoryview(array.array("i", range(16))),
    "array": lambda: array.array("d", [1.5, 2.5]),
}


@pytest.mark.parametrize("kind", sorted(CHUNKS))
async def test_chunk_passes_through_as_the_same_object(impl: ModuleType, kind: str) -> None:
    first, second = CHUNKS[kind](), CHUNKS[kind]()
    pipe = impl.Pipe(BareSource([first, second]))
    received = await drain(pipe)
    assert len(received) == 2
    assert received[0] is first
    assert received[1] is second


async def test_bytearray_is_shared_not_copied(impl: ModuleType) -> None:
    # The contract shares buffers: a mutation after delivery shows through, proving no copy was made.
    chunk = bytearray(b"before")
    pipe = impl.Pipe(BareSource([chunk]))
    (received,) = await drain(pipe)
    chunk[:] = b"after!"
    assert received == b"after!"
