"""Runs seeded scenarios through a real proxy in front of the chaos origin, and checks what must hold after.

Scenarios run in batches of concurrent clients against one proxy, so pooled upstream connections pass
from one scenario to the next (that is where a connection reused after a broken exchange would show).
After each batch a canary request must come back exact; after the last, once the traffic has settled,
no Pipe or exchange may be alive, no upstream connection busy, no tainted upstream connection open and
nothing reported to the loop's exception handler.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastpipe import _pipe_py
from fastpipe.http import ExchangeRecord, proxy_of, shutdown_proxy, start_proxy
from fastpipe.http.exchange import Exchange

from ._chaos import TIMEOUTS, Scenario, judge, scenario_for
from ._client import ClientPlan, run_client
from ._origin import ChaosOrigin, OriginPlan

__all__ = ("ChaosReport", "chaos_seeds", "live_objects", "run_chaos")

BATCH = 16

try:
    from fastpipe import _pipe as _compiled

    PIPE_TYPES: tuple[type, ...] = (_pipe_py.Pipe, _compiled.Pipe)
except ImportError:  # the pure-Python run (FASTPIPE_NO_EXTENSIONS=1) without a build
    PIPE_TYPES = (_pipe_py.Pipe,)


def live_objects() -> dict[str, int]:
    """Pipes and exchanges still alive after a full collection."""
    gc.collect()
    counts = {"pipes": 0, "exchanges": 0}
    for item in gc.get_objects():
        kind = type(item)
        if kind in PIPE_TYPES:
            counts["pipes"] += 1
        elif kind is Exchange:
            counts["exchanges"] += 1
    return counts


def chaos_seeds(default_runs: int) -> list[int]:
    """The seeds of this run: ``FASTPIPE_CHAOS_SEEDS`` (a replay: ``1,2,3`` or ``100-199``) or else
    ``FASTPIPE_CHAOS_RUNS`` (default ``default_runs``) seeds from ``FASTPIPE_CHAOS_BASE`` (default 0)."""
    listed = os.environ.get("FASTPIPE_CHAOS_SEEDS", "").strip()
    if listed:
        seeds: list[int] = []
        for part in re.split(r"[,\s]+", listed):
            if "-" in part:
                first, last = part.split("-")
                seeds += range(int(first), int(last) + 1)
            elif part:
                seeds.append(int(part))
        return seeds
    runs = int(os.environ.get("FASTPIPE_CHAOS_RUNS", default_runs))
    base = int(os.environ.get("FASTPIPE_CHAOS_BASE", 0))
    return list(range(base, base + runs))


@dataclass
class ChaosReport:
    """What a chaos run found: per-seed problems, and problems of the proxy as a whole."""

    scenarios: dict[int, Scenario] = field(default_factory=dict)
    problems: dict[int, list[str]] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)
    batches: list[list[int]] = field(default_factory=list)
    endings: dict[str, int] = field(default_factory=dict)
    records: list[ExchangeRecord] = field(default_factory=list)

    def add(self, seed: int, problem: str) -> None:
        self.problems.setdefault(seed, []).append(problem)

    @property
    def failed(self) -> bool:
        return bool(self.problems or self.general)

    def explain(self, test_path: str) -> str:
        lines = []
        for seed in sorted(self.problems):
            lines.append(self.scenarios[seed].describe())
            lines += [f"    - {problem}" for problem in self.problems[seed]]
        lines += [f"proxy: {problem}" for problem in self.general]
        failing = sorted(self.problems)
        batches = sorted({seed for batch in self.batches if set(batch) & set(failing) for seed in batch})
        lines.append(f"failing seeds: {','.join(map(str, failing)) or '(none: see the proxy lines)'}")
        if failing:
            lines.append(f"replay alone:      FASTPIPE_CHAOS_SEEDS={','.join(map(str, failing))} pytest {test_path}")
            lines.append(f"replay with batch: FASTPIPE_CHAOS_SEEDS={','.join(map(str, batches))} pytest {test_path}")
        return "\n".join(lines)


async def _bounded_wait(condition: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _seed_of(text: str) -> int | None:
    match = re.search(r"/chaos/(\d+)", text)
    return int(match.group(1)) if match else None


async def run_chaos(
    seeds: Sequence[int],
    *,
    batch: int = BATCH,
    proxy_options: dict[str, Any] | None = None,
    start: Callable[..., Awaitable[asyncio.Server]] | None = None,
) -> ChaosReport:
    """Run ``seeds`` through a fresh proxy (``start_proxy`` unless ``start`` is given) and judge them."""
    loop = asyncio.get_running_loop()
    report = ChaosReport()
    handler_calls: list[dict[str, Any]] = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: handler_calls.append(context))
    baseline = live_objects()
    origin = await ChaosOrigin().start()
    options = {**TIMEOUTS, **(proxy_options or {})}
    upstream = f"http://127.0.0.1:{origin.port}"
    server: asyncio.Server
    if start is None:
        server = await start_proxy(upstream, port=0, on_exchange=report.records.append, **options)
    else:
        server = await start(upstream, **options)
    port = server.sockets[0].getsockname()[1]
    try:
        for first in range(0, len(seeds), batch):
            group = list(seeds[first : first + batch])
            report.batches.append(group)
            await _run_batch(port, origin, group, report)
            await _canary(port, origin, first, report)
        await _after_settling(server, origin, report, baseline)
    finally:
        if start is None:
            await shutdown_proxy(server, grace=0.5)
        else:
            server.close()
            await server.wait_closed()
        await origin.close()
        loop.set_exception_handler(previous_handler)
    for context in handler_calls:
        report.general.append(
            f"the loop's exception handler was called: {context.get('message')!r} {context.get('exception')!r}"
        )
    return report


async def _run_batch(port: int, origin: ChaosOrigin, group: Iterable[int], report: ChaosReport) -> None:
    scenarios = [scenario_for(seed) for seed in group]
    for scenario in scenarios:
        report.scenarios[scenario.seed] = scenario
        origin.plans[scenario.target] = scenario.origin
    outcomes = await asyncio.gather(*(run_client(port, s.client) for s in scenarios), return_exceptions=True)
    for scenario, outcome in zip(scenarios, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            report.add(scenario.seed, f"the chaos client failed: {outcome!r}")
            continue
        report.endings[outcome.ending] = report.endings.get(outcome.ending, 0) + 1
        for problem in judge(scenario, outcome, origin):
            report.add(scenario.seed, problem)


async def _canary(port: int, origin: ChaosOrigin, index: int, report: ChaosReport) -> None:
    """A plain request after each batch: the proxy must still serve, exactly."""
    target = b"/canary/%d" % index
    body = b"canary %d " % index * 100
    origin.plans[target] = OriginPlan(body=body, framing="chunked", chunk_sizes=(333,))
    outcome = await run_client(port, ClientPlan(target=target, patience=5.0))
    response = outcome.response
    if response is None or response.status != 200 or response.body != body:
        report.general.append(
            f"canary {target!r} after the batch of seeds {report.batches[-1]} was not served exactly: "
            f"{outcome.ending}, {outcome.received[:200]!r}"
        )


async def _after_settling(
    server: asyncio.AbstractServer, origin: ChaosOrigin, report: ChaosReport, baseline: dict[str, int]
) -> None:
    try:
        proxy = proxy_of(server)
    except ValueError:  # another server under test (the verdict's negative controls)
        proxy = None
    settled = proxy is None or await _bounded_wait(
        lambda: not proxy.connections and proxy.pool.open == proxy.pool.idle, 5.0
    )
    if proxy is not None and not settled:
        # Private state, read only to say which exchange an upstream connection is still bound to.
        idle = set(map(id, getattr(proxy.pool, "_idle", [])))
        busy = [c for c in getattr(proxy.pool, "_all", ()) if id(c) not in idle]
        bound = [repr(getattr(c, "_exchange", None)) for c in busy]
        report.general.append(
            f"traffic did not settle: {len(proxy.connections)} client connections still open "
            f"({sorted(map(repr, proxy.connections))[:5]}), {proxy.pool.open} upstream open, "
            f"{proxy.pool.idle} idle; the busy ones serve {bound}"
        )
    await _bounded_wait(lambda: not origin.open_tainted(), 3.0)
    for connection in origin.open_tainted():
        seed = _seed_of(repr(connection.tainted_by))
        text = (
            f"the upstream connection left unusable by {connection.tainted_by!r} is still open "
            f"(the proxy should have closed it)"
        )
        if seed is None:
            report.general.append(text)
        else:
            report.add(seed, text)
    for text in origin.violations():
        seeds = [int(s) for s in re.findall(r"/chaos/(\d+)", text)]
        if seeds:
            report.add(seeds[0], text)
        else:
            report.general.append(text)
    live = live_objects()
    for kind, count in live.items():
        if count > baseline.get(kind, 0):
            report.general.append(f"{count - baseline.get(kind, 0)} {kind} still alive after the traffic settled")
