"""Run a program's main coroutine on the best event loop at hand: uvloop when importable, else asyncio's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]], *, stock_loop: bool = False) -> T:
    """``main()`` on uvloop when it is importable (unless ``stock_loop``), else on asyncio's own loop."""
    if not stock_loop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main())  # type: ignore[arg-type]
    return asyncio.run(main())  # type: ignore[arg-type]
