"""tee: one upstream body, several readers, and side branches that can never hurt the client.

``tee(pipe, n)`` returns n pipes that see the identical chunk objects of ``pipe`` (no copies). The first
is the **primary** (the client's body); the others are **secondaries** (metrics, usage, logging).

The policy, clause by clause:

* **Retention.** Every branch holds the owner of ``pipe`` (``branch.owner`` is that owner) and the tee
  itself until that branch is finished, so the owner lives until the *last* branch is finished — a
  secondary that finishes early never lets it go while the primary still streams. The source pipe's own
  release (its ``on_release``: e.g. a connection back to the pool) runs when the upstream body is over,
  or when the tee cancels the source.
* **Nothing is read before the client asks.** The reader starts when the primary's consumer first asks
  for data (a pull, or ``pump()``/a sink connected). A primary that is dropped unserved (the handler
  raised before the response started) counts as a client that left; under a drain policy, one that is
  never served counts as gone once the drain's ``timeout`` passed since ``tee()``. So the policy's bounds
  hold from the moment the tee exists, and no upstream stays checked out for a response never sent.
* **The primary sets the pace.** One reader task pulls the source and feeds every branch; it reads ahead
  of the primary by at most ``high_water`` bytes, then waits for the primary's consumer.
* **Secondaries never stall the primary.** A secondary that falls more than ``max_buffer`` bytes behind
  (or whose connected sink asks to pause) is detached: it gets the chunks it already has, then raises
  ``BranchOverflow``. A cancelled secondary only cancels itself.
* **When the primary leaves** (its pipe is cancelled: the client disconnected), the tee's policy decides
  (``on_disconnect``, by default the policy of the pipe split; the branches themselves have the default
  ``cancel``, so a sink serving the primary simply cancels it):
  ``DisconnectPolicy.cancel()`` (the default) cancels the source at once; ``DisconnectPolicy.drain(
  max_bytes=, timeout=)`` keeps feeding the secondaries — now at *their* pace — until the upstream ends,
  ``max_bytes`` more bytes have been delivered, or ``timeout`` seconds have passed, whichever comes first;
  then the source is cancelled and everything is released. Usage reported in the last events of a stream
  survives an early disconnect that way, and no upstream slot stays busy past the bounds.
* **Nothing is ever cut silently.** A secondary whose stream was cut short (the primary left under
  ``cancel``, or a drain bound was reached) raises ``SourceCancelled`` after the chunks it received; an
  upstream error reaches every branch still fed.
* **Every branch says how it ended** (``branch.end_reason``): ``complete``, ``upstream-error``,
  ``client-gone`` (the primary left under ``cancel``), ``drained``, ``drain-cut-max-bytes``,
  ``drain-cut-timeout``, or ``detached`` (a slow secondary). The source pipe gets the same reason, so a
  usage capture on it reports how the upstream body ended.

Why pushed branches fed by one reader task (and not branches that pull the source themselves): the
source is pulled in a task that no consumer owns, so cancelling a consumer's task can never cancel the
upstream read under a branch that must go on (the drain policy needs exactly that), and each branch gets
the push face's queue and flow control for free. The cost is one task per tee, and the read-ahead above.
"""

from __future__ import annotations

import asyncio
import weakref
from functools import partial
from typing import Any, Callable

from ._backend import Pipe
from ._chunks import chunk_nbytes
from .disconnect import CANCEL, DisconnectPolicy, check_policy
from .end_reason import EndReason

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
    on_disconnect: DisconnectPolicy | None = None,
) -> tuple[Pipe, ...]:
    """Split ``pipe`` into ``n`` branches; the first is the primary. Needs a running event loop.

    The branches are pipes of the same implementation as ``pipe`` (``type(pipe).pushed``), so the
    compiled and the pure-Python Pipe both work. ``pipe`` must not have been pulled yet: from now on the
    tee is its only reader. ``on_disconnect`` defaults to ``pipe.on_disconnect``: the policy of the body.
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
    policy = pipe.on_disconnect if on_disconnect is None else check_policy(on_disconnect)
    if pipe.state != "idle":
        raise ValueError(f"tee() needs a pipe nothing has pulled yet, got a {pipe.state} one")
    loop = asyncio.get_running_loop()
    return _Tee(pipe, loop, policy, max_buffer).start(n, high_water)


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
        self, source: Pipe, loop: asyncio.AbstractEventLoop, policy: DisconnectPolicy, max_buffer: int
    ) -> None:
        self._source: Pipe | None = source
        # Retained until the last branch is finished, whatever happened to the source before.
        self._owner: object = source.owner
        self._policy = policy
        self._max_buffer = max_buffer
        self._loop = loop
        self._unfinished = 0
        # Branches still fed by the reader: None once ended, detached or finished. The primary is not
        # in it (nor held strongly anywhere here) until its consumer first asks for data: a primary
        # dropped unserved is collected, and that counts as its client leaving.
        self._fed: list[Pipe | None] = []
        self._unserved: weakref.ref[Pipe] | None = None
        # Branches whose pause holds the reader back: the primary, and secondaries while draining.
        self._blocking: set[int] = set()
        self._ready = asyncio.Event()
        self._ready.set()
        self._draining = False
        self._drained = 0
        self._stopping = False
        self._cut_reason = EndReason.CANCELLED
        self._deadline: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pulling = False  # the reader awaits a read of the source

    def start(self, n: int, high_water: int) -> tuple[Pipe, ...]:
        source = self._source
        assert source is not None
        branches = tuple(
            type(source).pushed(
                self._owner,
                producer=_BranchFlow(self, index),
                on_release=partial(self._finished, index),
                high_water=high_water if index == 0 else self._max_buffer,
            )
            for index in range(n)
        )
        self._unfinished = n
        primary = branches[0]
        self._fed = [None, *branches[1:]]
        self._unserved = weakref.ref(primary)
        # Paused at birth: the first resume is the first demand (a pull on its empty queue, or a sink
        # connected). Until then nothing is read, and a drain's clock runs from now.
        primary.pause_producing()
        if self._policy.drains:
            self._deadline = self._loop.call_later(self._policy.timeout, self._drain_timed_out)
        self._reader = self._loop.create_task(self._read())
        return branches

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
                self._pulling = True
                try:
                    chunk = await pull()
                except StopAsyncIteration:
                    self._end(None)
                    return
                finally:
                    self._pulling = False
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
                            branch.feed_error(BranchOverflow(index, self._max_buffer), EndReason.DETACHED)
        except asyncio.CancelledError:
            if not self._stopping:  # cancelled from outside (loop shutdown): nobody may see a clean end
                self._cut("the tee's reader task was cancelled", EndReason.CANCELLED)
                raise
        except Exception as exc:
            self._end(exc)
        except BaseException:
            self._cut("the tee's reader stopped on a fatal error", EndReason.CANCELLED)
            raise
        finally:
            self._source = None
            await source.aclose(self._cut_reason)  # a no-op unless the reader stopped before the source's end

    def _drain_bound_reached(self, chunk: Any) -> bool:
        self._drained += chunk_nbytes(chunk)
        if self._drained <= self._policy.max_bytes:
            return False
        self._cut(f"the drain byte bound ({self._policy.max_bytes} bytes) was reached", EndReason.DRAIN_CUT_BYTES)
        return True

    def _end(self, error: BaseException | None) -> None:
        """The source ended (error None) or failed: every branch still fed learns it the same way."""
        self._stopping = True
        self._end_branches(None if error is None else lambda: error, None)

    def _cut(self, text: str, reason: EndReason) -> None:
        """Stop reading before the source's end; branches still fed get SourceCancelled, and ``reason``."""
        if self._stopping:
            return
        self._stopping = True
        self._cut_reason = reason
        if self._pulling and self._source is not None:
            # The reader is cancelled inside that read: the source must learn why before it ends.
            self._source.cancel(reason)
        self._end_branches(lambda: SourceCancelled(text), reason)  # one exception per branch
        self._ready.set()

    def _end_branches(self, failure: Callable[[], BaseException] | None, reason: EndReason | None) -> None:
        """A clean end (failure None) or ``failure()`` to every branch still fed, and an unserved primary."""
        fed = self._fed
        unserved = self._unserved() if self._unserved is not None else None
        self._unserved = None
        for index in range(len(fed)):
            branch = unserved if index == 0 and unserved is not None else fed[index]
            if branch is not None:
                fed[index] = None
                if failure is None:
                    branch.feed_eof()
                else:
                    branch.feed_error(failure(), reason)
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
        # A secondary pausing outside a drain is detached by the reader right after the feed.

    def _resume(self, index: int) -> None:
        if index == 0 and self._unserved is not None:
            primary = self._unserved()
            # A primary that is finishing resumes its producer on the way out: that is no demand.
            if primary is not None and primary.state in ("idle", "open") and not self._stopping:
                self._unserved = None
                self._fed[0] = primary
                self._cancel_deadline()  # served: the drain's clock starts again if the client leaves
        self._blocking.discard(index)
        if not self._blocking:
            self._ready.set()

    def _finished(self, index: int, branch: Pipe) -> None:
        """on_release of a branch: it ended, failed or was cancelled (or was collected unserved)."""
        fed = self._fed
        was_fed = fed[index] is not None or (index == 0 and self._unserved is not None)
        fed[index] = None
        if index == 0:
            self._unserved = None
        self._resume(index)
        self._unfinished -= 1
        if was_fed and branch.state == "cancelled":
            if index == 0:
                self._primary_left()
            elif self._draining and not any(fed):
                self._cut("every branch left", EndReason.CANCELLED)
        if self._unfinished == 0:
            self._owner = None
            self._cut("every branch left", EndReason.CANCELLED)

    def _primary_left(self) -> None:
        if not self._policy.drains or not any(self._fed):
            self._cut("the primary branch was cancelled", EndReason.CLIENT_GONE)
            return
        self._draining = True
        for branch in self._fed:
            if branch is not None:
                branch.start_draining()
        if self._source is not None:
            self._source.start_draining()
        if self._deadline is None:  # else: never served, and the clock that started at birth runs on
            self._deadline = self._loop.call_later(self._policy.timeout, self._drain_timed_out)

    def _drain_timed_out(self) -> None:
        """The drain's time bound: after the primary left, or from birth while it was never served."""
        self._deadline = None
        self._cut(f"the drain time bound ({self._policy.timeout} s) was reached", EndReason.DRAIN_CUT_TIMEOUT)


def _current_task(loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
    # on_release may run outside the loop (a branch collected at shutdown): then no task is current.
    try:
        return asyncio.current_task(loop)
    except RuntimeError:
        return None
