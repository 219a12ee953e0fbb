"""Pick the Pipe implementation: the compiled type unless told otherwise.

``FASTPIPE_NO_EXTENSIONS`` (any value but empty or ``0``) selects the pure-Python twin, and so does any
interpreter other than CPython. An *absent* extension falls back with a warning; a present but broken
one raises, so a bad build never ships quietly as the slow twin.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import TYPE_CHECKING

NO_EXTENSIONS = os.environ.get("FASTPIPE_NO_EXTENSIONS", "") not in ("", "0") or (sys.implementation.name != "cpython")

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

__all__ = ("EXTENSION", "NO_EXTENSIONS", "Pipe", "wrap")
