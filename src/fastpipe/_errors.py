"""Exceptions shared by both Pipe implementations, so ``except`` clauses never depend on the backend."""

from __future__ import annotations

import asyncio
import sys

__all__ = ("PipeError", "report_callback_error")


class PipeError(Exception):
    """A pull on a pipe whose source already failed.

    The original error propagated once, from the pull that met it; every later pull raises this,
    chained from that error (``__cause__``), so a failed stream can never look like a clean end.
    """


def report_callback_error(message: str, exc: BaseException, pipe: object) -> None:
    """Hand an exception raised by a user callback (on_release, a tap, a sink) to the event loop.

    Such errors must never leak into the stream: the client's body is not the place to learn that a
    metrics hook is broken. Outside a running loop they go to ``sys.unraisablehook``.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        sys.unraisablehook(_Unraisable(exc, message, pipe))  # type: ignore[arg-type]
        return
    loop.call_exception_handler({"message": message, "exception": exc, "pipe": pipe})


class _Unraisable:
    """The record ``sys.unraisablehook`` expects."""

    __slots__ = ("err_msg", "exc_traceback", "exc_type", "exc_value", "object")

    def __init__(self, exc: BaseException, message: str, obj: object) -> None:
        self.exc_type = type(exc)
        self.exc_value = exc
        self.exc_traceback = exc.__traceback__
        self.err_msg = message
        self.object = obj
