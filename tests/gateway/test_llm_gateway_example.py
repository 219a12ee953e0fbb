"""examples/llm_gateway/ runs: its gateway.toml, with the two providers swapped for fake ones on 127.0.0.1, and
its budget hooks, driven by the real ``openai`` SDK (httpx for the Anthropic API). A team is known by the key
its client sends; the hooks tag each request with the team's name and bill the record's usage to that tag.

The example file itself stays as a user would run it (https://api.openai.com, https://api.anthropic.com):
the tests load it and replace only the server URLs, in the loaded config or in a copy of its text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import openai
import pytest

from fastpipe.gateway import ConfigError, GatewayConfig, Secret, load_config
from fastpipe.gateway.metrics import GatewayMetrics
from fastpipe.http import ExchangeRecord, shutdown_proxy, start_proxy

from ._gateway_support import wait_records
from ._llm_origin import LLMOrigin, llm_origin, prompt_tokens

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llm_gateway"
KEYS = {"OPENAI_API_KEY": "sk-openai-of-the-gateway", "ANTHROPIC_API_KEY": "sk-ant-of-the-gateway"}
MESSAGES = [{"role": "user", "content": "say a few words"}]
PROMPT = prompt_tokens(MESSAGES)  # 4


def load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("llm_gateway_hooks", EXAMPLE / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


hooks = load_hooks()


def no_team_key_in(written: Any, *keys: str) -> bool:
    """Nothing the provider got carries a team's key: not a header, not the target."""
    return not any(key in text for key in keys for text in (written.path, *written.headers.values()))


def example_config(openai_origin: LLMOrigin, anthropic_origin: LLMOrigin) -> GatewayConfig:
    """The example's gateway.toml with the keys of KEYS and the two providers on 127.0.0.1."""
    config = load_config(EXAMPLE / "gateway.toml", environ=KEYS)
    servers = {"openai": openai_origin.url, "anthropic": anthropic_origin.url}
    upstreams = {name: dataclasses.replace(group, servers=(servers[name],)) for name, group in config.upstreams.items()}
    assert set(upstreams) == set(servers)
    return dataclasses.replace(config, upstreams=upstreams)


class Running:
    def __init__(self, server: Any, budget: Any, records: list[ExchangeRecord], metrics: GatewayMetrics) -> None:
        self.server = server
        self.budget = budget
        self.records = records
        self.metrics = metrics
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    def openai(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/openai/v1", api_key=key, max_retries=0, timeout=10.0)

    async def wait_records(self, count: int, timeout: float = 5.0) -> list[ExchangeRecord]:
        return await wait_records(self.records, count, timeout)


@asynccontextmanager
async def example_gateway(
    budget_options: dict[str, Any] | None = None, **teams: tuple[str, int]
) -> AsyncIterator[tuple[Running, LLMOrigin, LLMOrigin]]:
    """The example served with its hooks; ``teams``: name=(key, tokens)."""
    async with llm_origin(delay=0.01) as openai_origin, llm_origin(delay=0.01) as anthropic_origin:
        made = {name: hooks.Team(key, tokens) for name, (key, tokens) in teams.items()}
        budget = hooks.Budget(made, **(budget_options or {}))
        records: list[ExchangeRecord] = []

        def on_exchange(record: ExchangeRecord) -> None:
            budget.on_exchange(record)
            records.append(record)

        metrics = GatewayMetrics()  # the proxy's own: the file's metrics address is not listened on
        server = await start_proxy(
            config=example_config(openai_origin, anthropic_origin),
            host="127.0.0.1",
            port=0,
            on_request=budget.on_request,
            on_exchange=on_exchange,
            metrics=metrics,
        )
        try:
            yield Running(server, budget, records, metrics), openai_origin, anthropic_origin
        finally:
            await shutdown_proxy(server, grace=0.5)


async def chat(client: openai.AsyncOpenAI, max_tokens: int) -> Any:
    return await client.chat.completions.create(model="gpt-test", messages=MESSAGES, max_tokens=max_tokens)


# -- the file


def test_the_example_config_names_the_real_providers_and_takes_the_keys_from_the_environment() -> None:
    config = load_config(EXAMPLE / "gateway.toml", environ=KEYS)
    assert {name: group.servers for name, group in config.upstreams.items()} == {
        "openai": ("https://api.openai.com",),
        "anthropic": ("https://api.anthropic.com",),
    }
    routes = {route.name: route for route in config.routes}
    assert {name: (route.path_prefix, route.upstream, route.usage) for name, route in routes.items()} == {
        "openai": ("/openai/", "openai", "openai"),
        "anthropic": ("/anthropic/", "anthropic", "anthropic"),
    }
    assert all(route.strip_prefix and route.limits.rewrite_host for route in config.routes)
    [(name, value)] = routes["openai"].set_request_headers
    assert (name, value, str(value)) == (
        "Authorization",
        "Bearer " + KEYS["OPENAI_API_KEY"],
        "Bearer ${OPENAI_API_KEY}",
    )
    assert isinstance(value, Secret)  # printed or logged, it shows the template, never the key
    [(name, value)] = routes["anthropic"].set_request_headers
    assert (name, value) == ("x-api-key", KEYS["ANTHROPIC_API_KEY"])
    assert config.server.metrics is not None and config.server.access_log


def test_the_example_config_refuses_to_load_without_the_keys() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLE / "gateway.toml", environ={})
    text = str(caught.value)
    assert "OPENAI_API_KEY" in text and "ANTHROPIC_API_KEY" in text


# -- the gateway and its budget


async def test_openai_requests_get_the_gateway_key_are_billed_to_the_team_and_get_429_once_it_is_spent() -> None:
    async with example_gateway(research=("research-key", 30), web=("web-key", 1000)) as (gateway, origin, other):
        client = gateway.openai("research-key")
        web = gateway.openai("web-key")
        try:
            completion = await chat(client, max_tokens=4)  # 4 + 4 tokens
            stream = await client.chat.completions.create(
                model="gpt-test",
                messages=MESSAGES,
                max_tokens=20,  # 4 + 20 tokens: 32 in all, over the 30 of the budget
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            await gateway.wait_records(2)
            with pytest.raises(openai.RateLimitError) as refused:
                await chat(client, max_tokens=4)
            await chat(web, max_tokens=5)  # another team, another budget
        finally:
            await client.close()
            await web.close()
        await gateway.wait_records(4)
    assert completion.usage is not None and completion.usage.total_tokens == PROMPT + 4
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20
    assert gateway.budget.teams["research"].spent == 2 * PROMPT + 4 + 20
    assert gateway.budget.teams["web"].spent == PROMPT + 5
    # Each record is tagged with the team its key belongs to, the refused one too.
    assert [(record.tag, record.status) for record in gateway.records] == [
        ("research", 200),
        ("research", 200),
        ("research", 429),
        ("web", 200),
    ]
    # The provider saw the gateway's key, none of the teams', and neither the prefix nor a query.
    assert len(origin.written) == 3
    for written in origin.written:
        assert written.path == "/v1/chat/completions"
        assert written.headers["Authorization"] == "Bearer " + KEYS["OPENAI_API_KEY"]
        assert "x-api-key" not in {name.lower() for name in written.headers}
        assert no_team_key_in(written, "research-key", "web-key")
        assert written.headers["Host"] == f"127.0.0.1:{origin.port}"  # rewrite_host: the provider's name
    assert other.written == []
    # The refusal: 429 with Retry-After and a message the SDK shows; it never reached the provider.
    response = refused.value.response
    assert response.status_code == 429
    assert 0 < int(response.headers["Retry-After"]) <= 24 * 3600
    assert "research" in refused.value.message and "30 tokens" in refused.value.message
    assert gateway.records[2].route == "openai" and gateway.records[2].usage is None


async def test_anthropic_requests_get_the_gateway_key_and_share_the_team_budget() -> None:
    async with example_gateway(web=("web-key", 30)) as (gateway, openai_origin, origin):
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10.0) as client:
            request = {"model": "claude-test", "max_tokens": 6, "messages": MESSAGES, "stream": True}
            version = {"anthropic-version": "2023-06-01"}
            response = await client.post(
                "/anthropic/v1/messages", json=request, headers={"x-api-key": "web-key", **version}
            )
            assert response.status_code == 200, response.text
            assert response.text.rstrip().endswith('data: {"type": "message_stop"}')
            # The key is found in either header, whatever the route: a bearer token here, x-api-key there.
            bearer = {"Authorization": "Bearer web-key", **version}
            response = await client.post("/anthropic/v1/messages", json={**request, "stream": False}, headers=bearer)
            assert response.status_code == 200, response.text
            openai_request = {"model": "gpt-test", "max_tokens": 6, "messages": MESSAGES}
            response = await client.post(
                "/openai/v1/chat/completions", json=openai_request, headers={"x-api-key": "web-key"}
            )
            assert response.status_code == 200, response.text
            await gateway.wait_records(3)
        assert gateway.budget.teams["web"].spent == 3 * (PROMPT + 6)  # 30: spent, on both providers together
        for written in origin.written:
            assert written.path == "/v1/messages"
            assert written.headers["x-api-key"] == KEYS["ANTHROPIC_API_KEY"]
            assert "authorization" not in {name.lower() for name in written.headers}
            assert no_team_key_in(written, "web-key")
            assert written.headers["anthropic-version"] == "2023-06-01"  # the client's other headers go on
        [written] = openai_origin.written
        assert written.headers["Authorization"] == "Bearer " + KEYS["OPENAI_API_KEY"]
        assert "x-api-key" not in {name.lower() for name in written.headers}
        assert no_team_key_in(written, "web-key")
        # The same team, by the same key, on either provider: its budget is spent.
        client_of_openai = gateway.openai("web-key")
        try:
            with pytest.raises(openai.RateLimitError):
                await chat(client_of_openai, max_tokens=1)
        finally:
            await client_of_openai.close()
        await gateway.wait_records(4)
        assert len(origin.written) == 2 and len(openai_origin.written) == 1
    assert [(record.route, record.tag, record.status) for record in gateway.records] == [
        ("anthropic", "web", 200),
        ("anthropic", "web", 200),
        ("openai", "web", 200),
        ("openai", "web", 429),
    ]


async def test_a_client_that_leaves_early_is_still_counted() -> None:
    async with example_gateway(research=("research-key", 1000)) as (gateway, origin, _):
        client = gateway.openai("research-key")
        try:
            stream = await client.chat.completions.create(
                model="gpt-test",
                messages=MESSAGES,
                max_tokens=30,
                stream=True,
                stream_options={"include_usage": True},
            )
            async for _chunk in stream:
                break  # one chunk, then gone
            await stream.close()
            [record] = await gateway.wait_records(1)
        finally:
            await client.close()
        await origin.wait_over(1)
    assert record.end == "drained" and record.tag == "research"
    assert gateway.budget.teams["research"].spent == PROMPT + 30
    tokens = gateway.metrics.get_sample_value("fastpipe_usage_tokens_total", {"route": "openai", "kind": "output"})
    assert tokens == 30


async def test_an_unknown_key_or_none_gets_401_and_reaches_no_provider() -> None:
    teams = {"research": ("research-key", 1000), "keyless": ("", 1000)}  # a team without a key is never matched
    async with example_gateway(**teams) as (gateway, origin, other):
        for key in ("guessed-key", "research-key-and-more", "research"):
            client = gateway.openai(key)
            try:
                with pytest.raises(openai.AuthenticationError) as refused:
                    await chat(client, max_tokens=1)
            finally:
                await client.close()
            assert "unknown API key" in refused.value.message
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10.0) as plain:
            body = {"model": "gpt-test", "messages": MESSAGES}
            no_key = await plain.post("/openai/v1/chat/completions", json=body)
            empty = await plain.post("/openai/v1/chat/completions", json=body, headers={"x-api-key": ""})
            wrong = await plain.post("/anthropic/v1/messages", json=body, headers={"x-api-key": "guessed-key"})
        assert [response.status_code for response in (no_key, empty, wrong)] == [401, 401, 401]
        records = await gateway.wait_records(6)
    assert [(record.tag, record.status) for record in records] == [(None, 401)] * 6
    assert origin.written == [] and other.written == []
    assert gateway.budget.teams["research"].spent == 0


async def test_the_budget_starts_again_when_the_period_ends() -> None:
    now = [1000.0]
    options = {"period": 60.0, "clock": lambda: now[0]}
    async with example_gateway(options, research=("research-key", 5)) as (gateway, _, _):
        client = gateway.openai("research-key")
        try:
            await chat(client, max_tokens=2)  # 6 tokens: spent
            await gateway.wait_records(1)
            now[0] += 45
            with pytest.raises(openai.RateLimitError) as refused:
                await chat(client, max_tokens=2)
            assert refused.value.response.headers["Retry-After"] == "15"
            now[0] += 15
            await chat(client, max_tokens=2)
            await gateway.wait_records(3)
        finally:
            await client.close()
    assert [record.status for record in gateway.records] == [200, 429, 200]
    assert gateway.budget.teams["research"].spent == PROMPT + 2


# -- the program


@pytest.fixture
def program_config(tmp_path: Path) -> Iterator[Any]:
    """A copy of gateway.toml for given origins, listening on free ports; the text otherwise unchanged."""

    def write(openai_origin: LLMOrigin, anthropic_origin: LLMOrigin) -> Path:
        text = (EXAMPLE / "gateway.toml").read_text()
        for old, new in (
            ('"https://api.openai.com"', f'"{openai_origin.url}"'),
            ('"https://api.anthropic.com"', f'"{anthropic_origin.url}"'),
            ('listen = "127.0.0.1:8080"', 'listen = "127.0.0.1:0"'),
            ('metrics = "127.0.0.1:9100"', 'metrics = "127.0.0.1:0"'),
        ):
            assert text.count(old) == 1, f"gateway.toml no longer has {old}"
            text = text.replace(old, new)
        path = tmp_path / "gateway.toml"
        path.write_text(text)
        return path

    yield write


async def test_the_example_runs_as_a_program_until_interrupted(program_config: Any) -> None:
    async with llm_origin() as openai_origin, llm_origin() as anthropic_origin:
        environment = {**os.environ, **KEYS, "LLM_GATEWAY_TEAMS": "research:research-key:1000,web:web-key:10"}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLE / "hooks.py"),
            "--config",
            str(program_config(openai_origin, anthropic_origin)),
            env=environment,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stdout is not None and process.stderr is not None
            first = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
            assert first.startswith("listening on http://127.0.0.1:"), first
            url = first.split()[-1]
            client = openai.AsyncOpenAI(base_url=url + "/openai/v1", api_key="web-key", max_retries=0, timeout=10.0)
            try:
                completion = await chat(client, max_tokens=6)  # 4 + 6 tokens: web's 10 are spent
                for _ in range(50):  # once the program billed them (the record may end after the answer)
                    try:
                        await chat(client, max_tokens=1)
                    except openai.RateLimitError:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the spent budget never got 429")
            finally:
                await client.close()
            assert completion.usage is not None and completion.usage.completion_tokens == 6
            for written in openai_origin.written:
                assert written.headers["Authorization"] == "Bearer " + KEYS["OPENAI_API_KEY"]
                assert no_team_key_in(written, "web-key")
            process.send_signal(signal.SIGINT)
            _, errors = await asyncio.wait_for(process.communicate(), 15)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 0, errors.decode()
    log = errors.decode()
    assert f"usage_in={PROMPT} usage_out=6" in log and "route=openai" in log, log  # the access log
    assert "sk-openai-of-the-gateway" not in log


async def test_the_program_says_what_is_missing() -> None:
    environment = {name: value for name, value in os.environ.items() if name not in KEYS}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE / "hooks.py"),
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, errors = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode != 0
    assert b"OPENAI_API_KEY" in errors
