"""Hostile requests get a 4xx and a closed connection, and nothing a strict origin would refuse goes upstream.

The origin behind the proxy is the recording chaos origin: it parses what it gets with a strict
RFC 9112 reader and records every request and every refusal. A case passes when the client gets the
expected refusal (after any response due first) and then the close, the origin received only the
targets the case allows (``/smuggled`` never), no request it received was malformed, and no hostile
request arrived there complete.
"""

from __future__ import annotations

import asyncio

import pytest

from ._cases import CASES, HostileCase
from ._peers import proxied_origin, raw_exchange


def _param(case: HostileCase) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=f"proxy bug: {case.proxy_bug}")] if case.proxy_bug else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
async def test_hostile_request_is_refused_closed_and_never_reaches_the_origin_malformed(case: HostileCase) -> None:
    async with proxied_origin(header_timeout=5.0) as peers:
        result = await raw_exchange(peers.port, case.data)
        assert result.malformed is None, f"the proxy's answer is malformed: {result.malformed}: {result.received!r}"
        if case.may_normalize and result.responses and result.responses[0].status == 200:
            # Repaired rather than refused: then exactly one clean request went upstream.
            assert result.responses[0].body == b"default"
            assert peers.origin.violations() == []
            assert [r.head.target for c in peers.origin.connections for r in c.requests] == [b"/h"]
            return
        assert len(result.responses) == case.answered_first + 1, (
            f"expected {case.answered_first} response(s) then a refusal, got {result.received[:300]!r}"
        )
        for response in result.responses[: case.answered_first]:
            assert response.status == 200 and response.body == b"default", response
        refusal = result.responses[-1]
        assert refusal.status in case.statuses, f"status {refusal.status}: {result.received[-300:]!r}"
        assert result.closed, "the proxy left the connection open after refusing the request"

        # Whatever the proxy had already sent upstream must be closed off, not left for a later request.
        origin = peers.origin
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        while any(not (c.peer_closed or c.closed) for c in origin.connections if c.requests) and not all(
            r.body_complete for c in origin.connections for r in c.requests
        ):
            assert loop.time() < deadline, "an upstream connection with an unfinished hostile request stays open"
            await asyncio.sleep(0.02)
        assert origin.violations() == []
        received = {request.head.target for c in origin.connections for request in c.requests}
        assert received <= case.forwarded, f"the origin received {sorted(received)}"
        complete = {r.head.target for c in origin.connections for r in c.requests if r.body_complete}
        assert b"/h" not in complete, "a hostile request reached the origin complete"
        assert peers.handler_calls == []


async def test_the_proxy_still_serves_after_every_hostile_case_on_one_proxy() -> None:
    async with proxied_origin(header_timeout=5.0) as peers:
        cases = [case for case in CASES if not case.proxy_bug and not case.may_normalize]
        results = await asyncio.gather(*(raw_exchange(peers.port, case.data) for case in cases))
        for case, result in zip(cases, results, strict=True):
            assert result.closed and result.responses, case.name
            assert result.responses[-1].status in case.statuses, case.name
        good = await raw_exchange(peers.port, b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert [response.status for response in good.responses] == [200]
        assert good.responses[0].body == b"default"
        assert peers.origin.violations() == []
        assert peers.handler_calls == []
