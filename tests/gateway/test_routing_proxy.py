"""The gateway in the proxy: routes, upstream groups, balancing, ejection and retries, against real origins."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from fastpipe.http import Limits, Request, Response

from ._gateway_support import body_of, closed_port, gateway, group, origins, serve_app


async def test_routes_pick_by_host_and_longest_prefix() -> None:
    async with origins("api", "chat", "wild", "fallback") as (api, chat, wild, fallback):
        config = {
            "upstreams": {
                "api": group(api.url),
                "chat": group(chat.url),
                "wild": group(wild.url),
                "fallback": group(fallback.url),
            },
            "routes": [
                {"name": "fallback", "upstream": "fallback"},
                {"name": "api", "path_prefix": "/v1", "upstream": "api"},
                {"name": "chat", "host": "api.example.com", "path_prefix": "/v1/chat/", "upstream": "chat"},
                {"name": "wild", "host": "*.example.com", "path_prefix": "/v1/", "upstream": "wild"},
            ],
        }
        async with gateway(config) as proxy:
            assert await proxy.seen_by("/v1/chat/completions", headers={"Host": "API.example.com:8443"}) == "chat"
            assert await proxy.seen_by("/v1/models", headers={"Host": "eu.example.com"}) == "wild"
            assert await proxy.seen_by("/v1/models", headers={"Host": "example.com"}) == "api"  # not *.example.com
            assert await proxy.seen_by("/v1x", headers={"Host": "other"}) == "api"  # a plain string prefix
            assert await proxy.seen_by("/v2", headers={"Host": "api.example.com"}) == "fallback"
            records = await proxy.wait_records(5)
            assert [record.route for record in records] == ["chat", "wild", "api", "api", "fallback"]
            assert [record.upstream for record in records] == ["chat", "wild", "api", "api", "fallback"]
            assert records[0].server == chat.url and records[0].attempts == 1


async def test_no_route_is_a_404_naming_host_and_path() -> None:
    async with origins("api") as (api,):
        config = {"upstreams": {"api": group(api.url)}, "routes": [{"path_prefix": "/v1/", "upstream": "api"}]}
        async with gateway(config) as proxy:
            response = await proxy.get("/v2/x?secret=1", headers={"Host": "example.com:8080"})
            assert response.status_code == 404
            assert response.text == "no route for example.com:8080 /v2/x"
            assert response.headers["content-type"].startswith("text/plain")
            assert response.headers["x-content-type-options"] == "nosniff"
            # the connection goes on: a 404 is an answer, not an error
            assert await proxy.seen_by("/v1/ok") == "api"
            assert api.requests[-1]["path"] == "/v1/ok" and len(api.requests) == 1
            [missed, _] = await proxy.wait_records(2)
            assert missed.status == 404 and missed.route is None and missed.attempts == 0


@pytest.mark.parametrize(
    ("target", "upstream_target"),
    [("/api/users?x=1", "/users?x=1"), ("/api/", "/"), ("/api", "/"), ("/apix/y", "/x/y")],
)
async def test_strip_prefix_keeps_a_leading_slash(target: str, upstream_target: str) -> None:
    async with origins("api") as (api,):
        config = {
            "upstreams": {"api": group(api.url)},
            "routes": [{"path_prefix": "/api", "upstream": "api", "strip_prefix": True}],
        }
        async with gateway(config) as proxy:
            response = await proxy.get(target)
            assert body_of(response)["path"] == upstream_target
            [record] = await proxy.wait_records(1)
            assert record.target == target  # the record keeps what the client asked for


async def test_set_request_headers_replace_the_clients_and_expand_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FASTPIPE_TEST_KEY", "sk-test-123")
    async with origins("api") as (api,):
        config = {
            "upstreams": {"api": group(api.url)},
            "routes": [
                {
                    "upstream": "api",
                    "set_request_headers": {"Authorization": "Bearer ${FASTPIPE_TEST_KEY}", "X-Team": "ml"},
                }
            ],
        }
        async with gateway(config) as proxy:
            response = await proxy.get("/", headers={"Authorization": "Bearer client-key", "X-Other": "kept"})
            headers = body_of(response)["headers"]
            assert headers["Authorization"] == "Bearer sk-test-123"
            assert headers["X-Team"] == "ml"
            assert headers["X-Other"] == "kept"
            authorizations = [line for line in api.requests[-1]["headers"] if line.lower() == "authorization"]
            assert authorizations == ["Authorization"]  # exactly one: the client's was dropped


async def test_per_route_limits_apply_to_their_route_only() -> None:
    async with origins("api") as (api,):
        config = {
            "limits": {"upstream_timeout": 0.3},
            "upstreams": {"api": group(api.url)},
            "routes": [
                {"name": "long", "path_prefix": "/slow", "upstream": "api", "limits": {"upstream_timeout": 5}},
                {"name": "short", "upstream": "api", "limits": {"max_body_size": 10}},
            ],
        }
        async with gateway(config) as proxy:
            response = await proxy.get("/slow?seconds=0.6")
            assert response.status_code == 200  # 0.6 s is over the default 0.3 s but within the route's 5 s
            response = await proxy.client.post("/other", content=b"x" * 11)
            assert response.status_code == 413
        # and the default applies where the route sets none
        config["routes"] = [{"upstream": "api"}]
        async with gateway(config) as proxy:
            response = await proxy.get("/slow?seconds=0.6")
            assert response.status_code == 504


async def test_round_robin_spreads_sequential_requests_evenly() -> None:
    async with origins("a", "b", "c") as servers:
        config = {"upstreams": {"g": group(*(s.url for s in servers))}, "routes": [{"upstream": "g"}]}
        async with gateway(config) as proxy:
            seen = [await proxy.seen_by(f"/{index}") for index in range(9)]
        assert sorted(seen) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
        assert seen[:3] == seen[3:6] == seen[6:]  # in turn


async def test_least_connections_sends_new_work_to_the_idle_server() -> None:
    async with origins("a", "b") as (a, b):
        config = {
            "upstreams": {"g": group(a.url, b.url, balance="least-connections")},
            "routes": [{"name": "one", "path_prefix": "/slow", "upstream": "g"}, {"name": "two", "upstream": "g"}],
        }
        async with gateway(config) as proxy:
            long_request = asyncio.ensure_future(proxy.get("/slow?seconds=1.5"))
            await _until(lambda: a.in_flight + b.in_flight == 1)
            busy = "a" if a.in_flight else "b"
            # Four quick requests through the other route: the group's count spans routes.
            seen = [await proxy.seen_by("/quick") for _ in range(4)]
            assert busy not in seen
            assert (await long_request).status_code == 200


async def test_a_refused_server_is_ejected_and_requests_go_to_the_others() -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    async with origins("live") as (live,):
        config = {
            "upstreams": {"g": group(dead, live.url, max_fails=1, fail_timeout=30)},
            "routes": [{"upstream": "g"}],
        }
        async with gateway(config, access_log=True) as proxy:
            # Whatever the method, a refused connection wrote nothing: the request goes to the other server.
            response = await proxy.client.post("/first", content=b"payload")
            assert response.status_code == 200 and body_of(response)["body"] == "payload"
            for index in range(4):
                assert await proxy.seen_by(f"/{index}") == "live"
            records = await proxy.wait_records(5)
            # the first went to the dead server first (round-robin starts there); once ejected it gets none
            assert [record.attempts for record in records] == [2, 1, 1, 1, 1]
            assert all(record.server == live.url for record in records)
            [link] = [link for link in proxy.proxy.routing.links if link.url == dead]
            assert not link.group.is_up(link.server)


async def test_an_ejected_server_gets_traffic_again_after_fail_timeout() -> None:
    async with origins("a", "b") as (a, b):
        port = a.port
        config = {
            "upstreams": {"g": group(a.url, b.url, max_fails=1, fail_timeout=0.5)},
            "routes": [{"upstream": "g"}],
        }
        async with gateway(config) as proxy:
            await a.stop()
            seen = [await proxy.seen_by(f"/{index}") for index in range(4)]
            assert seen == ["b"] * 4
            await a.start(port)
            await asyncio.sleep(0.6)
            seen = [await proxy.seen_by(f"/{index}") for index in range(4)]
            assert sorted(seen) == ["a", "a", "b", "b"]


async def test_every_server_ejected_still_tries_them() -> None:
    async with origins("a") as (a,):
        port = a.port
        config = {"upstreams": {"g": group(a.url, max_fails=1, fail_timeout=60)}, "routes": [{"upstream": "g"}]}
        async with gateway(config) as proxy:
            await a.stop()
            assert (await proxy.get("/")).status_code == 502
            await a.start(port)
            # nginx would answer "no live upstreams" for the next 60 s; the proxy tries the server anyway
            assert await proxy.seen_by("/") == "a"


async def test_a_success_clears_the_failure_count() -> None:
    async with origins("a", "b") as (a, b):
        config = {
            "upstreams": {"g": group(a.url, b.url, max_fails=2, fail_timeout=30, retries=1)},
            "routes": [{"upstream": "g"}],
        }
        async with gateway(config) as proxy:
            [link_a, _] = proxy.proxy.routing.links
            link_a.group.failed(link_a.server)  # one failure of two
            assert await proxy.seen_by("/") == "a"  # a success: the count starts over
            link_a.group.failed(link_a.server)
            assert link_a.group.is_up(link_a.server)


@pytest.mark.parametrize(
    ("method", "status", "attempts"),
    [("POST", 502, 1), ("PATCH", 502, 1), ("PUT", 200, 2), ("DELETE", 200, 2), ("GET", 200, 2)],
)
async def test_a_written_request_goes_to_another_server_only_if_idempotent(
    method: str, status: int, attempts: int
) -> None:
    async with origins("b") as (b,):
        hits: list[bytes] = []

        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            hits.append(await reader.read(65536))
            writer.close()  # reads the request, answers nothing

        closer = await asyncio.start_server(swallow, "127.0.0.1", 0)
        rude = f"http://127.0.0.1:{closer.sockets[0].getsockname()[1]}"
        config = {"upstreams": {"g": group(rude, b.url, retries=1)}, "routes": [{"upstream": "g"}]}
        try:
            async with gateway(config) as proxy:  # round-robin: the first request goes to the rude server
                response = await proxy.client.request(method, "/charge", content=b"once")
                assert response.status_code == status
                assert len(hits) == 1 and hits[0].startswith(method.encode())
                if status == 200:
                    assert body_of(response)["body"] == "once"  # the body the proxy kept went again
                else:
                    assert b.requests == []  # never sent twice
                [record] = await proxy.wait_records(1)
                assert record.attempts == attempts
        finally:
            closer.close()
            await closer.wait_closed()


@pytest.mark.parametrize(("method", "status"), [("GET", 200), ("POST", 504)])
async def test_an_upstream_timeout_before_the_head_is_retried_for_idempotent_requests(method: str, status: int) -> None:
    async with origins("fast") as (fast,):
        stalled_writers: list[asyncio.StreamWriter] = []

        async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            stalled_writers.append(writer)
            await reader.read(65536)  # then answers nothing until the test ends

        staller = await asyncio.start_server(stall, "127.0.0.1", 0)
        stalled = f"http://127.0.0.1:{staller.sockets[0].getsockname()[1]}"
        config = {
            "limits": {"upstream_timeout": 0.3},
            "upstreams": {"g": group(stalled, fast.url, retries=1)},
            "routes": [{"upstream": "g"}],
        }
        try:
            async with gateway(config) as proxy:
                response = await proxy.client.request(method, "/x", content=b"x")
                assert response.status_code == status
                assert len(fast.requests) == (1 if status == 200 else 0)
        finally:
            for writer in stalled_writers:
                writer.transport.abort()
            staller.close()
            await staller.wait_closed()


async def test_retries_zero_disables_retrying() -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    async with origins("live") as (live,):
        config = {"upstreams": {"g": group(dead, live.url, retries=0)}, "routes": [{"upstream": "g"}]}
        async with gateway(config) as proxy:
            statuses = [(await proxy.get(f"/{index}")).status_code for index in range(2)]
            assert statuses == [502, 200]  # the first went to the dead server and nowhere else


async def test_access_log_names_route_group_server_and_attempts(caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    async with origins("live") as (live,):
        config = {"upstreams": {"g": group(dead, live.url)}, "routes": [{"name": "main", "upstream": "g"}]}
        with caplog.at_level(logging.INFO, logger="fastpipe.access"):
            async with gateway(config, access_log=True) as proxy:
                await proxy.seen_by("/")
                await proxy.wait_records(1)
        [line] = [record.getMessage() for record in caplog.records if record.name == "fastpipe.access"]
        assert f"route=main upstream=g server={live.url} attempts=2" in line


async def test_flags_given_in_code_override_the_files_limits() -> None:
    async with origins("api") as (api,):
        config = {
            "limits": {"upstream_timeout": 5},
            "upstreams": {"api": group(api.url)},
            "routes": [{"upstream": "api"}],
        }
        async with gateway(config, upstream_timeout=0.2) as proxy:
            assert (await proxy.get("/slow?seconds=0.5")).status_code == 504
            assert proxy.proxy.limits.upstream_timeout == 0.2


async def test_start_proxy_listens_on_the_configs_addresses() -> None:
    from fastpipe.http import proxy_of, shutdown_proxy, start_proxy

    async with origins("api") as (api,):
        ports = [closed_port(), closed_port()]
        config = {
            "server": {"listen": [f"127.0.0.1:{port}" for port in ports]},
            "upstreams": {"api": group(api.url)},
            "routes": [{"upstream": "api"}],
        }
        server = await start_proxy(config=config)
        try:
            assert len(proxy_of(server).servers) == 2
            async with httpx.AsyncClient() as client:
                for port in ports:
                    response = await client.get(f"http://127.0.0.1:{port}/")
                    assert response.json()["server"] == "api"
        finally:
            await shutdown_proxy(server, grace=0.2)
        for port in ports:
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)


def test_a_proxy_needs_an_upstream_or_a_config_and_not_both() -> None:
    from fastpipe.http import Proxy

    with pytest.raises(TypeError, match="upstream URL or a config"):
        Proxy()
    config = {"upstreams": {"api": group("http://127.0.0.1:9")}, "routes": [{"upstream": "api"}]}
    with pytest.raises(ValueError, match="not both"):
        Proxy("http://127.0.0.1:9", config=config)
    assert Proxy(config=config, limits=Limits()).routing.only is not None


async def _until(condition: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


async def test_a_tag_set_by_on_request_reaches_the_record() -> None:
    async with origins("api") as (api,):
        config = {"upstreams": {"api": group(api.url)}, "routes": [{"upstream": "api"}]}

        def tag_by_team(request: Request) -> Response | None:
            request.tag = request.headers.get("x-team")
            return None if request.tag != "blocked" else Response(429, body=b"budget spent\n")

        async with gateway(config, on_request=tag_by_team) as proxy:
            assert (await proxy.get("/", headers={"X-Team": "ml"})).status_code == 200
            assert (await proxy.get("/", headers={"X-Team": "blocked"})).status_code == 429
            records = await proxy.wait_records(2)
            assert [(record.tag, record.status) for record in records] == [("ml", 200), ("blocked", 429)]


async def test_the_files_access_log_setting_is_served_by_start_proxy(caplog: pytest.LogCaptureFixture) -> None:
    async with origins("api") as (api,):
        config = {"server": {"access_log": True}, "upstreams": {"api": group(api.url)}, "routes": [{"upstream": "api"}]}
        with caplog.at_level(logging.INFO, logger="fastpipe.access"):
            async with gateway(config) as proxy:
                await proxy.seen_by("/logged")
                await proxy.wait_records(1)
        assert any('"GET /logged" 200' in record.getMessage() for record in caplog.records)


async def test_a_request_no_route_matched_reaches_the_hook_which_may_route_it() -> None:
    async with origins("api") as (api,):
        config = {
            "upstreams": {"api": group(api.url)},
            "routes": [{"name": "v1", "path_prefix": "/v1/", "upstream": "api"}],
        }
        seen: list[tuple[str | None, str | None]] = []

        def route_legacy(request: Request) -> None:
            seen.append((request.route, request.upstream))
            if request.path.startswith("/legacy/"):
                request.route = "v1"

        async with gateway(config, on_request=route_legacy) as proxy:
            assert await proxy.seen_by("/legacy/x") == "api"
            response = await proxy.get("/other", headers={"Host": "example.com"})
            assert response.status_code == 404 and response.text == "no route for example.com /other"
            assert seen == [(None, None), (None, None)]


async def test_x_forwarded_host_stays_the_clients_when_a_hook_changes_host() -> None:
    async with origins("api") as (api,):
        config = {"upstreams": {"api": group(api.url)}, "routes": [{"upstream": "api"}]}

        def rehost(request: Request) -> None:
            request.headers["Host"] = "internal.example"

        async with gateway(config, on_request=rehost) as proxy:
            headers = body_of(await proxy.get("/", headers={"Host": "public.example"}))["headers"]
            assert headers["Host"] == "internal.example"
            assert headers["X-Forwarded-Host"] == "public.example"


@pytest.mark.parametrize("name", ["X-Forwarded-For", "x-forwarded-proto", "X-Forwarded-Host"])
async def test_a_hook_cannot_set_the_forwarding_headers_the_proxy_sets(name: str) -> None:
    async with origins("api") as (api,):
        config = {"upstreams": {"api": group(api.url)}, "routes": [{"upstream": "api"}]}

        def forge(request: Request) -> None:
            request.headers[name] = "1.2.3.4"

        async with gateway(config, on_request=forge) as proxy:
            assert (await proxy.get("/")).status_code == 500
            assert api.requests == []


@pytest.mark.parametrize("split", [1, 7, 50])
async def test_usage_is_read_from_a_chunked_body_split_anywhere(split: int) -> None:
    """A chunked response travels with its framing; the usage capture must read the payload inside it."""
    from aiohttp import web

    completion = (
        b'{"id":"c1","model":"gpt-test","choices":[{"message":{"content":"hi"}}],'
        b'"usage":{"prompt_tokens":11,"completion_tokens":5,"total_tokens":16}}'
    )
    events = (
        b'data: {"model":"gpt-test","choices":[{"delta":{"content":"a"}}],"usage":null}\n\n'
        b'data: {"model":"gpt-test","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9}}\n\n'
        b"data: [DONE]\n\n"
    )

    async def chunked(request: web.Request) -> web.StreamResponse:
        body = events if request.path == "/sse" else completion
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream" if request.path == "/sse" else "application/json"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), split):
            await response.write(body[start : start + split])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", chunked)
    runner, port = await serve_app(app)
    config = {
        "upstreams": {"llm": group(f"http://127.0.0.1:{port}")},
        "routes": [{"upstream": "llm", "usage": "openai"}],
    }
    try:
        async with gateway(config) as proxy:
            assert (await proxy.get("/json")).content == completion
            assert (await proxy.get("/sse")).content == events
            json_record, sse_record = await proxy.wait_records(2)
    finally:
        await runner.cleanup()
    assert (json_record.usage.input_tokens, json_record.usage.output_tokens) == (11, 5)
    assert (sse_record.usage.input_tokens, sse_record.usage.output_tokens) == (3, 9)
    assert sse_record.usage.complete
