"""What both Pipe implementations share, because the contract does not need two copies of it.

``END_OF_BODY`` marks a clean end fed into a pushed pipe behind its queued chunks (a failure is marked by
the exception itself). ``wrap_for(pipe_type)`` makes the ``wrap`` function each implementation exports.
"""

from __future__ import annotations

from typing import Any, AsyncIterable, Callable, Protocol, TypeVar

from ._chunks import Chunk

__all__ = ("END_OF_BODY", "Wrap", "wrap_for")

P = TypeVar("P")
P_co = TypeVar("P_co", covariant=True)


class Wrap(Protocol[P_co]):
    """The signature of ``wrap``."""

    def __call__(self, body: AsyncIterable[Chunk] | None, owner: object = None, **options: Any) -> P_co | None: ...


class _EndOfBody:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END_OF_BODY"


END_OF_BODY: Any = _EndOfBody()


def wrap_for(pipe_type: Callable[..., P]) -> Wrap[P]:
    """The ``wrap`` of one implementation: ``pipe_type(body, owner, **options)``, or None for no body."""

    def wrap(body: AsyncIterable[Chunk] | None, owner: object = None, **options: Any) -> P | None:
        """``Pipe(body, owner, **options)``, or None for a bodyless response."""
        if body is None:
            return None
        return pipe_type(body, owner, **options)

    return wrap
