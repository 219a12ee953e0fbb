"""``fastpipe proxy --workers 2`` under mixed traffic: one worker is SIGKILLed and replaced.

Which client connections the victim held is read from the kernel just before the kill (the worker's own
sockets, by the client's port). Those exchanges may end visibly truncated (or may have completed just
before); every other exchange, in flight on the surviving worker or new after the kill, must complete
byte-identical. A connection still in the victim's accept queue when it died is reset before any byte of
an answer: it is counted with the victim's, as it is one of them.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time

import psutil
import pytest

from . import conftest
from ._fleet import Fleet, sigterm, wait_for_line
from ._traffic import Traffic, count

QUEUED = 0.5  # seconds: how long before the kill a connection that never got an answer may have waited


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_sigkilled_worker_is_replaced_and_only_its_exchanges_are_cut(fleet: Fleet) -> None:
    upstream = await fleet.origin()
    instance = fleet.instance("workers", upstream, workers=2, grace=2.0)
    instance.start()
    await instance.wait_serving()
    workers = instance.worker_processes()
    assert len(workers) == 2, f"expected 2 listening workers, found {workers}"

    traffic = Traffic("127.0.0.1", instance.port)
    traffic.start(downloads=3, long_streams=6)  # several long exchanges on each worker when one is killed
    try:
        await asyncio.sleep(2.5)
        victim = workers[0]
        snapshot_at = time.time()
        held = {
            c.raddr.port
            for c in victim.net_connections("tcp")
            if c.laddr.port == instance.port and c.raddr and c.status == psutil.CONN_ESTABLISHED
        }
        victim.send_signal(signal.SIGKILL)
        killed_at = time.time()
        victim.wait(10)
        deadline = time.monotonic() + 20
        while True:
            current = [w for w in instance.worker_processes() if w.pid != victim.pid]
            if len(current) == 2:
                break
            assert time.monotonic() < deadline, "the killed worker was not replaced within 20 s"
            await asyncio.sleep(0.05)
        replaced_at = time.time()
        await asyncio.sleep(2.0)  # traffic on the replacement too
    finally:
        await traffic.finish(timeout=30)

    exchanges = traffic.exchanges
    problems = []
    affected = {"truncated": 0, "ok": 0, "reset before an answer": 0}
    for exchange in exchanges:
        was_held = exchange.started < killed_at and (exchange.port in held or exchange.started >= snapshot_at)
        queued = (
            exchange.outcome == "failed"
            and exchange.detail.startswith("no answer")
            and killed_at - QUEUED <= exchange.started <= killed_at
        )
        if (was_held and exchange.in_flight_at(killed_at)) or queued:
            if exchange.outcome in ("ok", "truncated"):
                affected[exchange.outcome] += 1
            elif queued or exchange.detail.startswith("no answer") or exchange.outcome == "retried":
                affected["reset before an answer"] += 1
            else:
                problems.append(f"held by the victim, not visibly cut: {exchange}")
        elif exchange.outcome == "retried" and exchange.port in held:
            affected["reset before an answer"] += 1  # an idle keep-alive connection the victim held
        elif exchange.outcome != "ok":
            problems.append(f"not held by the victim, yet {exchange.outcome}: {exchange}")

    others_in_flight = [e for e in exchanges if e.in_flight_at(killed_at) and e.port not in held]
    # New after the kill: every request except one sent on a keep-alive connection the victim had held.
    after = [e for e in exchanges if e.started > killed_at and not (e.reused and e.port in held)]
    line = (
        f"worker SIGKILL under --workers 2: {len(exchanges)} exchanges; the victim held {len(held)} connections: "
        f"cut visibly {affected['truncated']}, reset before an answer {affected['reset before an answer']}, "
        f"completed just before {affected['ok']}; in flight elsewhere completed {count(others_in_flight, 'ok')} "
        f"of {len(others_in_flight)}; new after the kill ok {count(after, 'ok')} of {len(after)}; "
        f"replacement listening {replaced_at - killed_at:.2f} s after the kill; failed {len(problems)}"
    )
    conftest.SUMMARY.append(line)
    print(line)
    assert not problems, "\n".join(problems[:20])
    assert count(after, "ok") == len(after) > 50
    assert held, "the victim held no connection: the kill tested nothing"

    exit_at = sigterm(instance.current)
    assert await instance.current.wait(15) == 0
    assert time.time() - exit_at < 10
    log = instance.log_text()
    await wait_for_line(instance.current.log, re.compile(rf"worker {victim.pid} killed by SIGKILL"), timeout=1)
    assert log.count("proxy listening on") == 3, log
