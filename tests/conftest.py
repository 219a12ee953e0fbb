"""Fixtures shared by every test package: the two Pipe implementations side by side."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

NO_EXTENSIONS = os.environ.get("FASTPIPE_NO_EXTENSIONS", "") not in ("", "0")
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
