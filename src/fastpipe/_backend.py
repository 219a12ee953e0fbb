"""Pick the Pipe implementation: the compiled type unless told otherwise.

``FASTPIPE_NO_EXTENSIONS`` (any value but empty or ``0``) selects the pure-Python twin, and so does any
interpreter other than CPython. An *absent* extension falls back with a warning (and the compiled request
path, which calls the compiled Pipe in C, then runs from its ``.py`` files too); a present but broken one
raises, so a bad build never ships quietly as the slow twin.

The same switch covers the compiled request path: modules such as ``fastpipe/http/upstream.py`` are also
compiled, from the same source (Cython's pure-Python mode, with a ``.pxd`` beside them), and a compiled
module shadows its ``.py``. With the switch set, :class:`CompiledModules` makes Python import the ``.py``.
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


class CompiledModules(importlib.abc.MetaPathFinder):
    """How a fastpipe module with a compiled build beside its ``.py`` is imported (the compiled build would
    shadow the ``.py``): from the ``.py`` when ``prefer_source`` (the switch is set); otherwise compiled, with
    a warning when it was built in place (a source checkout, where Cython's ``.c`` sits beside it) and is older
    than its ``.py``, so an edit that was not rebuilt never runs as the old code unnoticed. An installed
    package is not judged by its files' times: they are those of the unpacking."""

    def __init__(self, prefer_source: bool) -> None:
        self.prefer_source = prefer_source

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not name.startswith("fastpipe.") or path is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return None
        compiled = Path(spec.loader.path)
        stem = name.rpartition(".")[2]
        source = compiled.parent / (stem + ".py")
        if not source.is_file():
            return None  # compiled only (the Pipe's _pipe.pyx): the usual import
        if self.prefer_source:
            return importlib.util.spec_from_file_location(name, source)
        built_here = (compiled.parent / (stem + ".c")).is_file()
        if built_here and source.stat().st_mtime > compiled.stat().st_mtime:
            warnings.warn(
                f"fastpipe: {compiled.name} is older than {source.name}; the compiled build runs the old code"
                " (rebuild with `make build` or `pip install -e .`)",
                RuntimeWarning,
                stacklevel=2,
            )
        return spec


def is_compiled(module: ModuleType) -> bool:
    """Whether ``module`` was loaded from a compiled build (not from its ``.py``)."""
    return isinstance(getattr(module.__spec__, "loader", None), importlib.machinery.ExtensionFileLoader)


if not any(isinstance(finder, CompiledModules) for finder in sys.meta_path):
    sys.meta_path.insert(0, CompiledModules(prefer_source=NO_EXTENSIONS))

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
        for finder in sys.meta_path:  # the compiled request path calls the compiled Pipe in C: not without it
            if isinstance(finder, CompiledModules):
                finder.prefer_source = True
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

__all__ = ("EXTENSION", "NO_EXTENSIONS", "CompiledModules", "Pipe", "is_compiled", "wrap")
