"""An LLM gateway with a token budget per team: gateway.toml served with two hooks.

    export OPENAI_API_KEY=sk-... ANTHROPIC_API_KEY=sk-ant-...
    export LLM_GATEWAY_TEAMS="research:research-key:200000,web:web-key:50000"   # name:key:tokens per day
    python examples/llm_gateway/hooks.py [--config gateway.toml]

gateway.toml routes /openai/ and /anthropic/ to the providers with their keys and captures the usage of
every response. Here each team calls the gateway with its own key, as the SDKs send it (``api_key``:
``Authorization: Bearer KEY`` for OpenAI's, ``x-api-key: KEY`` for Anthropic's). ``on_request`` finds the
team by its key, drops the key (the route puts the provider's in its place) and tags the request with the
team's name; it answers 401 to an unknown key and 429 once the team spent its tokens for the day.
``on_exchange`` bills the tokens each response reported (``record.usage``) to the team the record is
tagged with (``record.tag``), also for a client that left early.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import fastpipe
from fastpipe.gateway import ConfigError, GatewayConfig, load_config

CONFIG = Path(__file__).with_name("gateway.toml")
DAY = 24 * 3600.0


@dataclass
class Team:
    key: str  # what the team's clients send as their API key
    tokens: int  # input plus output tokens it may use per period
    spent: int = 0


def teams_from(text: str) -> dict[str, Team]:
    """``name:key:tokens,...`` (as in LLM_GATEWAY_TEAMS) as teams by name."""
    teams = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, key, tokens = item.split(":")
        teams[name] = Team(key, int(tokens))
    return teams


def refusal(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> fastpipe.Response:
    # The providers' error shape: both SDKs raise with this message (429: openai.RateLimitError).
    body = json.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return fastpipe.Response(status, headers={"Content-Type": "application/json", **(headers or {})}, body=body)


class Budget:
    """Tokens per team and period: ``on_request`` refuses a team that spent its own, ``on_exchange`` counts.

    A request that starts within the budget runs to its end, so the last one may go over it; the next one
    gets 429 with Retry-After: the seconds until the period ends and every team starts again from zero.
    """

    def __init__(
        self, teams: dict[str, Team], period: float = DAY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.teams = teams
        self.period = period
        self.clock = clock
        self.period_ends = clock() + period

    def on_request(self, request: fastpipe.Request) -> fastpipe.Response | None:
        now = self.clock()
        if now >= self.period_ends:
            self.period_ends = now + self.period
            for each in self.teams.values():
                each.spent = 0
        # The team's key goes no further: the route sets the provider's.
        bearer = request.headers.pop("authorization") or ""
        key = request.headers.pop("x-api-key") or bearer.removeprefix("Bearer ")
        name = self.team_with(key)
        if name is None:
            return refusal(401, "authentication_error", "unknown API key: send your team's key")
        request.tag = name  # the exchange record's tag: on_exchange bills the usage to it
        team = self.teams[name]
        if team.spent >= team.tokens:
            wait = str(math.ceil(self.period_ends - now))
            message = f"team {name} has spent its {team.tokens} tokens; it gets more in {wait} s"
            return refusal(429, "rate_limit_error", message, {"Retry-After": wait})
        return None

    def team_with(self, key: str) -> str | None:
        """The name of the team whose key this is (compared in constant time), or None."""
        for name, team in self.teams.items():
            if team.key and hmac.compare_digest(key.encode(), team.key.encode()):
                return name
        return None

    def on_exchange(self, record: fastpipe.ExchangeRecord) -> None:
        usage = record.usage  # None on a refused request, or on a route without usage capture
        team = self.teams.get(record.tag) if isinstance(record.tag, str) else None
        if usage is not None and team is not None:
            team.spent += (usage.input_tokens or 0) + (usage.output_tokens or 0)


async def serve(config: GatewayConfig, budget: Budget) -> None:
    if config.server.access_log:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = await fastpipe.start_proxy(
        config=config,
        on_request=budget.on_request,
        on_exchange=budget.on_exchange,
        access_log=config.server.access_log,
    )
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await fastpipe.shutdown_proxy(server)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", type=Path, default=CONFIG, help="the gateway configuration (TOML)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)  # every problem at once, with its line; ${VAR}s must be set
    except ConfigError as error:
        raise SystemExit(f"{error}") from None
    teams = teams_from(os.environ.get("LLM_GATEWAY_TEAMS", ""))
    if not teams:
        raise SystemExit("set LLM_GATEWAY_TEAMS to name:key:tokens[,name:key:tokens...]")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, Budget(teams)))


if __name__ == "__main__":
    main()
