"""The gateway's Python hooks end to end (issue #11): ``on_request`` and ``on_response`` against real aiohttp
origins, httpx clients and raw sockets on 127.0.0.1.

``on_request(request)`` (sync or async) runs after the head is parsed, before an upstream is chosen: it may
change the headers, the route or the upstream group, or answer by itself with a ``fastpipe.Response``.
``on_response(exchange, pipe)`` runs before the first byte goes to the client: it may tap the body and say
what happens when the client leaves (``pipe.on_disconnect``). A hook never corrupts a stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import fastpipe
from fastpipe import DisconnectPolicy, Headers, Response
from fastpipe.http import shutdown_proxy, start_proxy

from ._gateway_support import closed_port, group
from ._hooks_support import (
    HookGateway,
    RawClient,
    StreamOrigin,
    chunk_of,
    eventually,
    hooked,
    loop_errors,
    raw_client,
    raw_request,
    stream_origins,
    streamed_body,
)

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n"


def two_groups(a: StreamOrigin, b: StreamOrigin, **route_b: Any) -> dict[str, Any]:
    """Route ``a`` (everything) to group ``ga`` (origin a), route ``b`` (``/b/``) to group ``gb`` (origin b)."""
    return {
        "upstreams": {"ga": group(a.url), "gb": group(b.url)},
        "routes": [
            {"name": "a", "upstream": "ga"},
            {"name": "b", "path_prefix": "/b/", "upstream": "gb", **route_b},
        ],
    }


def one_group(origin: StreamOrigin, **settings: Any) -> dict[str, Any]:
    return {"upstreams": {"ga": group(origin.url)}, "routes": [{"name": "a", "upstream": "ga"}], **settings}


def hook_of(kind: str, body: Callable[[fastpipe.Request], Any]) -> Callable[[fastpipe.Request], Any]:
    """``body`` as a plain function (``sync``) or as a coroutine function that really suspends (``async``)."""
    if kind == "sync":
        return body

    async def hook(request: fastpipe.Request) -> Any:
        await asyncio.sleep(0.01)
        return body(request)

    return hook


KINDS = ["sync", "async"]


def hook_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [entry for entry in caplog.records if entry.name == "fastpipe" and entry.levelno >= logging.ERROR]


def pool_of(proxy: HookGateway, index: int = 0) -> Any:
    pool = proxy.proxy.routing.links[index].pool
    assert pool is not None
    return pool


# -- on_request: what the hook sees, sync and async


@pytest.mark.parametrize("kind", KINDS)
async def test_on_request_sees_the_request_as_sent(kind: str) -> None:
    seen: list[dict[str, Any]] = []

    def look(request: fastpipe.Request) -> None:
        headers = request.headers
        seen.append(
            {
                "method": request.method,
                "target": request.target,
                "path": request.path,
                "x": (headers["x-mixed-case"], headers.get("X-MIXED-CASE"), "X-Mixed-Case" in headers),
                "host": headers["HOST"],
                "peer": request.peer,
                "route": request.route,
                "upstream": request.upstream,
            }
        )

    async with stream_origins("a", "b") as (a, b), hooked(two_groups(a, b), on_request=hook_of(kind, look)) as proxy:
        response = await proxy.client.post("/b/items?x=1&y=%20z", content=b"hello", headers={"X-Mixed-Case": "v1"})
        assert response.status_code == 200, response.text
        assert response.json()["server"] == "b"
        [record] = await proxy.wait_records(1)
    assert seen == [
        {
            "method": "POST",
            "target": "/b/items?x=1&y=%20z",
            "path": "/b/items",
            "x": ("v1", "v1", True),
            "host": f"127.0.0.1:{proxy.port}",
            "peer": "127.0.0.1",
            "route": "b",
            "upstream": "gb",
        }
    ]
    assert b.requests[0].body == b"hello"
    assert (record.status, record.end, record.route, record.upstream, record.attempts) == (
        200,
        "complete",
        "b",
        "gb",
        1,
    )


async def test_a_hook_that_changes_nothing_sends_the_same_head_as_no_hook() -> None:
    request = raw_request(
        "GET",
        "/same?q=1",
        [
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Forwarded-Proto", "https"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "dropped"),
            ("X_Underscored", "dropped"),
            ("Keep-Alive", "timeout=5"),
            ("X-A", "1"),
            ("x-a", "2"),
        ],
    )
    posted = raw_request("POST", "/same", [("X-B", "1"), ("Content-Type", "text/plain")], body=b"payload")
    heads = []
    for hooks in ({}, {"on_request": lambda request: None}):
        async with stream_origins("a") as (a,), hooked(one_group(a), **hooks) as proxy:
            async with raw_client(proxy.port) as client:
                for message in (request, posted):
                    await client.send(message)
                    assert (await client.response()).status == 200
            heads.append([seen.headers for seen in a.requests])
            assert a.requests[1].body == b"payload"
    assert heads[0] == heads[1]
    assert ("X-Forwarded-For", "10.0.0.1, 127.0.0.1") in heads[1][0]
    assert not any(name.lower() in ("x-hop", "x_underscored", "keep-alive") for name, _ in heads[1][0])


@pytest.mark.parametrize("kind", KINDS)
async def test_header_set_replace_and_delete_reach_the_origin_exactly(kind: str) -> None:
    def edit(request: fastpipe.Request) -> None:
        headers = request.headers
        headers["X-Replace"] = "new"  # replaces both fields of that name, whatever their case
        del headers["x-drop"]
        headers.add("X-Added", "a1")
        headers.add("x-added", "a2")
        headers["X-Set"] = "s"

    sent = [
        ("X-Keep", "k"),
        ("X-Replace", "old1"),
        ("x-replace", "old2"),
        ("X-Drop", "d1"),
        ("X-DROP", "d2"),
    ]
    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=hook_of(kind, edit)) as proxy:
        async with raw_client(proxy.port) as client:
            await client.send(raw_request("GET", "/edit", sent))
            assert (await client.response()).status == 200
    [seen] = a.requests
    assert seen.values("X-Keep") == ["k"]
    assert seen.values("X-Replace") == ["new"]
    assert seen.values("X-Drop") == []
    assert seen.values("X-Added") == ["a1", "a2"]
    assert ("X-Set", "s") in seen.headers and seen.values("X-Set") == ["s"]
    assert seen.values("Host") == ["test"]


@pytest.mark.parametrize(("change", "expected"), [("set", "api.internal:8443"), ("delete", "the upstream's")])
async def test_a_hook_changes_or_removes_the_host(change: str, expected: str) -> None:
    def edit(request: fastpipe.Request) -> None:
        if change == "set":
            request.headers["host"] = "api.internal:8443"
        else:
            del request.headers["Host"]

    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=edit) as proxy:
        response = await proxy.get("/host", headers={"Host": "public.example"})
        assert response.status_code == 200
    if expected == "the upstream's":
        expected = f"127.0.0.1:{a.port}"
    assert a.requests[0].values("Host") == [expected]


RESERVED = ["content-LENGTH", "Transfer-Encoding", "Connection", "Keep-Alive", "Upgrade", "TE", "Trailer"]


async def test_a_hook_cannot_set_framing_or_hop_by_hop_headers(caplog: pytest.LogCaptureFixture) -> None:
    # /set/N sets RESERVED[N], /add/N adds it: each try is a ValueError inside the hook, so a 500.
    refused: dict[str, Exception] = {}

    def edit(request: fastpipe.Request) -> None:
        _, operation, index = request.path.split("/")
        name = RESERVED[int(index)]
        try:
            if operation == "set":
                request.headers[name] = "chunked"
            else:
                request.headers.add(name, "close")
        except ValueError as exc:
            refused[request.path] = exc
            raise

    tries = [f"/{operation}/{index}" for operation in ("set", "add") for index in range(len(RESERVED))]
    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=edit) as proxy:
        statuses = [(await proxy.client.post(path, content=b"body")).status_code for path in tries]
        records = await proxy.wait_records(len(tries))
    assert statuses == [500] * len(tries)
    assert sorted(refused) == sorted(tries)
    assert all(RESERVED[int(path[-1])] in str(refused[path]) for path in tries)
    assert a.requests == []
    assert {(record.status, record.attempts) for record in records} == {(500, 0)}
    logged = {id(entry.exc_info[1]) for entry in hook_errors(caplog) if entry.exc_info}
    assert all(id(exc) in logged for exc in refused.values())


async def test_a_hook_cannot_delete_the_content_length_of_a_body(caplog: pytest.LogCaptureFixture) -> None:
    # Without its Content-Length the origin would read the body as the next request on the pooled connection.
    refused: list[Exception] = []

    def edit(request: fastpipe.Request) -> None:
        if request.method != "POST":
            return
        try:
            del request.headers["Content-Length"]
        except ValueError as exc:
            refused.append(exc)
            raise

    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=edit) as proxy:
        async with raw_client(proxy.port) as client:
            await client.send(raw_request("POST", "/upload", body=SMUGGLED))
            assert (await client.response()).status == 500
            await client.send(raw_request("GET", "/after"))
            assert (await client.response()).status == 200
    assert len(refused) == 1
    assert [seen.target for seen in a.requests] == ["/after"]


async def test_headers_replaced_whole_keep_the_bodys_framing() -> None:
    def replace(request: fastpipe.Request) -> None:
        kept = [(name, value) for name, value in request.headers.items() if name.lower() != "content-length"]
        request.headers = Headers([*kept, ("X-Replaced", "yes")])

    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=replace) as proxy:
        async with raw_client(proxy.port) as client:
            await client.send(raw_request("POST", "/upload", body=SMUGGLED))
            first = await client.response()
            await client.send(raw_request("GET", "/after"))
            second = await client.response()
    assert (first.status, second.status) == (200, 200)
    assert [seen.target for seen in a.requests] == ["/upload", "/after"]
    assert a.requests[0].body == SMUGGLED
    assert a.requests[0].values("X-Replaced") == ["yes"]


async def test_headers_replaced_by_something_unusable_is_a_500_and_the_proxy_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def replace(request: fastpipe.Request) -> None:
        if request.path == "/broken":
            request.headers = None  # type: ignore[assignment]

    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=replace) as proxy:
        with loop_errors() as errors:
            response = await proxy.get("/broken")
            assert response.status_code == 500
            assert (await proxy.get("/fine")).status_code == 200
    assert errors == []
    assert [seen.target for seen in a.requests] == ["/fine"]
    assert hook_errors(caplog)


# -- on_request: route and upstream


async def test_a_hook_sends_the_request_to_another_configured_route() -> None:
    def reroute(request: fastpipe.Request) -> None:
        if request.path == "/to-b":
            request.route = "b"

    config = two_groups_with_headers()
    async with stream_origins("a", "b") as (a, b):
        async with hooked(config(a, b), on_request=reroute) as proxy:
            response = await proxy.get("/to-b?x=1")
            assert response.json()["server"] == "b"
            assert await proxy.seen_by("/stays") == "a"
            first, second = await proxy.wait_records(2)
    assert [seen.target for seen in b.requests] == ["/to-b?x=1"]
    assert b.requests[0].values("X-Route") == ["b"]  # the chosen route's own settings apply
    assert (first.route, first.upstream, first.server, first.attempts) == ("b", "gb", b.url, 1)
    assert (second.route, second.upstream) == ("a", "ga")


def two_groups_with_headers() -> Callable[[StreamOrigin, StreamOrigin], dict[str, Any]]:
    return lambda a, b: two_groups(a, b, set_request_headers={"X-Route": "b"})


@pytest.mark.parametrize("kind", KINDS)
async def test_a_hook_sends_the_request_to_another_upstream_group(kind: str) -> None:
    def regroup(request: fastpipe.Request) -> None:
        request.upstream = "gb"

    async with stream_origins("a", "b") as (a, b), hooked(two_groups(a, b), on_request=hook_of(kind, regroup)) as proxy:
        assert await proxy.seen_by("/anything") == "b"
        [record] = await proxy.wait_records(1)
    assert a.requests == []
    assert (record.route, record.upstream, record.server) == ("a", "gb", b.url)


async def test_a_group_chosen_by_the_hook_balances_and_retries_on_its_own_servers() -> None:
    dead = f"http://127.0.0.1:{closed_port()}"

    def regroup(request: fastpipe.Request) -> None:
        request.upstream = "spare"

    async with stream_origins("a", "b") as (a, b):
        config = {
            "upstreams": {"ga": group(a.url), "spare": group(dead, b.url, max_fails=1, fail_timeout=30)},
            "routes": [{"name": "a", "upstream": "ga"}],
        }
        async with hooked(config, on_request=regroup) as proxy:
            assert [await proxy.seen_by(f"/{index}") for index in range(3)] == ["b"] * 3
            records = await proxy.wait_records(3)
    assert a.requests == []
    assert [(record.upstream, record.server, record.attempts) for record in records] == [
        ("spare", b.url, 2),  # round-robin began with the dead server: refused, then the other one
        ("spare", b.url, 1),  # ejected now
        ("spare", b.url, 1),
    ]


@pytest.mark.parametrize("attribute", ["route", "upstream"])
async def test_an_unknown_route_or_group_is_a_500_naming_it(attribute: str, caplog: pytest.LogCaptureFixture) -> None:
    def choose(request: fastpipe.Request) -> None:
        if request.path == "/lost":
            setattr(request, attribute, "no-such-name-42")

    async with stream_origins("a", "b") as (a, b), hooked(two_groups(a, b), on_request=choose) as proxy:
        response = await proxy.get("/lost")
        assert response.status_code == 500
        assert await proxy.seen_by("/found") == "a"  # the same connection goes on
        [failed, _] = await proxy.wait_records(2)
    assert [seen.target for seen in a.requests + b.requests] == ["/found"]
    assert failed.status == 500 and failed.attempts == 0
    logged = "\n".join(caplog.text.splitlines())
    assert "no-such-name-42" in logged


async def test_a_request_rerouted_to_a_strip_prefix_route_keeps_a_path_outside_the_prefix() -> None:
    # Route b strips /b/; a request for /other/thing sent there by the hook does not start with /b/, so
    # there is nothing to strip: the origin must get the path itself, not the path less four bytes.
    def reroute(request: fastpipe.Request) -> None:
        request.route = "b"

    async with stream_origins("a", "b") as (a, b):
        async with hooked(two_groups(a, b, strip_prefix=True), on_request=reroute) as proxy:
            assert (await proxy.get("/b/inside")).status_code == 200
            assert (await proxy.get("/other/thing")).status_code == 200
    assert [seen.target for seen in b.requests] == ["/inside", "/other/thing"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_tag_set_by_the_hook_is_the_records(kind: str) -> None:
    def tag(request: fastpipe.Request) -> Response | None:
        request.tag = ("team", request.headers.get("x-team"))
        return Response(402, body=b"pay first\n") if request.path == "/paid" else None

    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=hook_of(kind, tag)) as proxy:
        assert (await proxy.get("/free", headers={"X-Team": "red"})).status_code == 200
        assert (await proxy.get("/paid", headers={"X-Team": "blue"})).status_code == 402
        records = await proxy.wait_records(2)
    assert [(record.status, record.tag) for record in records] == [(200, ("team", "red")), (402, ("team", "blue"))]


# -- on_request answers by itself


@pytest.mark.parametrize("kind", KINDS)
async def test_a_hook_answers_401_with_www_authenticate(kind: str) -> None:
    def deny(request: fastpipe.Request) -> Response | None:
        if request.headers.get("authorization") is None:
            return Response(401, headers={"WWW-Authenticate": 'Bearer realm="gw"'}, body=b"who are you?\n")
        return None

    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=hook_of(kind, deny)) as proxy:
        response = await proxy.get("/private")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="gw"'
        assert response.content == b"who are you?\n"
        assert response.headers["content-length"] == "13"
        allowed = await proxy.get("/private", headers={"Authorization": "Bearer t"})
        assert allowed.status_code == 200
        denied, passed = await proxy.wait_records(2)
    assert [seen.target for seen in a.requests] == ["/private"]
    assert (denied.status, denied.end, denied.route, denied.attempts) == (401, "complete", "a", 0)
    assert (passed.status, passed.attempts) == (200, 1)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_hook_answers_429_with_retry_after_and_a_text_body(kind: str) -> None:
    text = "budget spent — come back later\n"

    def budget(request: fastpipe.Request) -> Response:
        return Response(429, headers=[("Retry-After", "60"), ("Content-Type", "text/plain; charset=utf-8")], body=text)

    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=hook_of(kind, budget)) as proxy:
        response = await proxy.client.post("/v1/chat", json={"model": "x"})
        [record] = await proxy.wait_records(1)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "60"
    assert response.content == text.encode("utf-8")
    assert response.text == text
    assert a.requests == []
    assert record.status == 429 and record.end == "complete"


async def test_a_hook_answer_to_head_has_no_body_and_the_connection_goes_on() -> None:
    def deny(request: fastpipe.Request) -> Response | None:
        return Response(403, body=b"forbidden here\n") if request.path == "/deny" else None

    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=deny) as proxy:
        async with raw_client(proxy.port) as client:
            await client.send(raw_request("HEAD", "/deny"))
            head = await client.response(head_only=True)
            assert head.status == 403 and head.header("content-length") == "15"
            await client.send(raw_request("GET", "/after"))
            after = await client.response()  # a body after the HEAD answer would be read as this head
    assert after.status == 200 and after.header("x-origin") == "a"
    assert [seen.target for seen in a.requests] == ["/after"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_keep_alive_connection_serves_the_next_requests_after_a_hook_answer(kind: str) -> None:
    def deny(request: fastpipe.Request) -> Response | None:
        return Response(401, body=b"no\n") if request.path.startswith("/deny") else None

    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=hook_of(kind, deny)) as proxy:
        async with raw_client(proxy.port) as client:
            statuses = []
            for target in ("/deny/1", "/ok/1", "/deny/2", "/ok/2"):
                await client.send(raw_request("GET", target))
                response = await client.response()
                assert response.header("connection") is None  # no close: the connection goes on
                statuses.append(response.status)
    assert statuses == [401, 200, 401, 200]
    assert [seen.target for seen in a.requests] == ["/ok/1", "/ok/2"]


@pytest.mark.parametrize("when", ["with the head", "after the answer"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_posted_body_answered_by_the_hook_does_not_reach_the_next_request(
    kind: str, framing: str, when: str
) -> None:
    # The body looks like requests and is bigger than the write buffer's high-water mark: neither its
    # content nor its size may leak into the next request on this connection.
    body = SMUGGLED * 3000  # 108 kB

    def deny(request: fastpipe.Request) -> Response | None:
        return Response(401, body=b"denied\n") if request.method == "POST" else None

    message = raw_request("POST", "/upload", body=body, chunked=framing == "chunked")
    split = message.index(b"\r\n\r\n") + 4
    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=hook_of(kind, deny)) as proxy:
        async with raw_client(proxy.port) as client:
            if when == "with the head":
                await client.send(message)
                denied = await client.response()
            else:
                await client.send(message[:split])
                denied = await client.response()
                await client.send(message[split:])
            await client.send(raw_request("GET", "/next"))
            following = await client.response()
        records = await proxy.wait_records(2)
    assert (denied.status, denied.body) == (401, b"denied\n")
    assert following.status == 200 and following.header("x-origin") == "a"
    assert [seen.target for seen in a.requests] == ["/next"]
    assert [record.status for record in records] == [401, 200]


async def test_a_body_arriving_while_an_async_hook_runs_goes_up_whole() -> None:
    # 300 kB is over the write buffer's high-water mark: reading pauses while the hook runs, then resumes.
    body = bytes(range(256)) * 1200

    async def slow(request: fastpipe.Request) -> None:
        await asyncio.sleep(0.1)
        request.headers["X-Checked"] = "1"

    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=slow) as proxy:
        for framing in ("length", "chunked"):
            content = body if framing == "length" else pieces(body[:100_000], body[100_000:])
            response = await proxy.client.post(f"/upload/{framing}", content=content)
            assert response.status_code == 200 and response.json()["body"] == len(body)
    assert [(seen.target, seen.body == body, seen.values("X-Checked")) for seen in a.requests] == [
        ("/upload/length", True, ["1"]),
        ("/upload/chunked", True, ["1"]),
    ]


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    """A request body httpx sends chunked, in these pieces."""
    for part in parts:
        yield part


async def test_the_health_endpoint_does_not_run_the_hook() -> None:
    called: list[str] = []

    def deny(request: fastpipe.Request) -> Response:
        called.append(request.path)
        return Response(401)

    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=deny, health_path="/healthz") as proxy:
        health = await proxy.get("/healthz")
        other = await proxy.get("/other")
    assert (health.status_code, health.text) == (200, "ok\n")
    assert other.status_code == 401
    assert called == ["/other"]


@pytest.mark.parametrize("status", [204, 304])
async def test_a_bodiless_status_from_a_hook_keeps_the_connection_usable(status: int) -> None:
    def answer(request: fastpipe.Request) -> Response | None:
        return Response(status, headers={"ETag": '"v1"'}) if request.path == "/cached" else None

    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=answer) as proxy:
        async with raw_client(proxy.port) as client:
            await client.send(raw_request("GET", "/cached"))
            cached = await client.response()
            await client.send(raw_request("GET", "/next"))
            following = await client.response()
    assert cached.status == status and cached.header("etag") == '"v1"'
    if status == 204:
        assert cached.header("content-length") is None  # RFC 9110 §8.6: never in a 204
    assert following.status == 200


def test_a_response_refuses_what_cannot_be_sent() -> None:
    with pytest.raises(ValueError):
        Response(101)
    with pytest.raises(ValueError):
        Response(200, headers={"Content-Length": "5"})
    with pytest.raises(ValueError):
        Response(200, headers={"Transfer-Encoding": "chunked"})
    with pytest.raises(ValueError):
        Response(200, headers={"X-Bad": "a\r\nInjected: yes"})
    for status in (204, 304):
        with pytest.raises(ValueError):
            Response(status, body=b"a body a client would read as the next response")
    assert Response(200, body="é").body == "é".encode()


# -- on_request fails


@pytest.mark.parametrize("kind", KINDS)
async def test_a_raising_hook_is_a_500_with_its_traceback_logged(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    failure = RuntimeError("the budget store is down")

    def fail(request: fastpipe.Request) -> None:
        if request.path == "/boom":
            raise failure

    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=hook_of(kind, fail)) as proxy:
        response = await proxy.client.post("/boom", content=b"x" * 1000)
        assert response.status_code == 500
        assert await proxy.seen_by("/after") == "a"
        failed, _ = await proxy.wait_records(2)
    assert [seen.target for seen in a.requests] == ["/after"]
    assert failed.status == 500 and failed.attempts == 0
    [logged] = [entry for entry in hook_errors(caplog) if entry.exc_info and entry.exc_info[1] is failure]
    assert "on_request" in logged.getMessage()
    assert "the budget store is down" in caplog.text and "Traceback" in caplog.text


@pytest.mark.parametrize("kind", KINDS)
async def test_a_hook_returning_neither_none_nor_a_response_is_a_500(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=hook_of(kind, lambda request: 42)) as proxy:
        response = await proxy.get("/odd")
    assert response.status_code == 500
    assert a.requests == []
    assert "42" in caplog.text


async def test_an_async_hook_slower_than_upstream_timeout_is_a_504() -> None:
    outcome: list[str] = []

    async def slow(request: fastpipe.Request) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        outcome.append("finished")

    async with (
        stream_origins("a") as (a,),
        hooked(one_group(a, limits={"upstream_timeout": 0.3}), on_request=slow) as proxy,
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await proxy.get("/slow-hook")
        took = loop.time() - started
        [record] = await proxy.wait_records(1)
        await eventually(lambda: outcome != [], "the hook's task ended")
    assert response.status_code == 504
    assert 0.25 < took < 2.0, took
    assert outcome == ["cancelled"]
    assert a.requests == []
    assert (record.status, record.end) == (504, "timeout")


async def test_a_routes_own_upstream_timeout_bounds_its_hook() -> None:
    # The route allows 0.3 s, the file's [limits] 30 s: the hook's time counts against the route's.
    async def slow(request: fastpipe.Request) -> None:
        await asyncio.sleep(1.5)

    config = one_group_with_route_limits()
    async with stream_origins("a") as (a,), hooked(config(a), on_request=slow) as proxy:
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await proxy.get("/slow-hook")
        took = loop.time() - started
    assert response.status_code == 504, f"{response.status_code} after {took:.2f} s"
    assert took < 1.2


def one_group_with_route_limits() -> Callable[[StreamOrigin], dict[str, Any]]:
    return lambda a: {
        "limits": {"upstream_timeout": 30},
        "upstreams": {"ga": group(a.url)},
        "routes": [{"name": "a", "upstream": "ga", "limits": {"upstream_timeout": 0.3}}],
    }


@pytest.mark.parametrize("leave", ["reset", "FIN with abort_on_client_eof"])
async def test_a_client_leaving_while_an_async_hook_runs_cancels_it(leave: str) -> None:
    entered = asyncio.Event()
    outcome: list[str] = []

    async def wait(request: fastpipe.Request) -> None:
        if request.path != "/wait":
            return
        entered.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        outcome.append("finished")

    options = {"abort_on_client_eof": True} if leave != "reset" else {}
    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=wait, **options) as proxy:
        with loop_errors() as errors:
            client = await RawClient.open(proxy.port)
            await client.send(raw_request("GET", "/wait"))
            await asyncio.wait_for(entered.wait(), 5)
            if leave == "reset":
                client.reset()
            else:
                client.writer.write_eof()
            await eventually(lambda: outcome != [], "the hook's task ended")
            [record] = await proxy.wait_records(1)
            if leave != "reset":
                await client.close()
            assert await proxy.seen_by("/next") == "a"  # the proxy keeps serving
            await asyncio.sleep(0.05)
    assert outcome == ["cancelled"]
    assert record.end == "client gone" and record.attempts == 0
    assert [seen.target for seen in a.requests] == ["/next"]
    assert errors == []


def waiting_hook(entered: asyncio.Event, outcome: list[str]) -> Callable[[fastpipe.Request], Any]:
    async def wait(request: fastpipe.Request) -> None:
        entered.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        outcome.append("finished")

    return wait


async def test_a_request_body_that_stops_while_an_async_hook_runs_ends_the_hook_too() -> None:
    # The body stops arriving: 408 after idle_timeout. The hook has nothing left to decide for.
    entered = asyncio.Event()
    outcome: list[str] = []
    async with (
        stream_origins("a") as (a,),
        hooked(one_group(a), on_request=waiting_hook(entered, outcome), idle_timeout=0.3) as proxy,
    ):
        async with raw_client(proxy.port) as client:
            await client.send(raw_request("POST", "/upload", body=b"x" * 100)[:-90])
            await asyncio.wait_for(entered.wait(), 5)
            response = await client.response()
            [record] = await proxy.wait_records(1)
            await eventually(lambda: outcome != [], "the hook's task ended", timeout=2)
    assert response.status == 408 and record.status == 408
    assert outcome == ["cancelled"]
    assert a.requests == []


async def test_a_shutdown_while_an_async_hook_runs_ends_the_hook_too() -> None:
    entered = asyncio.Event()
    outcome: list[str] = []
    async with stream_origins("a") as (a,):
        server = await start_proxy(
            config=one_group(a), host="127.0.0.1", port=0, on_request=waiting_hook(entered, outcome)
        )
        try:
            async with raw_client(server.sockets[0].getsockname()[1]) as client:
                await client.send(raw_request("GET", "/wait"))
                await asyncio.wait_for(entered.wait(), 5)
                await shutdown_proxy(server, grace=0.2)
                response = await client.response()
                await eventually(lambda: outcome != [], "the hook's task ended", timeout=2)
        finally:
            await shutdown_proxy(server, grace=0.2)
    assert response.status == 503
    assert outcome == ["cancelled"]
    assert a.requests == []


async def test_pipelined_requests_are_hooked_and_answered_in_order() -> None:
    order: list[str] = []
    delays = {"/p/1": 0.15, "/p/2": 0.0, "/p/3": 0.05, "/p/4": 0.0}

    async def hook(request: fastpipe.Request) -> Response | None:
        order.append(request.path)
        await asyncio.sleep(delays[request.path])
        if request.path == "/p/2":
            return Response(418, body=b"short and stout\n")
        request.headers["X-Hooked"] = request.path
        return None

    pipelined = (
        raw_request("GET", "/p/1")
        + raw_request("POST", "/p/2", body=SMUGGLED)
        + raw_request("GET", "/p/3")
        + raw_request("GET", "/p/4")
    )
    async with stream_origins("a") as (a,), hooked(one_group(a), on_request=hook) as proxy:
        async with raw_client(proxy.port) as client:
            await client.send(pipelined)
            answers = [await client.response() for _ in range(4)]
    assert order == ["/p/1", "/p/2", "/p/3", "/p/4"]
    assert [answer.status for answer in answers] == [200, 418, 200, 200]
    assert answers[1].body == b"short and stout\n"
    assert [answer.body.count(path.encode()) for answer, path in zip(answers, delays, strict=True)] == [1, 0, 1, 1]
    assert [(seen.target, seen.values("X-Hooked")) for seen in a.requests] == [
        ("/p/1", ["/p/1"]),
        ("/p/3", ["/p/3"]),
        ("/p/4", ["/p/4"]),
    ]


# -- on_response


async def test_on_response_sees_the_response_head_and_where_it_came_from() -> None:
    seen: list[dict[str, Any]] = []

    def look(exchange: fastpipe.ResponseInfo, pipe: fastpipe.Pipe) -> None:
        seen.append(
            {
                "status": exchange.status,
                "origin": exchange.headers["x-origin"],
                "type": exchange.headers.get("Content-Type"),
                "framing": [name for name in exchange.headers if name.lower() in ("connection", "transfer-encoding")],
                "where": (exchange.route, exchange.upstream, exchange.server),
                "request": (exchange.method, exchange.target, exchange.path, exchange.peer),
                "state": pipe.state,
                "bytes": pipe.nbytes,
            }
        )

    async with stream_origins("a", "b") as (a, b), hooked(two_groups(a, b), on_response=look) as proxy:
        response = await proxy.get("/b/status/201?q=1")
        assert response.status_code == 201
        streamed = await proxy.get("/stream?chunks=3&size=10")  # chunked, with Connection: close asked
        assert streamed.status_code == 200
    first, second = seen
    assert first["status"] == 201 and first["origin"] == "b"
    assert first["type"] is not None and first["type"].startswith("application/json")
    assert first["where"] == ("b", "gb", b.url)
    assert first["request"] == ("GET", "/b/status/201?q=1", "/b/status/201", "127.0.0.1")
    assert first["bytes"] == 0  # before the first byte
    assert second["origin"] == "a" and second["framing"] == []  # the hop's own headers are not shown


async def test_a_tap_sees_every_chunk_of_a_stream_and_what_the_client_got() -> None:
    tapped: list[bytes] = []

    def on_response(exchange: fastpipe.ResponseInfo, pipe: fastpipe.Pipe) -> None:
        pipe.tap(lambda chunk: tapped.append(bytes(chunk)))

    async with stream_origins("a") as (a,), hooked(one_group(a), on_response=on_response) as proxy:
        async with proxy.client.stream("GET", "/stream?chunks=40&size=500&delay=0.003&length=1") as response:
            body = await response.aread()
        [record] = await proxy.wait_records(1)
    assert body == streamed_body(40, 500)
    assert b"".join(tapped) == body
    assert len(tapped) == record.response_chunks > 10
    assert record.end == "complete" and record.response_bytes == len(body)


async def test_a_tap_on_a_chunked_stream_sees_the_body_the_client_got() -> None:
    tapped: list[bytes] = []

    def on_response(exchange: fastpipe.ResponseInfo, pipe: fastpipe.Pipe) -> None:
        pipe.tap(lambda chunk: tapped.append(bytes(chunk)))

    async with stream_origins("a") as (a,), hooked(one_group(a), on_response=on_response) as proxy:
        async with proxy.client.stream("GET", "/stream?chunks=20&size=100&delay=0.003") as response:
            assert response.headers.get("transfer-encoding") == "chunked"
            body = await response.aread()
    assert body == streamed_body(20, 100)
    assert b"".join(tapped) == body


async def test_an_on_response_that_raises_leaves_the_stream_whole(caplog: pytest.LogCaptureFixture) -> None:
    failure = ValueError("metrics backend unreachable")

    def on_response(exchange: fastpipe.ResponseInfo, pipe: fastpipe.Pipe) -> None:
        raise failure

    async with stream_origins("a") as (a,), hooked(one_group(a), on_response=on_response) as proxy:
        response = await proxy.get("/stream?chunks=20&size=300&delay=0.002&length=1")
        assert await proxy.seen_by("/after") == "a"
        first, _ = await proxy.wait_records(2)
    assert response.status_code == 200 and response.content == streamed_body(20, 300)
    assert first.end == "complete"
    assert any(entry.exc_info and entry.exc_info[1] is failure for entry in hook_errors(caplog))


async def test_an_async_on_response_is_refused_with_a_log_and_the_stream_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[bool] = []

    async def on_response(exchange: fastpipe.ResponseInfo, pipe: fastpipe.Pipe) -> None:
        ran.append(True)

    async with stream_origins("a") as (a,), hooked(one_group(a), on_response=on_response) as proxy:
        response = await proxy.get("/stream?chunks=5&size=100&length=1")
    assert response.content == streamed_body(5, 100)
    assert ran == []
    assert "on_response must be a plain function" in caplog.text


async def test_an_observer_raising_on_its_second_chunk_is_detached_and_the_stream_goes_on() -> None:
    before: list[bytes] = []
    after: list[bytes] = []
    broken_calls: list[int] = []
    failure = RuntimeError("observer broke on chunk 2")

    def broken(chunk: Any) -> None:
        broken_calls.append(len(chunk))
        if len(broken_calls) == 2:
            raise failure

    def on_response(exchange: fastpipe.ResponseInfo, pipe: fastpipe.Pipe) -> None:
        pipe.tap(lambda chunk: before.append(bytes(chunk)))
        pipe.tap(broken)
        pipe.tap(lambda chunk: after.append(bytes(chunk)))

    expected = streamed_body(30, 400)
    async with stream_origins("a") as (a,), hooked(one_group(a), on_response=on_response) as proxy:
        with loop_errors() as errors:
            response = await proxy.get("/stream?chunks=30&size=400&delay=0.003&length=1")
            [record] = await proxy.wait_records(1)
    assert response.status_code == 200 and response.content == expected
    assert record.end == "complete" and record.response_chunks > 3
    assert len(broken_calls) == 2, f"the raising observer saw {len(broken_calls)} chunks"
    assert b"".join(before) == expected and b"".join(after) == expected
    assert len(before) == len(after) == record.response_chunks
    assert [context.get("exception") for context in errors] == [failure]


# -- on_response: what happens when the client leaves


def tap_and_maybe_drain(
    tapped: list[bytes], policy: DisconnectPolicy | None
) -> Callable[[fastpipe.ResponseInfo, fastpipe.Pipe], None]:
    def on_response(exchange: fastpipe.ResponseInfo, pipe: fastpipe.Pipe) -> None:
        pipe.tap(lambda chunk: tapped.append(bytes(chunk)))
        if policy is not None:
            pipe.on_disconnect = policy

    return on_response


async def leave_mid_stream(proxy: HookGateway, target: str, read: int) -> float:
    """Read the head and ``read`` body bytes of ``GET target``, then reset; the loop time it left at."""
    client = await RawClient.open(proxy.port)
    await client.send(raw_request("GET", target))
    head = await client.head()
    assert head.status == 200
    await client.read_exactly(read)
    client.reset()
    return asyncio.get_running_loop().time()


async def test_a_drain_reads_the_stream_to_its_end_after_the_client_left() -> None:
    tapped: list[bytes] = []
    policy = DisconnectPolicy.drain(max_bytes=1 << 20, timeout=5)
    async with (
        stream_origins("a") as (a,),
        hooked(one_group(a), on_response=tap_and_maybe_drain(tapped, policy)) as proxy,
    ):
        await leave_mid_stream(proxy, "/stream?chunks=12&size=200&delay=0.03&length=1", read=200)
        [record] = await proxy.wait_records(1)
        drained = list(tapped)
        pool = pool_of(proxy)
        await eventually(lambda: pool.idle == 1, "the drained connection is pooled")
        assert await proxy.seen_by("/next") == "a"  # on the drained connection
    [stream] = a.streams
    assert stream.finished and not stream.broken
    assert b"".join(drained) == streamed_body(12, 200)
    assert drained[-1].endswith(chunk_of(11, 200))  # the final chunk was seen
    assert (record.status, record.end, record.attempts) == (200, "drained", 1)


async def test_a_drain_is_cut_at_max_bytes_and_the_upstream_connection_closed() -> None:
    tapped: list[bytes] = []
    policy = DisconnectPolicy.drain(max_bytes=3000, timeout=5)
    chunks, size = 200, 1000
    async with (
        stream_origins("a") as (a,),
        hooked(one_group(a), on_response=tap_and_maybe_drain(tapped, policy)) as proxy,
    ):
        left = await leave_mid_stream(proxy, f"/stream?chunks={chunks}&size={size}&delay=0.01&length=1", read=size)
        [record] = await proxy.wait_records(1)
        ended = asyncio.get_running_loop().time()
        pool = pool_of(proxy)
        await eventually(lambda: pool.open == 0, "the cut connection is closed")
        await eventually(lambda: a.streams[0].broken, "the origin saw its stream cut")
    assert (record.status, record.end, record.attempts) == (200, "drained", 1)
    assert not a.streams[0].finished
    assert ended - left < 1.5
    seen = sum(len(chunk) for chunk in tapped)
    assert seen < chunks * size // 4, f"the taps saw {seen} bytes: the cut came late"
    assert b"".join(tapped) == streamed_body(chunks, size)[:seen]


async def test_a_drain_is_cut_at_its_timeout_and_the_upstream_connection_closed() -> None:
    tapped: list[bytes] = []
    policy = DisconnectPolicy.drain(max_bytes=1 << 20, timeout=0.3)
    async with (
        stream_origins("a") as (a,),
        hooked(one_group(a), on_response=tap_and_maybe_drain(tapped, policy)) as proxy,
    ):
        left = await leave_mid_stream(proxy, "/stream?chunks=100&size=100&delay=0.05&length=1", read=100)
        [record] = await proxy.wait_records(1)
        waited = asyncio.get_running_loop().time() - left
        pool = pool_of(proxy)
        await eventually(lambda: pool.open == 0, "the cut connection is closed")
        await eventually(lambda: a.streams[0].broken, "the origin saw its stream cut")
    assert 0.25 < waited < 1.5, f"the drain ended {waited:.2f} s after the client left"
    assert (record.status, record.end) == (200, "drained")
    assert not a.streams[0].finished
    assert 3 <= len(tapped) < 40


async def test_without_a_drain_a_client_leaving_cancels_the_stream() -> None:
    tapped: list[bytes] = []
    async with (
        stream_origins("a") as (a,),
        hooked(one_group(a), on_response=tap_and_maybe_drain(tapped, None)) as proxy,
    ):
        await leave_mid_stream(proxy, "/stream?chunks=100&size=100&delay=0.02&length=1", read=100)
        [record] = await proxy.wait_records(1)
        pool = pool_of(proxy)
        await eventually(lambda: pool.open == 0, "the connection is closed")
        await eventually(lambda: a.streams[0].broken, "the origin saw its stream cut")
    assert (record.status, record.end) == (200, "client gone")
    assert sum(len(chunk) for chunk in tapped) < 100 * 100 // 2


# -- no hooks, no cost


async def test_without_hooks_no_hook_object_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastpipe.http import proxy as proxy_module
    from fastpipe.http import server as server_module

    built: list[str] = []

    def forbidden(name: str) -> Callable[..., Any]:
        def build(*args: Any, **kwargs: Any) -> Any:
            built.append(name)
            raise AssertionError(f"{name} built without a hook")

        return build

    for name in ("Request", "Headers", "headers_of", "head_from_request", "response_bytes"):
        monkeypatch.setattr(server_module, name, forbidden(name))
    monkeypatch.setattr(proxy_module, "ResponseInfo", forbidden("ResponseInfo"))
    monkeypatch.setattr(proxy_module.Proxy, "observe_response", forbidden("observe_response"))
    async with stream_origins("a") as (a,), hooked(one_group(a)) as proxy:
        assert (await proxy.client.post("/post", content=b"abc", headers={"X-A": "1"})).status_code == 200
        assert (await proxy.get("/stream?chunks=5&size=10")).content == streamed_body(5, 10)
    assert built == []
