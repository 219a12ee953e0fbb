"""The request path's clock is ``time.monotonic``'s: the compiled build reads it in C (``clock.pxd``), and
deadlines, first-byte times and records mix those readings with Python's."""

from __future__ import annotations

import time

import fastpipe.http.deadlines as deadlines
from fastpipe._backend import NO_EXTENSIONS, is_compiled


def test_a_deadline_is_armed_on_the_clock_time_monotonic_reads() -> None:
    assert NO_EXTENSIONS or is_compiled(deadlines), "the compiled request path did not load"
    connection = deadlines.ConnectionDeadlines((0.0, 10.0), lambda kind: None, lambda: None)
    for _ in range(100):
        before = time.monotonic()
        connection.arm(1)
        after = time.monotonic()
        # within a microsecond: the two builds may round the same nanoseconds differently
        assert before + 10.0 - 1e-6 <= connection.stage <= after + 10.0 + 1e-6
        assert connection.deadline == connection.stage
