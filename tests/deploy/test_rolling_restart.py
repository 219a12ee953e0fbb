"""Two ``fastpipe proxy --workers 2`` instances behind HAProxy (TCP mode), restarted one at a time under load.

The rolling restart is the one an operator runs with an L4 balancer: tell the balancer to send no new
connections to the instance (``set server ... state drain``), SIGTERM it (the proxy lets what is in flight
finish for its grace period, then cuts the rest), start it again, wait until it serves, put it back
(``state ready``), wait until the balancer's health check sees it up, then the other instance.

What must hold, checked per exchange against the balancer's log of which instance took each connection:

* every request on a new connection succeeds, byte-identical;
* a response in flight when its instance got SIGTERM either completes byte-identical or, only once that
  instance's grace period is over, ends visibly truncated (never a clean short end, never wrong bytes).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest

from . import conftest
from ._fleet import Fleet, HAProxy, Instance, assign_servers, free_port, sigterm
from ._traffic import Exchange, Traffic, count

GRACE = 2.0
HEALTH = "/healthz"
# HAProxy asks each instance's health endpoint, which the proxy answers itself (never the origin).
HEALTH_CHECK = (
    "option httpchk",
    f"http-check send meth GET uri {HEALTH} ver HTTP/1.1 hdr Host haproxy",
    "http-check expect status 200",
)
LATE = 3.0  # seconds after the grace deadline by which the cut must have reached the client


@dataclass
class Restart:
    instance: str
    sigterm_at: float
    exit_code: int = -1
    back_at: float = 0.0


async def _roll(balancer: HAProxy, instance: Instance) -> Restart:
    await balancer.set_state(instance.name, "drain")
    await balancer.wait_status(instance.name, "DRAIN")
    restart = Restart(instance.name, sigterm(instance.current))
    restart.exit_code = await instance.current.wait(GRACE + 15)
    instance.start()
    await instance.wait_serving()
    await balancer.set_state(instance.name, "ready")
    await balancer.wait_status(instance.name, "UP")
    restart.back_at = time.time()
    return restart


def _verdict(exchanges: list[Exchange], restarts: list[Restart]) -> tuple[list[str], dict[str, int]]:
    """The problems found, and the counts to report."""
    problems: list[str] = []
    counts = {"in flight, completed byte-identical": 0, "in flight, visibly truncated past the grace": 0}
    for exchange in exchanges:
        own = [r for r in restarts if r.instance == exchange.server]
        in_flight = [r for r in own if exchange.in_flight_at(r.sigterm_at)]
        if exchange.outcome == "ok":
            if in_flight:
                counts["in flight, completed byte-identical"] += 1
        elif exchange.outcome == "truncated":
            cut_late = [
                r for r in in_flight if r.sigterm_at + GRACE - 0.2 <= exchange.ended <= r.sigterm_at + GRACE + LATE
            ]
            if cut_late:
                counts["in flight, visibly truncated past the grace"] += 1
            else:
                problems.append(f"truncated outside a grace deadline (server {exchange.server or '?'}): {exchange}")
        elif exchange.outcome == "retried" and exchange.kind == "keep-alive":
            pass  # counted below; the loop sent the request again on a fresh connection
        else:
            problems.append(f"failed: {exchange}")
    return problems, counts


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_rolling_restart_behind_haproxy_loses_nothing(fleet: Fleet) -> None:
    upstream = await fleet.origin()
    instances = [
        fleet.instance(name, upstream, workers=2, grace=GRACE, extra=("--health-path", HEALTH)) for name in ("a", "b")
    ]
    for instance in instances:
        instance.start()
    balancer = HAProxy(fleet.directory, free_port(), {i.name: i.port for i in instances}, check=HEALTH_CHECK)
    fleet.adopt(balancer.process)
    for instance in instances:
        await instance.wait_serving()
    balancer.start()
    for instance in instances:
        await balancer.wait_status(instance.name, "UP")

    traffic = Traffic("127.0.0.1", balancer.port)
    traffic.start()
    restarts: list[Restart] = []
    try:
        await asyncio.sleep(2.5)  # long streams and slow downloads are under way on both instances
        for instance in instances:
            restarts.append(await _roll(balancer, instance))
            await asyncio.sleep(1.5)  # both instances serve again before the next one goes
    finally:
        await traffic.finish(timeout=30)
    await asyncio.sleep(0.3)  # HAProxy logs a connection as it ends
    exchanges = traffic.exchanges
    assign_servers(exchanges, balancer.connections())

    problems, counts = _verdict(exchanges, restarts)
    # Requests that began while an instance was draining or restarting, and ended before any SIGTERM.
    during = [
        e
        for e in exchanges
        if restarts[0].sigterm_at <= e.started <= restarts[-1].back_at
        and not any(e.in_flight_at(r.sigterm_at) for r in restarts)
        and e.outcome != "retried"
    ]
    line = (
        f"rolling restart behind haproxy (grace {GRACE} s): {len(exchanges)} exchanges, ok {count(exchanges, 'ok')} "
        f"(small {count(exchanges, 'ok', ('small',))}, keep-alive {count(exchanges, 'ok', ('keep-alive',))}, "
        f"download {count(exchanges, 'ok', ('download',))}, upload {count(exchanges, 'ok', ('upload',))}, "
        f"sse {count(exchanges, 'ok', ('sse', 'sse-long'))}); "
        f"new while an instance restarted: ok {count(during, 'ok')} of {len(during)}; "
        + "; ".join(f"{name} {value}" for name, value in counts.items())
        + f"; keep-alive requests retried after an idle close {count(exchanges, 'retried')}; failed {len(problems)}"
    )
    conftest.SUMMARY.append(line)
    print(line)
    assert [r.exit_code for r in restarts] == [0, 0], "an instance did not shut down cleanly"
    assert not problems, "\n".join(problems[:20])
    assert count(during, "ok") == len(during) > 50
    unassigned = [e for e in exchanges if not e.server and e.outcome != "ok"]
    assert not unassigned, f"exchanges HAProxy did not log: {unassigned[:5]}"
    # The run must have exercised what it claims: responses in flight at a SIGTERM, both ways of ending.
    assert counts["in flight, completed byte-identical"] > 0
    assert counts["in flight, visibly truncated past the grace"] > 0
    assert count(exchanges, "ok", ("small",)) > 100
    for kind in ("download", "upload", "sse"):
        assert count(exchanges, "ok", (kind,)) > 0, f"no {kind} completed"
    for instance in instances:
        log = instance.log_text()
        assert log.count("proxy listening on") == 2 * instance.workers, log
