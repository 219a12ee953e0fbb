"""pytest plugin for ``tools/memcheck.py``: run only the compiled Pipe's cases (the twin has no C to check).

Loaded with ``-p memcheck_plugin`` (``tools`` on ``PYTHONPATH``); deselects items parametrized with the
pure-Python implementation, keeps everything else (tests without the ``impl`` fixture and the
differential tests that run both).
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def twin_only(item: pytest.Item) -> bool:
        callspec = getattr(item, "callspec", None)
        return callspec is not None and callspec.params.get("impl") == "py"

    deselected = [item for item in items if twin_only(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not twin_only(item)]
