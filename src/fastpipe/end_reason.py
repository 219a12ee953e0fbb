"""EndReason: why a pipe ended, in words a gateway can log and bill by.

``pipe.end_reason`` is None while the pipe runs and one of these once it is finished. Without a word
from whoever finished it, a clean end is ``COMPLETE`` (``DRAINED`` after ``pipe.start_draining()``), a
failure ``UPSTREAM_ERROR`` and a cancellation ``CANCELLED``; the sinks and ``tee()`` say more: the client
left (``CLIENT_GONE``), or a drain was cut at one of its bounds.
"""

from __future__ import annotations

import enum

__all__ = ("EndReason", "as_end_reason")


class EndReason(str, enum.Enum):
    """How a pipe (or a tee branch) ended. Members compare equal to their string values."""

    COMPLETE = "complete"  # the upstream body ended cleanly and was delivered
    UPSTREAM_ERROR = "upstream-error"  # the upstream failed (also during a drain)
    CLIENT_GONE = "client-gone"  # the client left and the policy cancelled the body
    DRAINED = "drained"  # the client left; the body was read on to its clean end
    DRAIN_CUT_BYTES = "drain-cut-max-bytes"  # the client left; the drain stopped at max_bytes
    DRAIN_CUT_TIMEOUT = "drain-cut-timeout"  # the client left; the drain stopped at its timeout
    DETACHED = "detached"  # a tee side branch fell too far behind and was detached
    CANCELLED = "cancelled"  # cancelled by its own program, with no other reason given

    def __str__(self) -> str:
        return self.value


def as_end_reason(reason: object) -> EndReason:
    """``reason`` as an EndReason (a member or its string value); ValueError for anything else."""
    if isinstance(reason, EndReason):
        return reason
    try:
        return EndReason(reason)
    except ValueError:
        known = ", ".join(repr(member.value) for member in EndReason)
        raise ValueError(f"an end reason must be an EndReason ({known}), got {reason!r}") from None
