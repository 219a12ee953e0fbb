"""tee: one upstream body, several readers, and side branches that can never hurt the client.

``tee(pipe, n)`` returns n pipes that see the identical chunk objects of ``pipe`` (no copies). The first
is the **primary** (the client's body); the others are **secondaries** (metrics, usage, logging).

The policy, clause by clause:

* **Retention.** Every branch holds the owner of ``pipe`` (``branch.owner`` is that owner) and the tee
  itself until that branch is finished, so the owner lives until the *last* branch is finished — a
  secondary that finishes early never lets it go while the primary still streams. The source pipe's own
  release (its ``on_release``: e.g. a connection back to the pool) runs when the upstream body is over,
  or when the tee cancels the source.
* **The primary sets the pace.** One reader task pulls the source and feeds every branch; it reads ahead
  of the primary by at most ``high_water`` bytes, then waits for the primary's consumer.
* **Secondaries never stall the primary.** A secondary that falls more than ``max_buffer`` bytes behind
  (or whose connected sink asks to pause) is detached: it gets the chunks it already has, then raises
  ``BranchOverflow``. A cancelled secondary only cancels itself.
* **When the primary leaves** (its pipe is cancelled: the client disconnected), ``on_disconnect`` decides:
  ``DisconnectPolicy.cancel()`` (the default) cancels the source at once; ``DisconnectPolicy.drain(
  max_bytes=, timeout=)`` keeps feeding the secondaries — now at *their* pace — until the upstream ends,
  ``max_bytes`` more bytes have been delivered, or ``timeout`` seconds have passed, whichever comes first;
  then the source is cancelled and everything is released. Usage reported in the last events of a stream
  survives an early disconnect that way, and no upstream slot stays busy past the bounds.
* **Nothing is ever cut silently.** A secondary whose stream was cut short (the primary left under
  ``cancel``, or a drain bound was reached) raises ``SourceCancelled`` after the chunks it received; an
  upstream error reaches every branch still fed.

Why pushed branches fed by one reader task (and not branches that pull the source themselves): the
source is pulled in a task that no consumer owns, so cancelling a consumer's task can never cancel the
upstream read under a branch that must go on (the drain policy needs exactly that), and each branch gets
the push face's queue and flow control for free. The cost is one task per tee, and the read-ahead above.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Literal

from ._backend import Pipe
from ._chunks import chunk_nbytes

__all__ = (
    "CANCEL",
    "DEFAULT_HIGH_WATER",
    "DEFAULT_MAX_BUFFER",
    "BranchError",
    "BranchOverflow",
    "DisconnectPolicy",
    "SourceCancelled",
    "tee",
)

DEFAULT_MAX_BUFFER = 1 << 20
DEFAULT_HIGH_WATER = 64 * 1024


@dataclass(frozen=True)
class DisconnectPolicy:
    """What happens to an upstream body when the client it was for goes away.

    ``cancel``: cancel the source at once. ``drain``: keep reading it (for the tee's secondaries, or for
    an adapter's taps) until it ends, or ``max_bytes`` more bytes were read, or ``timeout`` seconds passed.
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
        """Cancel the source as soon as the client is gone."""
        return cls("cancel")

    @classmethod
    def drain(cls, *, max_bytes: int = DEFAULT_MAX_BUFFER, timeout: float = 10.0) -> DisconnectPolicy:
        """Keep reading the source after the client is gone, within a byte and a time bound."""
        return cls("drain", max_bytes, timeout)

    @property
    def drains(self) -> bool:
        return self.mode == "drain"


CANCEL = DisconnectPolicy.cancel()


class BranchError(Exception):
    """A secondary branch did not get the whole upstream body."""


class BranchOverflow(BranchError):
    """A secondary fell more than ``max_buffer`` bytes behind and was detached, so the primary never waits."""

    def __init__(self, branch: int, max_buffer: int) -> None:
        super().__init__(f"tee branch {branch} fell more than {max_buffer} bytes behind the primary and was detached")
        self.branch = branch
        self.max_buffer = max_buffer


class SourceCancelled(BranchError):
    """The tee cancelled the source before its end: the primary left, or a drain bound was reached."""


def tee(
    pipe: Pipe,
    n: int = 2,
    *,
    max_buffer: int = DEFAULT_MAX_BUFFER,
    high_water: int = DEFAULT_HIGH_WATER,
    on_disconnect: DisconnectPolicy = CANCEL,
) -> tuple[Pipe, ...]:
    """Split ``pipe`` into ``n`` branches; the first is the primary. Needs a running event loop.

    The branches are pipes of the same implementation as ``pipe`` (``type(pipe).pushed``), so the
    compiled and the pure-Python Pipe both work. ``pipe`` must not have been pulled yet: from now on the
    tee is its only reader.
    """
    pipe_type = type(pipe)
    if not callable(getattr(pipe_type, "pushed", None)):
        raise TypeError(f"tee() needs a fastpipe Pipe, got {pipe_type.__name__}")
    if type(n) is not int or n < 1:
        raise ValueError(f"tee() needs n >= 1 branches, got {n!r}")
    if type(max_buffer) is not int or max_buffer < 0:
        raise ValueError(f"max_buffer must be an int >= 0, got {max_buffer!r}")
    if type(high_water) is not int or high_water < 0:
        raise ValueError(f"high_water must be an int >= 0, got {high_water!r}")
    if not isinstance(on_disconnect, DisconnectPolicy):
        raise TypeError(f"on_disconnect must be a DisconnectPolicy, got {type(on_disconnect).__name__}")
    if pipe.state != "idle":
        raise ValueError(f"tee() needs a pipe nothing has pulled yet, got a {pipe.state} one")
    loop = asyncio.get_running_loop()
    return _Tee(pipe, n, max_buffer, high_water, on_disconnect, loop).branches


class _BranchFlow:
    """The producer a branch pauses and resumes: it tells the tee which branch asked."""

    __slots__ = ("_index", "_tee")

    def __init__(self, tee: _Tee, index: int) -> None:
        self._tee = tee
        self._index = index

    def pause_reading(self) -> None:
        self._tee._pause(self._index)

    def resume_reading(self) -> None:
        self._tee._resume(self._index)


class _Tee:
    """The shared state of one tee: the source, its owner, the fed branches and the reader task."""

    def __init__(
        self,
        source: Pipe,
        n: int,
        max_buffer: int,
        high_water: int,
        policy: DisconnectPolicy,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._source: Pipe | None = source
        # Retained until the last branch is finished, whatever happened to the source before.
        self._owner: object = source.owner
        self._policy = policy
        self._max_buffer = max_buffer
        self._loop = loop
        self._unfinished = n
        # Branches still fed by the reader: None once ended, detached or finished.
        self._fed: list[Pipe | None] = []
        # Branches whose pause holds the reader back: the primary, and secondaries while draining.
        self._blocking: set[int] = set()
        self._ready = asyncio.Event()
        self._ready.set()
        self._draining = False
        self._drained = 0
        self._stopping = False
        self._deadline: asyncio.TimerHandle | None = None
        pipe_type = type(source)
        branches = []
        for index in range(n):
            branch = pipe_type.pushed(
                self._owner,
                producer=_BranchFlow(self, index),
                on_release=partial(self._finished, index),
                high_water=high_water if index == 0 else max_buffer,
            )
            branches.append(branch)
        self._fed = list(branches)
        self.branches: tuple[Pipe, ...] = tuple(branches)
        self._reader: asyncio.Task[None] | None = loop.create_task(self._read())

    # -- the reader --------------------------------------------------------------------------------------

    async def _read(self) -> None:
        source = self._source
        assert source is not None
        pull = source.__anext__
        fed = self._fed
        try:
            while not self._stopping:
                if self._blocking:
                    await self._ready.wait()  # also set by _cut(), to stop
                    continue
                try:
                    chunk = await pull()
                except StopAsyncIteration:
                    self._end(None)
                    return
                if self._stopping:
                    break
                if self._draining and self._drain_bound_reached(chunk):
                    break
                # The hot loop: one feed per branch still fed, then a look at whether it asked to pause.
                for index, branch in enumerate(fed):
                    if branch is not None:
                        branch.feed(chunk)
                        if index and branch.paused and fed[index] is branch and not self._draining:
                            # A paused secondary is a slow one: detach it (in a drain it sets the pace).
                            fed[index] = None
                            branch.feed_error(BranchOverflow(index, self._max_buffer))
        except asyncio.CancelledError:
            if not self._stopping:  # cancelled from outside (loop shutdown): nobody may see a clean end
                self._cut("the tee's reader task was cancelled")
                raise
        except Exception as exc:
            self._end(exc)
        except BaseException:
            self._cut("the tee's reader stopped on a fatal error")
            raise
        finally:
            self._source = None
            await source.aclose()  # a no-op unless the reader stopped before the source's end

    def _drain_bound_reached(self, chunk: Any) -> bool:
        self._drained += chunk_nbytes(chunk)
        if self._drained <= self._policy.max_bytes:
            return False
        self._cut(f"the drain byte bound ({self._policy.max_bytes} bytes) was reached")
        return True

    def _end(self, error: BaseException | None) -> None:
        """The source ended (error None) or failed: every branch still fed learns it the same way."""
        self._stopping = True
        self._end_branches(None if error is None else lambda: error)

    def _cut(self, reason: str) -> None:
        """Stop reading before the source's end; branches still fed get SourceCancelled."""
        if self._stopping:
            return
        self._stopping = True
        self._end_branches(lambda: SourceCancelled(reason))  # one exception per branch
        self._ready.set()

    def _end_branches(self, failure: Callable[[], BaseException] | None) -> None:
        """A clean end (failure None) or ``failure()`` to every branch still fed."""
        fed = self._fed
        for index in range(len(fed)):
            branch = fed[index]
            if branch is not None:
                fed[index] = None
                if failure is None:
                    branch.feed_eof()
                else:
                    branch.feed_error(failure())
        self._cancel_deadline()
        reader = self._reader
        if reader is not None and not reader.done() and reader is not _current_task(self._loop):
            reader.cancel()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    # -- what the branches tell us -----------------------------------------------------------------------

    def _pause(self, index: int) -> None:
        if index == 0 or self._draining:
            self._blocking.add(index)
            self._ready.clear()
        # A secondary pausing outside a drain is detached by _distribute right after the feed.

    def _resume(self, index: int) -> None:
        self._blocking.discard(index)
        if not self._blocking:
            self._ready.set()

    def _finished(self, index: int, branch: Pipe) -> None:
        """on_release of a branch: it ended, failed or was cancelled."""
        fed = self._fed
        was_fed = fed[index] is not None
        fed[index] = None
        self._resume(index)
        self._unfinished -= 1
        if was_fed and branch.state == "cancelled":
            if index == 0:
                self._primary_left()
            elif self._draining and not any(fed):
                self._cut("every branch left")
        if self._unfinished == 0:
            self._owner = None
            self._cut("every branch left")

    def _primary_left(self) -> None:
        if not self._policy.drains or not any(self._fed):
            self._cut("the primary branch was cancelled")
            return
        self._draining = True
        self._deadline = self._loop.call_later(
            self._policy.timeout, self._cut, f"the drain time bound ({self._policy.timeout} s) was reached"
        )


def _current_task(loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
    # on_release may run outside the loop (a branch collected at shutdown): then no task is current.
    try:
        return asyncio.current_task(loop)
    except RuntimeError:
        return None
