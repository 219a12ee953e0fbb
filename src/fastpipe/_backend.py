"""Pick the Pipe implementation: the compiled type unless told otherwise.

``FASTPIPE_NO_EXTENSIONS`` (any value but empty or ``0``) selects the pure-Python twin, and so does any
interpreter other than CPython. An *absent* extension falls back with a warning; a present but broken
one raises, so a bad build never ships quietly as the slow twin.

The same switch covers the compiled request path: modules such as ``fastpipe/http/upstream.py`` are also
compiled, from the same source (Cython's pure-Python mode, with a ``.pxd`` beside them), and a compiled
module shadows its ``.py``. With the switch set, :class:`SourceFirst` makes Python import the ``.py``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Sequence

NO_EXTENSIONS = os.environ.get("FASTPIPE_NO_EXTENSIONS", "") not in ("", "0") or (sys.implementation.name != "cpython")


class SourceFirst(importlib.abc.MetaPathFinder):
    """Import a fastpipe module from its ``.py`` where a compiled build of it sits beside it."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not name.startswith("fastpipe.") or path is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return None
        source = Path(spec.loader.path).parent / (name.rpartition(".")[2] + ".py")
        return importlib.util.spec_from_file_location(name, source) if source.is_file() else None


def is_compiled(module: ModuleType) -> bool:
    """Whether ``module`` was loaded from a compiled build (not from its ``.py``)."""
    return isinstance(getattr(module.__spec__, "loader", None), importlib.machinery.ExtensionFileLoader)


def check_fresh(module: ModuleType) -> None:
    """Warn when a module compiled in place (a source checkout, where Cython's ``.c`` sits beside it) is
    older than its ``.py``: an edit not rebuilt (``make build``) would otherwise run the old code without a
    word. An installed package is left alone: its files' times are those of the unpacking."""
    if not is_compiled(module) or module.__file__ is None:
        return
    compiled = Path(module.__file__)
    stem = module.__name__.rpartition(".")[2]
    source = compiled.parent / (stem + ".py")
    if not (compiled.parent / (stem + ".c")).is_file() or not source.is_file():
        return
    if source.stat().st_mtime > compiled.stat().st_mtime:
        warnings.warn(
            f"fastpipe: {compiled.name} is older than {source.name}; the compiled build runs the old code"
            " (rebuild with `make build` or `pip install -e .`)",
            RuntimeWarning,
            stacklevel=3,
        )


if NO_EXTENSIONS and not any(isinstance(finder, SourceFirst) for finder in sys.meta_path):
    sys.meta_path.insert(0, SourceFirst())

if TYPE_CHECKING:
    from ._pipe_py import Pipe, wrap

    EXTENSION = False
elif NO_EXTENSIONS:
    from ._pipe_py import Pipe, wrap

    EXTENSION = False
else:
    try:
        from ._pipe import Pipe, wrap
    except ModuleNotFoundError as exc:
        if exc.name != "fastpipe._pipe":
            raise
        warnings.warn(
            "fastpipe: the compiled Pipe is not built, using the pure-Python twin "
            "(rebuild with `pip install -e .`, or set FASTPIPE_NO_EXTENSIONS=1 to silence this)",
            RuntimeWarning,
            stacklevel=2,
        )
        from ._pipe_py import Pipe, wrap

        EXTENSION = False
    else:
        EXTENSION = True

__all__ = ("EXTENSION", "NO_EXTENSIONS", "Pipe", "SourceFirst", "check_fresh", "is_compiled", "wrap")
