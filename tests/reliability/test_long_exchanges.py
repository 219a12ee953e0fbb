"""Exchanges that are slow but healthy must not be cut, and valid but rare requests must be served.

The timeouts bound silence, not work: an upload that keeps sending for longer than the upstream timeout,
or a response body that pauses past every timeout, are fine as long as bytes keep moving.
"""

from __future__ import annotations

import hashlib

import pytest

from ._client import ClientPlan, run_client
from ._origin import STALL_MID_BODY, OriginPlan
from .hostile._peers import proxied_origin, raw_exchange

UPSTREAM_TIMEOUT = 0.4


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_steady_upload_longer_than_the_upstream_timeout_is_not_cut(framing: str) -> None:
    async with proxied_origin(upstream_timeout=UPSTREAM_TIMEOUT) as peers:
        body = bytes(range(256)) * 400  # 100 KiB in 25 pieces, one every 50 ms: 1.25 s of steady upload
        peers.origin.plans[b"/upload"] = OriginPlan(body=b"stored")
        plan = ClientPlan(
            target=b"/upload", method=b"POST", body=body, framing=framing, chunk_size=4096, pieces=(4096,), delay=0.05
        )
        outcome = await run_client(peers.port, plan)
        assert outcome.response is not None, outcome.received[:200]
        assert outcome.response.status == 200, outcome.received[:200]
        [received] = peers.origin.requests[b"/upload"]
        assert received.body_sha256 == hashlib.sha256(body).hexdigest()


async def test_response_body_paused_past_every_timeout_arrives_whole() -> None:
    async with proxied_origin(upstream_timeout=UPSTREAM_TIMEOUT, header_timeout=0.4, idle_timeout=0.4) as peers:
        body = bytes(range(256)) * 100
        peers.origin.plans[b"/pause"] = OriginPlan(
            body=body, framing="chunked", chunk_sizes=(1000,), fault=STALL_MID_BODY, fault_at=5000, stall=1.0
        )
        outcome = await run_client(peers.port, ClientPlan(target=b"/pause", patience=4.0))
        assert outcome.response is not None and outcome.response.body == body, outcome.received[:200]


async def test_chunked_request_with_trailers_is_answered() -> None:
    async with proxied_origin() as peers:
        request = (
            b"POST /trailers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"5\r\nhello\r\n0\r\nX-Checksum: 5d41402a\r\n\r\n"
        )
        result = await raw_exchange(peers.port, request)
        assert peers.handler_calls == [], peers.handler_calls
        assert [response.status for response in result.responses] == [200], result.received[:200]
        [received] = peers.origin.requests[b"/trailers"]
        assert received.body_complete and received.body_size == 5
