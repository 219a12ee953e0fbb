"""What a chunk is: any bytes-like object, passed on as it is; its size is its bytes, not its items."""

from __future__ import annotations

from typing import Any, Union

Chunk = Union[bytes, bytearray, memoryview]


def chunk_nbytes(chunk: Any) -> int:
    """Bytes in a chunk (a memoryview of a multi-byte format counts bytes); TypeError if not bytes-like."""
    kind = type(chunk)
    if kind is bytes or kind is bytearray:
        return len(chunk)
    if kind is memoryview:
        return chunk.nbytes  # type: ignore[no-any-return]
    try:
        with memoryview(chunk) as view:
            return view.nbytes
    except TypeError:
        raise TypeError(f"Pipe chunks must be bytes-like, got {kind.__name__}") from None
