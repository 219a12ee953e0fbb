"""Upstream groups: round-robin, least-connections, ejection and return, with a fake clock."""

from __future__ import annotations

from collections import Counter

import pytest

from fastpipe.gateway import Server, UpstreamGroup
from fastpipe.gateway.config import UpstreamGroupConfig

URLS = ("http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def group(
    balance: str = "round-robin", *, max_fails: int = 1, fail_timeout: float = 10.0
) -> tuple[UpstreamGroup, FakeClock]:
    clock = FakeClock()
    made = UpstreamGroup("api", URLS, balance, max_fails, fail_timeout, 1, clock=clock)
    return made, clock


def picks(made: UpstreamGroup, count: int) -> Counter[str]:
    """``count`` sequential requests, each finished before the next starts."""
    seen: Counter[str] = Counter()
    for _ in range(count):
        server = made.choose()
        assert server is not None
        made.started(server)
        made.finished(server)
        seen[server.url] += 1
    return seen


def test_round_robin_is_even_over_1000_picks() -> None:
    made, _ = group()
    assert sorted(picks(made, 1000).values()) == [333, 333, 334]


def test_round_robin_takes_servers_in_turn() -> None:
    made, _ = group()
    assert [made.choose().url for _ in range(6)] == [*URLS, *URLS]  # type: ignore[union-attr]


def test_round_robin_is_even_over_the_healthy_servers() -> None:
    made, _ = group()
    made.failed(made.servers[1])
    assert picks(made, 1000) == {URLS[0]: 500, URLS[2]: 500}


def test_least_connections_is_even_for_short_requests() -> None:
    made, _ = group("least-connections")
    assert sorted(picks(made, 999).values()) == [333, 333, 333]


def test_least_connections_gives_new_work_to_the_server_without_long_streams() -> None:
    made, _ = group("least-connections")
    streams = []
    for _ in range(6):  # long SSE streams: started, not finished
        server = made.choose()
        assert server is not None
        made.started(server)
        streams.append(server)
    assert [server.in_flight for server in made.servers] == [2, 2, 2]
    for server in streams:  # the two streams on the first server end
        if server is made.servers[0]:
            made.finished(server)
    # Now it has none in flight: the next two requests both go there, however round-robin would turn.
    first = made.choose()
    assert first is made.servers[0]
    made.started(first)
    second = made.choose()
    assert second is made.servers[0]
    made.started(second)
    third = made.choose()
    assert third is not made.servers[0]


def test_least_connections_busy_server_gets_work_last() -> None:
    made, _ = group("least-connections")
    busy = made.servers[0]
    for _ in range(50):
        made.started(busy)  # fifty streams open on it
    assert busy.url not in picks(made, 100)


def test_in_flight_is_shared_by_every_route_of_the_group() -> None:
    made, _ = group("least-connections")
    # Two routes use the same group object: one route's stream counts for the other's choice.
    stream = made.choose()
    assert stream is not None
    made.started(stream)
    assert made.choose() is not stream


def test_one_failure_ejects_with_max_fails_1_and_the_server_returns_after_fail_timeout() -> None:
    made, clock = group()
    down = made.servers[0]
    made.failed(down)
    assert not made.is_up(down)
    assert down.url not in picks(made, 30)
    clock.now += 9.5
    assert not made.is_up(down)
    assert down.url not in picks(made, 30)
    clock.now += 0.5
    assert made.is_up(down)
    assert picks(made, 30)[down.url] == 10


def test_max_fails_within_fail_timeout_ejects() -> None:
    made, clock = group(max_fails=3, fail_timeout=10.0)
    server = made.servers[0]
    made.failed(server)
    clock.now += 4
    made.failed(server)
    assert made.is_up(server)
    clock.now += 4
    made.failed(server)  # the third within 8 s
    assert not made.is_up(server)
    clock.now += 9.5
    assert not made.is_up(server)
    clock.now += 0.5
    assert made.is_up(server)


def test_failures_spread_wider_than_fail_timeout_do_not_eject() -> None:
    made, clock = group(max_fails=3, fail_timeout=10.0)
    server = made.servers[0]
    for _ in range(10):
        made.failed(server)
        clock.now += 5.1  # never three within 10 s
    assert made.is_up(server)


def test_success_clears_the_failure_count() -> None:
    made, _ = group(max_fails=2)
    server = made.servers[0]
    made.failed(server)
    made.succeeded(server)
    made.failed(server)
    assert made.is_up(server)
    made.failed(server)
    assert not made.is_up(server)


def test_a_returned_server_is_ejected_again_by_its_next_failure_until_a_success() -> None:
    made, clock = group(max_fails=3)
    server = made.servers[0]
    for _ in range(3):
        made.failed(server)
    clock.now += 10
    assert made.is_up(server)
    made.failed(server)  # on probation: one failure is enough
    assert not made.is_up(server)
    clock.now += 10
    made.succeeded(server)
    made.failed(server)
    assert made.is_up(server)


def test_max_fails_0_never_ejects() -> None:
    made, _ = group(max_fails=0)
    for _ in range(100):
        made.failed(made.servers[0])
    assert made.is_up(made.servers[0])


def test_all_ejected_still_chooses_among_all() -> None:
    made, _ = group()
    for server in made.servers:
        made.failed(server)
    assert not any(made.is_up(server) for server in made.servers)
    assert sorted(picks(made, 300).values()) == [100, 100, 100]


def test_all_ejected_fallback_for_least_connections() -> None:
    made, _ = group("least-connections")
    for server in made.servers:
        made.failed(server)
    made.started(made.servers[0])
    made.started(made.servers[1])
    assert made.choose() is made.servers[2]


def test_exclude_skips_servers_already_tried() -> None:
    made, _ = group()
    first = made.choose()
    assert first is not None
    for _ in range(10):
        assert made.choose(exclude={first}) is not first


def test_exclude_prefers_a_healthy_server_then_an_ejected_one_then_none() -> None:
    made, _ = group()
    tried, healthy, ejected = made.servers
    made.failed(ejected)
    assert made.choose(exclude={tried}) is healthy
    assert made.choose(exclude={tried, healthy}) is ejected
    assert made.choose(exclude=set(made.servers)) is None


def test_finished_never_counts_below_zero() -> None:
    made, _ = group()
    server = made.servers[0]
    made.finished(server)
    assert server.in_flight == 0


def test_from_config_and_addresses() -> None:
    config = UpstreamGroupConfig(
        "api", ("https://api.example.com", "http://[::1]:9000"), "least-connections", 2, 5.0, 0
    )
    made = UpstreamGroup.from_config(config)
    assert (made.balance, made.max_fails, made.fail_timeout, made.retries) == ("least-connections", 2, 5.0, 0)
    assert [(s.address.host, s.address.port, s.address.tls) for s in made.servers] == [
        ("api.example.com", 443, True),
        ("::1", 9000, False),
    ]
    assert isinstance(made.servers[0], Server)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="balance"):
        UpstreamGroup("api", URLS, "random")
    with pytest.raises(ValueError, match="no servers"):
        UpstreamGroup("api", ())
