"""An upstream that breaks off mid-body must leave every client with a visibly incomplete message.

For an HTTP/1.1 client the proxy frames the body itself (chunked or Content-Length), so a close before
the end is visible. An HTTP/1.0 client has no framing for a close-delimited body: the close *is* the end,
so the proxy must reset the connection (RST), never close it cleanly (FIN), or the cut body reads as
complete.
"""

from __future__ import annotations

from ._client import ClientPlan, run_client
from ._origin import RST_MID_BODY, OriginPlan
from .hostile._peers import proxied_origin

BODY = bytes(range(256)) * 40


async def _cut(version: bytes) -> tuple[str, bytes]:
    async with proxied_origin() as peers:
        peers.origin.plans[b"/cut"] = OriginPlan(body=BODY, framing="close", fault=RST_MID_BODY, fault_at=3000)
        outcome = await run_client(peers.port, ClientPlan(target=b"/cut", version=version, patience=3.0))
        assert peers.handler_calls == []
        return outcome.ending, outcome.response.body if outcome.response is not None else b""


async def test_upstream_reset_mid_body_is_a_visible_cut_for_an_http11_client() -> None:
    ending, body = await _cut(b"HTTP/1.1")
    assert ending in ("fin", "rst") and body == b"", (ending, len(body))


async def test_upstream_reset_mid_body_resets_an_http10_client() -> None:
    ending, body = await _cut(b"HTTP/1.0")
    assert ending == "rst", f"the HTTP/1.0 client saw a clean close after {len(body)} of {len(BODY)} bytes"
