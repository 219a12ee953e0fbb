"""What every test package shares: the two Pipe implementations side by side, and the event loops.

Async tests of the proxy (tests/http, tests/reliability, ...) run on uvloop, the proxy's loop, and those
marked ``both_loops`` on asyncio's own loop as well. The Pipe and adapter tests run on asyncio's loop, and on
uvloop too where marked ``both_loops`` (running all of them there is not done yet: the socket hazard test
hangs uvloop's loop.close() after its GC-driven transport close).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType

import pytest
import uvloop

from fastpipe._backend import NO_EXTENSIONS

IMPLEMENTATIONS = {"py": "fastpipe._pipe_py", "c": "fastpipe._pipe"}


@pytest.fixture(params=sorted(IMPLEMENTATIONS), ids=lambda name: name)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The module of one Pipe implementation (``Pipe``, ``wrap``); a missing build fails, never skips."""
    return importlib.import_module(IMPLEMENTATIONS[request.param])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # With FASTPIPE_NO_EXTENSIONS=1 the run proves the twin works alone: the compiled cases are left
    # out (the default run covers them), instead of failing on a module that was never meant to load.
    if not NO_EXTENSIONS:
        return

    def compiled(item: pytest.Item) -> bool:
        callspec = getattr(item, "callspec", None)
        return callspec is not None and callspec.params.get("impl") == "c"

    deselected = [item for item in items if compiled(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not compiled(item)]


LoopFactory = Callable[[], asyncio.AbstractEventLoop]
ASYNCIO_PACKAGES = tuple(Path(__file__).parent / name for name in ("pipe", "adapters"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_loops: run on asyncio's loop as well as uvloop")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, LoopFactory]:
    if item.get_closest_marker("both_loops") is not None:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    if any(item.path.is_relative_to(package) for package in ASYNCIO_PACKAGES):
        return {"asyncio": asyncio.new_event_loop}
    return {"uvloop": uvloop.new_event_loop}
