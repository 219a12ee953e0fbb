"""Push face connected to a sink: queued chunks flushed first, end(pipe) once with the final state."""

from __future__ import annotations

import weakref
from types import ModuleType
from typing import Any

import pytest

from ._support import Owner, RecordingProducer, RecordingSink, ReleaseRecorder, loop_errors, unique_chunks


async def test_connect_flushes_queued_chunks_first_then_writes_each_feed_at_once(impl: ModuleType) -> None:
    chunks = unique_chunks(5)
    sink = RecordingSink()
    pipe = impl.Pipe.pushed(Owner())
    pipe.feed(chunks[0])
    pipe.feed(chunks[1])
    assert sink.chunks == []
    pipe.connect(sink)
    assert sink.chunks == chunks[:2]
    for count, chunk in enumerate(chunks[2:], start=3):
        assert pipe.feed(chunk) is True
        assert len(sink.chunks) == count  # synchronous: no coroutine, no task per chunk
    assert all(written is chunk for written, chunk in zip(sink.chunks, chunks, strict=True))
    assert (pipe.chunks, pipe.nbytes) == (5, sum(map(len, chunks)))
    assert sink.ends == []
    pipe.feed_eof()
    assert sink.ends == [("closed", None, True)]


@pytest.mark.parametrize("ending", ["eof", "error", "cancel"])
async def test_sink_end_is_called_once_with_the_final_state(impl: ModuleType, ending: str) -> None:
    error = ConnectionResetError("upstream reset")
    owner = Owner()
    owner_ref = weakref.ref(owner)
    released = ReleaseRecorder()
    sink = RecordingSink()
    pipe = impl.Pipe.pushed(owner, on_release=released)
    del owner
    pipe.connect(sink)
    pipe.feed(b"a")
    expected: tuple[str, BaseException | None, bool]
    if ending == "eof":
        pipe.feed_eof()
        expected = ("closed", None, True)
    elif ending == "error":
        pipe.feed_error(error)
        expected = ("errored", error, True)
    else:
        pipe.cancel()
        expected = ("cancelled", None, True)
    assert sink.ends == [expected]
    assert owner_ref() is None
    assert [(call.state, call.owner_was_none) for call in released.calls] == [(expected[0], True)]
    # Nothing later ends it again.
    pipe.cancel()
    await pipe.aclose()
    assert len(sink.ends) == 1
    assert len(released.calls) == 1


async def test_eof_fed_before_connect_is_delivered_after_the_queued_chunks(impl: ModuleType) -> None:
    sink = RecordingSink()
    pipe = impl.Pipe.pushed(Owner())
    pipe.feed(b"a")
    pipe.feed_eof()
    pipe.connect(sink)
    assert sink.chunks == [b"a"]
    assert sink.ends == [("closed", None, True)]


async def test_error_fed_before_connect_is_delivered_after_the_queued_chunks(impl: ModuleType) -> None:
    error = ValueError("truncated upstream body")
    sink = RecordingSink()
    pipe = impl.Pipe.pushed(Owner())
    pipe.feed(b"a")
    pipe.feed_error(error)
    pipe.connect(sink)
    assert sink.chunks == [b"a"]
    assert sink.ends == [("errored", error, True)]


async def test_connect_to_a_cancelled_pipe_ends_the_sink_at_once(impl: ModuleType) -> None:
    sink = RecordingSink()
    pipe = impl.Pipe.pushed(Owner())
    pipe.feed(b"dropped")
    pipe.cancel()
    pipe.connect(sink)
    assert sink.chunks == []
    assert sink.ends == [("cancelled", None, True)]


async def test_cancel_from_the_sink_side_releases_and_refuses_later_feeds(impl: ModuleType) -> None:
    owner = Owner()
    owner_ref = weakref.ref(owner)
    released = ReleaseRecorder()
    pipe = impl.Pipe.pushed(owner, on_release=released)
    del owner

    def client_gone(chunk: Any) -> None:
        if chunk == b"second":
            pipe.cancel()

    sink = RecordingSink(on_write=client_gone)
    pipe.connect(sink)
    assert pipe.feed(b"first") is True
    pipe.feed(b"second")
    assert pipe.state == "cancelled"
    assert owner_ref() is None
    assert [(call.state, call.owner_was_none) for call in released.calls] == [("cancelled", True)]
    assert sink.ends == [("cancelled", None, True)]
    assert pipe.feed(b"third") is False
    pipe.feed_eof()  # the producer may still report its end: ignored, not an error
    assert sink.chunks == [b"first", b"second"]
    assert len(sink.ends) == 1


async def test_sink_write_failure_cancels_the_pipe_and_reaches_the_loop_handler(impl: ModuleType) -> None:
    failure = BrokenPipeError("client socket gone")

    def broken(chunk: Any) -> None:
        raise failure

    sink = RecordingSink(on_write=broken)
    released = ReleaseRecorder()
    pipe = impl.Pipe.pushed(Owner(), on_release=released)
    pipe.connect(sink)
    with loop_errors() as errors:
        assert pipe.feed(b"a") is False
    assert pipe.state == "cancelled"
    assert sink.ends == [("cancelled", None, True)]
    assert len(released.calls) == 1
    assert [context.get("exception") for context in errors] == [failure]
    assert pipe.feed(b"b") is False


async def test_sink_end_failure_reaches_the_loop_handler(impl: ModuleType) -> None:
    failure = RuntimeError("end hook broke")

    class FailingEnd(RecordingSink):
        def end(self, pipe: Any) -> None:
            super().end(pipe)
            raise failure

    sink = FailingEnd()
    pipe = impl.Pipe.pushed(Owner())
    pipe.connect(sink)
    with loop_errors() as errors:
        pipe.feed_eof()
    assert pipe.state == "closed"
    assert len(sink.ends) == 1
    assert [context.get("exception") for context in errors] == [failure]


async def test_sink_side_flow_control_is_forwarded_to_the_producer(impl: ModuleType) -> None:
    producer = RecordingProducer()
    sink = RecordingSink()
    pipe = impl.Pipe.pushed(Owner(), producer=producer)
    pipe.connect(sink)
    pipe.pause_producing()
    assert pipe.paused is True
    pipe.resume_producing()
    assert pipe.paused is False
    assert producer.calls == ["pause", "resume"]
    pipe.feed_eof()


async def test_connect_resumes_a_producer_paused_by_the_queue(impl: ModuleType) -> None:
    producer = RecordingProducer()
    pipe = impl.Pipe.pushed(Owner(), producer=producer, high_water=4, low_water=0)
    pipe.feed(b"12345")
    assert producer.calls == ["pause"]
    sink = RecordingSink()
    pipe.connect(sink)
    assert sink.chunks == [b"12345"]
    assert producer.calls == ["pause", "resume"]
    assert pipe.paused is False
    pipe.feed_eof()


async def test_a_connected_pipe_cannot_be_connected_again_or_pulled(impl: ModuleType) -> None:
    pipe = impl.Pipe.pushed(Owner())
    pipe.connect(RecordingSink())
    with pytest.raises(RuntimeError):
        pipe.connect(RecordingSink())
    with pytest.raises(RuntimeError):
        await pipe.__anext__()
    pipe.feed_eof()


async def test_a_sink_failing_while_connect_flushes_cancels_the_pipe_like_feed_does(impl: ModuleType) -> None:
    owner = Owner()
    owner_ref = weakref.ref(owner)
    failure = OSError("client socket gone")

    def refuse(_chunk: Any) -> None:
        raise failure

    sink = RecordingSink(on_write=refuse)
    pipe = impl.Pipe.pushed(owner)
    del owner
    pipe.feed(b"queued")
    with loop_errors() as errors:
        pipe.connect(sink)
    assert pipe.state == "cancelled"
    assert owner_ref() is None
    assert sink.ends == [("cancelled", None, True)]
    assert [context["exception"] for context in errors] == [failure]
    assert pipe.feed(b"later") is False


async def test_a_chunk_fed_from_inside_the_flush_keeps_its_place_in_line(impl: ModuleType) -> None:
    pipe = impl.Pipe.pushed(Owner())

    def feed_more(chunk: Any) -> None:
        if chunk == b"1":
            pipe.feed(b"3")
            pipe.feed_eof()

    sink = RecordingSink(on_write=feed_more)
    pipe.feed(b"1")
    pipe.feed(b"2")
    pipe.connect(sink)
    assert sink.chunks == [b"1", b"2", b"3"]
    assert sink.ends == [("closed", None, True)]


async def test_a_chunk_that_is_not_bytes_like_is_refused_before_the_pipe_opens(impl: ModuleType) -> None:
    pipe = impl.Pipe.pushed(Owner())
    with pytest.raises(TypeError, match="bytes-like, got str"):
        pipe.feed("text")  # type: ignore[arg-type]
    assert (pipe.state, pipe.chunks) == ("idle", 0)


async def test_connect_leaves_paused_a_producer_its_sink_paused_during_the_flush(impl: ModuleType) -> None:
    """The queue's pause ends with the flush, but a sink that asks to pause while being flushed (its
    transport filled up) keeps the producer paused until the sink resumes it."""
    producer = RecordingProducer()
    pipe = impl.Pipe.pushed(Owner(), producer=producer, high_water=4, low_water=0)
    pipe.feed(b"12345")
    sink = RecordingSink(on_write=lambda _chunk: pipe.pause_producing())
    pipe.connect(sink)
    assert sink.chunks == [b"12345"]
    assert producer.calls == ["pause"], "connect() resumed a producer its sink had just paused"
    assert pipe.paused is True
    pipe.resume_producing()
    assert producer.calls == ["pause", "resume"]
    pipe.feed_eof()
