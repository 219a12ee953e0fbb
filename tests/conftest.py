"""What every test package shares: the two Pipe implementations side by side, and the event loops.

Which loop an async test runs on (the ids ``asyncio`` and ``uvloop``):

* the Pipe and adapter tests (tests/pipe, tests/adapters): both loops, every one of them: the library is
  used on either (``FASTPIPE_TESTS_ONE_LOOP=1`` keeps them to asyncio's: the passes of CI that repeat the
  suite for the twin and for other Pythons, after the full run covered both loops);
* the other async tests (the proxy: tests/http, tests/reliability, ...): uvloop, the proxy's loop, and
  asyncio's own loop as well where marked ``both_loops``.

Synchronous tests that make a loop of their own choose it themselves. uvloop's loop is the one below, whose
close() cannot hang on a handle a test left open: the leak fails the test instead.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import warnings
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
BOTH_LOOPS_PACKAGES = tuple(Path(__file__).parent / name for name in ("pipe", "adapters"))
ONE_LOOP = os.environ.get("FASTPIPE_TESTS_ONE_LOOP") == "1"


class _UvloopClosingInBounds(uvloop.Loop):
    """uvloop's loop, whose close() cannot hang on a handle a test left open.

    uvloop's close() closes the handles still open after warning ``unclosed resource`` (ResourceWarning),
    from a libuv callback that swallows exceptions. With warnings as errors (our filterwarnings) the warning
    raises there, that handle is never closed, and close() waits for it forever; pytest-timeout is no help
    when the test failed first (it stops its timer on a failure). Here the warnings of close() are recorded
    while it runs and issued again once it has returned: the same filters apply, so a leak still fails the
    test, and the loop is closed.
    """

    def close(self) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            super().close()
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_loops: run on asyncio's loop as well as uvloop")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, LoopFactory]:
    if any(item.path.is_relative_to(package) for package in BOTH_LOOPS_PACKAGES):
        if ONE_LOOP:
            return {"asyncio": asyncio.new_event_loop}
        return {"asyncio": asyncio.new_event_loop, "uvloop": _UvloopClosingInBounds}
    if item.get_closest_marker("both_loops") is not None:
        return {"asyncio": asyncio.new_event_loop, "uvloop": _UvloopClosingInBounds}
    return {"uvloop": _UvloopClosingInBounds}
