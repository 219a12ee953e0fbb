"""Push face flow control: pause the producer above the high-water mark, resume it at or below the low one.

The producer interface is an asyncio read transport's (pause_reading/resume_reading); most tests use a
recording producer, one drives a real loopback TCP transport on both event loops.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from types import ModuleType
from typing import Any, Callable

import pytest
import uvloop

from ._support import Owner, RecordingProducer, RecordingSink, drain, loop_errors, pull


async def test_producer_is_paused_only_above_the_high_water_mark(impl: ModuleType) -> None:
    producer = RecordingProducer()
    pipe = impl.Pipe.pushed(Owner(), producer=producer, high_water=10, low_water=4)
    pipe.feed(b"12345")
    pipe.feed(b"67890")  # exactly at the mark: not above it
    assert producer.calls == []
    assert pipe.paused is False
    pipe.feed(b"x")
    assert producer.calls == ["pause"]
    assert pipe.paused is True
    pipe.feed(b"more")
    pipe.feed(b"and more")
    assert producer.calls == ["pause"]  # once, however much more arrives
    pipe.cancel()


async def test_producer_is_resumed_once_the_queue_drains_to_the_low_water_mark(impl: ModuleType) -> None:
    producer = RecordingProducer()
    pipe = impl.Pipe.pushed(Owner(), producer=producer, high_water=10, low_water=4)
    for chunk in (b"aaaa", b"bbbb", b"cccc", b"dd"):  # 14 bytes queued
        pipe.feed(chunk)
    assert producer.calls == ["pause"]
    assert await pull(pipe) == b"aaaa"  # 10 left
    assert await pull(pipe) == b"bbbb"  # 6 left, still above 4
    assert producer.calls == ["pause"]
    assert await pull(pipe) == b"cccc"  # 2 left
    assert producer.calls == ["pause", "resume"]
    assert pipe.paused is False
    assert await pull(pipe) == b"dd"
    assert producer.calls == ["pause", "resume"]
    pipe.feed_eof()
    assert await drain(pipe) == []


async def test_resume_happens_at_exactly_the_low_water_mark(impl: ModuleType) -> None:
    producer = RecordingProducer()
    pipe = impl.Pipe.pushed(Owner(), producer=producer, high_water=8, low_water=4)
    for chunk in (b"12345", b"1234"):  # 9 queued
        pipe.feed(chunk)
    await pull(pipe)  # 4 left: at the mark
    assert producer.calls == ["pause", "resume"]
    pipe.cancel()


async def test_default_low_water_is_a_quarter_of_high_water(impl: ModuleType) -> None:
    producer = RecordingProducer()
    pipe = impl.Pipe.pushed(Owner(), producer=producer, high_water=100)
    for _ in range(6):
        pipe.feed(b"x" * 25)  # 150 queued
    assert producer.calls == ["pause"]
    await pull(pipe)
    await pull(pipe)
    await pull(pipe)  # 75 left
    await pull(pipe)  # 50 left
    assert producer.calls == ["pause"]
    await pull(pipe)  # 25 left: a quarter of 100
    assert producer.calls == ["pause", "resume"]
    pipe.cancel()


async def test_pause_and_resume_cycle_repeatedly(impl: ModuleType) -> None:
    producer = RecordingProducer()
    pipe = impl.Pipe.pushed(Owner(), producer=producer, high_water=4, low_water=0)
    for _ in range(3):
        pipe.feed(b"12345")
        assert pipe.paused is True
        await pull(pipe)
        assert pipe.paused is False
    assert producer.calls == ["pause", "resume"] * 3
    pipe.feed_eof()
    assert await drain(pipe) == []


async def test_pause_and_resume_producing_are_idempotent(impl: ModuleType) -> None:
    producer = RecordingProducer()
    pipe = impl.Pipe.pushed(Owner(), producer=producer)
    pipe.resume_producing()
    assert producer.calls == []
    pipe.pause_producing()
    pipe.pause_producing()
    assert producer.calls == ["pause"]
    assert pipe.paused is True
    pipe.resume_producing()
    pipe.resume_producing()
    assert producer.calls == ["pause", "resume"]
    assert pipe.paused is False
    pipe.cancel()


async def test_flow_control_without_a_producer_only_tracks_the_flag(impl: ModuleType) -> None:
    pipe = impl.Pipe.pushed(Owner(), high_water=2, low_water=0)
    pipe.feed(b"123")
    assert pipe.paused is True
    assert await pull(pipe) == b"123"
    assert pipe.paused is False
    pipe.pause_producing()
    assert pipe.paused is True
    pipe.cancel()


class _OrderedProducer(RecordingProducer):
    """Records pause/resume into a log it shares with the pipe's on_release, so the order shows."""

    def __init__(self, log: list[str], *, fail_resume: BaseException | None = None) -> None:
        super().__init__()
        self.calls = log
        self.fail_resume = fail_resume

    def resume_reading(self) -> None:
        super().resume_reading()
        if self.fail_resume is not None:
            raise self.fail_resume


@pytest.mark.parametrize("ending", ["eof", "error", "cancel"])
async def test_a_pipe_that_ends_while_paused_hands_its_producer_back_reading(impl: ModuleType, ending: str) -> None:
    # A sink's pause can land on the very write that carries the last chunk (the client's buffer crosses
    # its high-water mark); a producer left paused after the pipe is gone would never be read again.
    log: list[str] = []
    producer = _OrderedProducer(log)
    sink = RecordingSink()
    pipe = impl.Pipe.pushed(Owner(), producer=producer, on_release=lambda p: log.append(f"release:{p.state}"))
    pipe.connect(sink)
    pipe.feed(b"last")
    pipe.pause_producing()
    assert log == ["pause"]
    if ending == "eof":
        pipe.feed_eof()
    elif ending == "error":
        pipe.feed_error(ConnectionResetError("upstream reset"))
    else:
        pipe.cancel()
    state = {"eof": "closed", "error": "errored", "cancel": "cancelled"}[ending]
    assert log == ["pause", "resume", f"release:{state}"]  # reading again before on_release pools it
    assert pipe.paused is False
    pipe.resume_producing()
    pipe.pause_producing()
    assert log == ["pause", "resume", f"release:{state}"]  # a released pipe no longer reaches the producer


async def test_a_pulled_pipe_paused_by_its_queue_resumes_the_producer_when_cancelled(impl: ModuleType) -> None:
    producer = RecordingProducer()
    pipe = impl.Pipe.pushed(Owner(), producer=producer, high_water=2, low_water=0)
    pipe.feed(b"123")
    assert producer.calls == ["pause"]
    await pipe.aclose()
    assert producer.calls == ["pause", "resume"]
    assert pipe.paused is False


async def test_an_unpaused_pipe_leaves_its_producer_alone_at_the_end(impl: ModuleType) -> None:
    producer = RecordingProducer()
    sink = RecordingSink()
    pipe = impl.Pipe.pushed(Owner(), producer=producer)
    pipe.connect(sink)
    pipe.pause_producing()
    pipe.resume_producing()
    pipe.feed_eof()
    assert producer.calls == ["pause", "resume"]


async def test_a_producer_whose_resume_fails_is_reported_and_the_release_still_happens(impl: ModuleType) -> None:
    failure = RuntimeError("transport is gone")
    log: list[str] = []
    pipe = impl.Pipe.pushed(
        Owner(), producer=_OrderedProducer(log, fail_resume=failure), on_release=lambda p: log.append("release")
    )
    pipe.connect(RecordingSink())
    pipe.pause_producing()
    with loop_errors() as errors:
        pipe.feed_eof()
    assert pipe.state == "closed"
    assert pipe.owner is None
    assert log == ["pause", "resume", "release"]
    assert [context.get("exception") for context in errors] == [failure]


class _UpstreamProtocol(asyncio.Protocol):
    """Feeds what a real TCP connection receives into a pushed pipe whose producer is the transport."""

    def __init__(self, impl: ModuleType, made: asyncio.Future[Any], high_water: int) -> None:
        self.impl = impl
        self.made = made
        self.high_water = high_water
        self.pipe: Any = None
        self.received: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.pipe = self.impl.Pipe.pushed(self, producer=transport, high_water=self.high_water)
        self.made.set_result((self.pipe, transport))

    def data_received(self, data: bytes) -> None:
        self.received.append(data)
        self.pipe.feed(data)

    def eof_received(self) -> bool:
        self.pipe.feed_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.pipe.state == "open":
            self.pipe.feed_error(exc)


async def _relay_over_loopback(impl: ModuleType) -> None:
    loop = asyncio.get_running_loop()
    body = os.urandom(4 << 20)
    high_water = 64 * 1024
    made: asyncio.Future[Any] = loop.create_future()
    protocols: list[_UpstreamProtocol] = []

    def factory() -> _UpstreamProtocol:
        protocols.append(_UpstreamProtocol(impl, made, high_water))
        return protocols[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    sender = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sender.setblocking(False)
    try:
        await loop.sock_connect(sender, server.sockets[0].getsockname())
        pipe, transport = await asyncio.wait_for(made, 5)

        async def send() -> None:
            await loop.sock_sendall(sender, body)
            sender.shutdown(socket.SHUT_WR)

        sending = asyncio.ensure_future(send())
        for _ in range(1000):  # bounded: the transport fills the queue within a few reads
            if pipe.paused:
                break
            await asyncio.sleep(0.005)
        assert pipe.paused is True
        assert transport.is_reading() is False

        digest = hashlib.sha256()
        received: list[bytes] = []
        resumed_while_reading = 0

        async def consume() -> None:
            nonlocal resumed_while_reading
            async for chunk in pipe:
                digest.update(chunk)
                received.append(chunk)
                if not pipe.paused and transport.is_reading():
                    resumed_while_reading += 1

        await asyncio.wait_for(consume(), 20)
        await asyncio.wait_for(sending, 5)

        assert digest.hexdigest() == hashlib.sha256(body).hexdigest()
        assert pipe.state == "closed"
        assert pipe.owner is None
        # The queue was paused and resumed on the real transport, and nothing was copied on the way.
        assert resumed_while_reading > 0
        assert len(received) == len(protocols[0].received)
        assert all(got is sent for got, sent in zip(received, protocols[0].received, strict=True))
    finally:
        sender.close()
        server.close()
        await server.wait_closed()


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_real_tcp_transport_is_paused_and_resumed_and_the_body_arrives_intact(impl: ModuleType, loop_name: str) -> None:
    loop = LOOPS[loop_name]()  # a loop of our own choosing (asyncio.Runner would need Python 3.11)
    try:
        loop.run_until_complete(_relay_over_loopback(impl))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def test_a_pull_on_an_empty_queue_resumes_a_paused_producer(impl: ModuleType) -> None:
    """A consumer waiting with nothing queued is demand: a paused producer would never feed it."""
    producer = RecordingProducer()
    pipe = impl.Pipe.pushed(Owner(), producer=producer)
    pipe.pause_producing()
    pending = asyncio.ensure_future(pipe.__anext__())
    await asyncio.sleep(0)
    assert producer.calls == ["pause", "resume"]
    assert not pipe.paused
    pipe.feed(b"a")
    assert await pending == b"a"
    pipe.feed_eof()
    assert await drain(pipe) == []
