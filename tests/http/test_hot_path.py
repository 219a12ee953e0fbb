"""The hot path creates no task or coroutine per chunk or per request stage (push face end to end)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine, Generator
from typing import Any

import pytest

from fastpipe._origin import payload_sha256

from ._proxy_support import ProxyUnderTest, raw_exchange


@pytest.mark.both_loops
async def test_a_warm_proxy_streams_without_creating_tasks(proxied: ProxyUnderTest) -> None:
    await raw_exchange(proxied.port, b"GET /bytes?n=10 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert proxied.proxy.pool.idle == 1  # warm: the next exchange needs no connect task
    loop = asyncio.get_running_loop()
    created: list[str] = []
    previous = loop.get_task_factory()

    def counting_factory(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any], **kwargs: Any
    ) -> asyncio.Future[Any]:
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        if code is not None and "fastpipe" in code.co_filename:  # the test's own wait_for tasks do not count
            created.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kwargs)  # type: ignore[arg-type]

    size = 8 * 1024 * 1024
    reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
    loop.set_task_factory(counting_factory)  # type: ignore[arg-type]
    try:
        writer.write(b"GET /bytes?n=%d&seed=1 HTTP/1.1\r\nHost: t\r\n\r\n" % size)
        for _ in range(3):
            writer.write(b"GET /tokens?n=20 HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"Content-Length: %d" % size in head
        digest = hashlib.sha256()
        remaining = size
        while remaining:
            chunk = await asyncio.wait_for(reader.read(min(remaining, 1 << 20)), 5)
            assert chunk
            digest.update(chunk)
            remaining -= len(chunk)
        for _ in range(3):
            await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
    finally:
        loop.set_task_factory(previous)
        writer.close()
        await writer.wait_closed()
    assert digest.hexdigest() == payload_sha256(size, seed=1)
    records = await proxied.wait_records(5)
    assert sum(record.response_chunks for record in records[1:]) > 4  # many chunks went through
    assert created == []  # and not one task for them, nor for the four exchanges
