"""DisconnectPolicy: what happens to an upstream body when the client it was for goes away.

The policy belongs to the body: ``Pipe(..., on_disconnect=policy)`` or ``pipe.on_disconnect = policy``.
Every sink (``PipeResponse``, ``stream_response``, ``pump``) honours the policy of the pipe it serves, and
``tee()`` applies the policy of the pipe it splits to the upstream when its primary branch leaves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ("CANCEL", "DEFAULT_DRAIN_BYTES", "DEFAULT_DRAIN_TIMEOUT", "DisconnectPolicy", "check_policy")

DEFAULT_DRAIN_BYTES = 1 << 20
DEFAULT_DRAIN_TIMEOUT = 10.0


@dataclass(frozen=True)
class DisconnectPolicy:
    """``cancel``: cancel the body at once. ``drain``: keep reading it (for taps, usage capture, a tee's
    side branches) until it ends, or ``max_bytes`` more bytes were read, or ``timeout`` seconds passed.

    Build one with ``DisconnectPolicy.cancel()`` or ``DisconnectPolicy.drain(max_bytes=..., timeout=...)``.
    """

    mode: Literal["cancel", "drain"] = "cancel"
    max_bytes: int = 0
    timeout: float = 0.0

    def __post_init__(self) -> None:
        if self.mode == "cancel":
            return
        if self.mode != "drain":
            raise ValueError(f"DisconnectPolicy mode must be 'cancel' or 'drain', got {self.mode!r}")
        if type(self.max_bytes) is not int or self.max_bytes < 0:
            raise ValueError(f"a drain needs max_bytes >= 0 (an int), got {self.max_bytes!r}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)):
            raise ValueError(f"a drain needs a timeout in seconds, got {self.timeout!r}")
        if not 0 < self.timeout < math.inf:
            raise ValueError(f"a drain needs a finite timeout > 0, got {self.timeout!r}")

    @classmethod
    def cancel(cls) -> DisconnectPolicy:
        """Cancel the body as soon as the client is gone."""
        return cls("cancel")

    @classmethod
    def drain(cls, *, max_bytes: int = DEFAULT_DRAIN_BYTES, timeout: float = DEFAULT_DRAIN_TIMEOUT) -> DisconnectPolicy:
        """Keep reading the body after the client is gone, within a byte and a time bound."""
        return cls("drain", max_bytes, timeout)

    @property
    def drains(self) -> bool:
        return self.mode == "drain"


CANCEL = DisconnectPolicy.cancel()


def check_policy(policy: object, what: str = "on_disconnect") -> DisconnectPolicy:
    """``policy`` itself, or a TypeError naming ``what`` when it is not a DisconnectPolicy."""
    if not isinstance(policy, DisconnectPolicy):
        raise TypeError(f"{what} must be a DisconnectPolicy, got {type(policy).__name__}")
    return policy
