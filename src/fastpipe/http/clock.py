"""The monotonic clock of the request path: ``time.monotonic``, which the compiled modules that cimport this
one read in C instead (``clock.pxd``), without a Python call and a float object per reading.

Deadlines, first-byte times and records compare readings from both, so both must be the same clock: on
Linux the C build reads ``clock_gettime(CLOCK_MONOTONIC)``, the source of ``time.monotonic`` there;
elsewhere it calls ``time.monotonic`` itself.
"""

from __future__ import annotations

from time import monotonic

__all__ = ("monotonic",)
