"""The gateway's Prometheus metrics: records in, a real scrape of ``/metrics`` over HTTP on 127.0.0.1 out.

The multi-worker tests start real worker processes (``python -c``) that write into one multiprocess
directory, and read their sums back from the listener the supervisor would run.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastpipe.gateway import metrics as metrics_module
from fastpipe.gateway.metrics import (
    MULTIPROC_ENV,
    SNAPSHOT_INTERVAL,
    GatewayMetrics,
    MetricsServer,
    cleanup_multiprocess,
    prepare_multiprocess,
    serve_metrics,
    worker_exited,
)
from fastpipe.http.record import (
    CLIENT_GONE,
    COMPLETE,
    DRAINED,
    REJECTED,
    SHUTDOWN,
    TIMEOUT,
    UPGRADED,
    UPSTREAM_ERROR,
    ExchangeRecord,
)
from fastpipe.usage import Usage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The histograms' bucket bounds as exposed: 5 ms to 5 minutes.
BOUNDS = "0.005 0.01 0.025 0.05 0.1 0.25 0.5 1.0 2.5 5.0 10.0 30.0 60.0 120.0 300.0"
LE: tuple[str, ...] = (*BOUNDS.split(), "+Inf")
S1, S2 = "http://127.0.0.1:9001", "http://127.0.0.1:9002"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # This process is the single-process case (and the supervisor's side): no directory of its own.
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


def record(**fields: Any) -> ExchangeRecord:
    made: dict[str, Any] = {
        "client": "127.0.0.1:50000",
        "method": "POST",
        "target": "/v1/chat/completions",
        "status": 200,
        "upstream_status": 200,
        "ttfb": 0.25,
        "duration": 2.0,
        "request_bytes": 100,
        "request_chunks": 1,
        "response_bytes": 1000,
        "response_chunks": 4,
        "end": COMPLETE,
        "route": "chat",
        "upstream": "api",
        "server": S1,
        "attempts": 1,
    }
    made.update(fields)
    return ExchangeRecord(**made)


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def parse(text: str) -> Samples:
    """Every sample but the ``_created`` timestamps, by name and sorted labels."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                found[key(sample.name, **sample.labels)] = sample.value
    return found


def get(url: str, method: str = "GET") -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        return client.request(method, url)


def scrape(server: MetricsServer) -> Samples:
    response = get(f"http://127.0.0.1:{server.port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    return parse(response.text)


def histogram(name: str, route: str, observations: Iterable[float]) -> Samples:
    seen = list(observations)
    made: Samples = {}
    for le in LE:
        made[key(f"{name}_bucket", route=route, le=le)] = float(sum(1 for value in seen if value <= float(le)))
    made[key(f"{name}_count", route=route)] = float(len(seen))
    made[key(f"{name}_sum", route=route)] = sum(seen)
    return made


def test_every_metric_name_label_and_value_over_http() -> None:
    metrics = GatewayMetrics()
    # Times are sums of powers of two (exact in binary), so the sums compare exactly.
    metrics.exchange_ended(record(usage=Usage(10, 20)))
    metrics.exchange_ended(
        record(end=DRAINED, ttfb=0.5, duration=30.0, request_bytes=50, response_bytes=500, usage=Usage(7, None))
    )
    metrics.exchange_ended(
        record(
            status=502,
            end=UPSTREAM_ERROR,
            ttfb=0.0625,
            duration=0.125,
            request_bytes=0,
            response_bytes=0,
            attempts=2,
            server=S2,
        )
    )
    metrics.exchange_ended(
        record(
            status=None,
            end=CLIENT_GONE,
            ttfb=None,
            duration=0.015625,
            request_bytes=10,
            response_bytes=0,
            usage=Usage(None, None),
        )
    )
    metrics.exchange_ended(
        record(
            route=None,
            upstream=None,
            server=None,
            status=400,
            upstream_status=None,
            end=REJECTED,
            ttfb=0.001,
            duration=0.001,
            request_bytes=0,
            response_bytes=11,
        )
    )
    metrics.exchange_ended(
        record(
            route="ws",
            status=101,
            end=UPGRADED,
            ttfb=0.0078125,
            duration=600.0,
            request_bytes=3000,
            response_bytes=4000,
        )
    )
    for _ in range(3):
        metrics.connection_opened()
    metrics.connection_closed()
    metrics.tunnel_opened()
    metrics.tunnel_opened()
    metrics.tunnel_closed()
    metrics.upstream_health("api", S1, False)
    metrics.upstream_health("api", S1, True)
    metrics.upstream_health("api", S2, True)
    metrics.upstream_health("api", S2, False)

    expected: Samples = {
        key("fastpipe_requests_total", route="chat", upstream="api", status_class="2xx"): 2.0,
        key("fastpipe_requests_total", route="chat", upstream="api", status_class="5xx"): 1.0,
        key("fastpipe_requests_total", route="chat", upstream="api", status_class="none"): 1.0,
        key("fastpipe_requests_total", route="-", upstream="-", status_class="4xx"): 1.0,
        key("fastpipe_requests_total", route="ws", upstream="api", status_class="1xx"): 1.0,
        key("fastpipe_exchanges_ended_total", route="chat", reason="complete"): 1.0,
        key("fastpipe_exchanges_ended_total", route="chat", reason="drained"): 1.0,
        key("fastpipe_exchanges_ended_total", route="chat", reason="upstream error"): 1.0,
        key("fastpipe_exchanges_ended_total", route="chat", reason="client gone"): 1.0,
        key("fastpipe_exchanges_ended_total", route="-", reason="rejected"): 1.0,
        key("fastpipe_exchanges_ended_total", route="ws", reason="upgraded"): 1.0,
        key("fastpipe_bytes_total", route="chat", direction="in"): 160.0,
        key("fastpipe_bytes_total", route="chat", direction="out"): 1500.0,
        key("fastpipe_bytes_total", route="-", direction="in"): 0.0,
        key("fastpipe_bytes_total", route="-", direction="out"): 11.0,
        key("fastpipe_bytes_total", route="ws", direction="in"): 3000.0,
        key("fastpipe_bytes_total", route="ws", direction="out"): 4000.0,
        # Only the routes whose records carried usage; a count not reported adds nothing.
        key("fastpipe_usage_tokens_total", route="chat", kind="input"): 17.0,
        key("fastpipe_usage_tokens_total", route="chat", kind="output"): 20.0,
        key("fastpipe_open_connections"): 2.0,
        key("fastpipe_open_tunnels"): 1.0,
        key("fastpipe_upstream_up", upstream="api", server=S1): 1.0,
        key("fastpipe_upstream_up", upstream="api", server=S2): 0.0,
        **histogram("fastpipe_request_duration_seconds", "chat", [2.0, 30.0, 0.125, 0.015625]),
        **histogram("fastpipe_request_duration_seconds", "-", [0.001]),
        **histogram("fastpipe_request_duration_seconds", "ws", [600.0]),
        # The client-gone exchange sent no byte: not observed.
        **histogram("fastpipe_ttfb_seconds", "chat", [0.25, 0.5, 0.0625]),
        **histogram("fastpipe_ttfb_seconds", "-", [0.001]),
        **histogram("fastpipe_ttfb_seconds", "ws", [0.0078125]),
    }
    with serve_metrics("127.0.0.1", 0, metrics) as server:
        assert server.port > 0
        response = get(server.url)
        assert response.status_code == 200
        assert response.headers["content-type"] == CONTENT_TYPE
        assert int(response.headers["content-length"]) == len(response.content)
        assert parse(response.text) == expected
        assert response.content == metrics.render()  # nothing changed in between
    assert expected[key("fastpipe_request_duration_seconds_bucket", route="chat", le="30.0")] == 4.0  # le is <=
    assert expected[key("fastpipe_request_duration_seconds_bucket", route="ws", le="300.0")] == 0.0


def test_metric_families_and_types() -> None:
    metrics = GatewayMetrics()
    metrics.exchange_ended(record(usage=Usage(1, 1)))
    metrics.upstream_health("api", S1, True)
    text = metrics.render().decode()
    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert families == {
        "fastpipe_requests": "counter",
        "fastpipe_request_duration_seconds": "histogram",
        "fastpipe_ttfb_seconds": "histogram",
        "fastpipe_bytes": "counter",
        "fastpipe_exchanges_ended": "counter",
        "fastpipe_usage_tokens": "counter",
        "fastpipe_open_connections": "gauge",
        "fastpipe_open_tunnels": "gauge",
        "fastpipe_upstream_up": "gauge",
    }
    # Every family has its HELP and TYPE, series or not (no usage, no health: no series).
    empty = GatewayMetrics().render().decode().splitlines()
    types = [line.split()[2:] for line in empty if line.startswith("# TYPE ")]
    assert types == [
        ["fastpipe_requests_total", "counter"],
        ["fastpipe_request_duration_seconds", "histogram"],
        ["fastpipe_ttfb_seconds", "histogram"],
        ["fastpipe_bytes_total", "counter"],
        ["fastpipe_exchanges_ended_total", "counter"],
        ["fastpipe_usage_tokens_total", "counter"],
        ["fastpipe_open_connections", "gauge"],
        ["fastpipe_open_tunnels", "gauge"],
        ["fastpipe_upstream_up", "gauge"],
    ]
    assert len([line for line in empty if line.startswith("# HELP fastpipe_")]) == 9


def buckets(name: str, labels: str, first: int) -> list[str]:
    """Histogram bucket lines of one observation that falls in bucket ``first`` (cumulative from there)."""
    return [f'{name}_bucket{{{labels},le="{le}"}} {int(index >= first)}' for index, le in enumerate(LE)]


def test_the_exposition_byte_for_byte() -> None:
    metrics = GatewayMetrics()
    # ttfb exactly on a bound (le is <=), duration between two.
    metrics.exchange_ended(record(ttfb=0.005, duration=0.03, request_bytes=7, response_bytes=10, usage=Usage(3, None)))
    metrics.connection_opened()
    metrics.upstream_health("api", S1, False)
    lines = [
        "# HELP fastpipe_requests_total Exchanges ended, by the status class the client got",
        "# TYPE fastpipe_requests_total counter",
        'fastpipe_requests_total{route="chat",upstream="api",status_class="2xx"} 1',
        "# HELP fastpipe_request_duration_seconds From the end of the request head to the end of the exchange",
        "# TYPE fastpipe_request_duration_seconds histogram",
        *buckets("fastpipe_request_duration_seconds", 'route="chat"', 3),
        'fastpipe_request_duration_seconds_count{route="chat"} 1',
        'fastpipe_request_duration_seconds_sum{route="chat"} 0.03',
        "# HELP fastpipe_ttfb_seconds From the end of the request head to the first response byte sent",
        "# TYPE fastpipe_ttfb_seconds histogram",
        *buckets("fastpipe_ttfb_seconds", 'route="chat"', 0),
        'fastpipe_ttfb_seconds_count{route="chat"} 1',
        'fastpipe_ttfb_seconds_sum{route="chat"} 0.005',
        "# HELP fastpipe_bytes_total Body bytes: in from the client, out to it",
        "# TYPE fastpipe_bytes_total counter",
        'fastpipe_bytes_total{route="chat",direction="in"} 7',
        'fastpipe_bytes_total{route="chat",direction="out"} 10',
        "# HELP fastpipe_exchanges_ended_total Exchanges ended, by why they ended",
        "# TYPE fastpipe_exchanges_ended_total counter",
        'fastpipe_exchanges_ended_total{route="chat",reason="complete"} 1',
        "# HELP fastpipe_usage_tokens_total Tokens the providers reported",
        "# TYPE fastpipe_usage_tokens_total counter",
        'fastpipe_usage_tokens_total{route="chat",kind="input"} 3',
        'fastpipe_usage_tokens_total{route="chat",kind="output"} 0',
        "# HELP fastpipe_open_connections Client connections open",
        "# TYPE fastpipe_open_connections gauge",
        "fastpipe_open_connections 1",
        "# HELP fastpipe_open_tunnels WebSocket tunnels open",
        "# TYPE fastpipe_open_tunnels gauge",
        "fastpipe_open_tunnels 0",
        "# HELP fastpipe_upstream_up 1 when the server is in service, 0 when ejected (the minimum over workers)",
        "# TYPE fastpipe_upstream_up gauge",
        f'fastpipe_upstream_up{{upstream="api",server="{S1}"}} 0',
    ]
    assert metrics.render().decode() == "\n".join(lines) + "\n"


def test_label_values_are_escaped() -> None:
    metrics = GatewayMetrics()
    route, server = 'a\\b"c\nd', 'http://h/"x"\\'
    metrics.exchange_ended(record(route=route, upstream="é\n"))
    metrics.upstream_health("api", server, True)
    text = metrics.render().decode()
    assert 'fastpipe_requests_total{route="a\\\\b\\"c\\nd",upstream="é\\n",status_class="2xx"} 1\n' in text
    assert 'fastpipe_upstream_up{upstream="api",server="http://h/\\"x\\"\\\\"} 1\n' in text
    found = parse(text)
    assert found[key("fastpipe_requests_total", route=route, upstream="é\n", status_class="2xx")] == 1.0
    assert found[key("fastpipe_request_duration_seconds_bucket", route=route, le="+Inf")] == 1.0
    assert found[key("fastpipe_upstream_up", upstream="api", server=server)] == 1.0


@pytest.mark.parametrize(
    ("status", "status_class"),
    [
        (None, "none"),
        (101, "1xx"),
        (200, "2xx"),
        (204, "2xx"),
        (304, "3xx"),
        (404, "4xx"),
        (499, "4xx"),
        (500, "5xx"),
        (599, "5xx"),
    ],
)
def test_status_class(status: int | None, status_class: str) -> None:
    metrics = GatewayMetrics()
    metrics.exchange_ended(record(status=status))
    found = parse(metrics.render().decode())
    requests = {labels: value for (name, labels), value in found.items() if name == "fastpipe_requests_total"}
    assert requests == {key("", route="chat", status_class=status_class, upstream="api")[1]: 1.0}


def test_every_end_reason_passes_through_as_is() -> None:
    metrics = GatewayMetrics()
    reasons = (COMPLETE, CLIENT_GONE, UPSTREAM_ERROR, TIMEOUT, DRAINED, REJECTED, SHUTDOWN, UPGRADED)
    for count, reason in enumerate(reasons, 1):
        for _ in range(count):
            metrics.exchange_ended(record(end=reason))
    found = parse(metrics.render().decode())
    ended = {labels: value for (name, labels), value in found.items() if name == "fastpipe_exchanges_ended_total"}
    assert ended == {key("", route="chat", reason=reason)[1]: float(n) for n, reason in enumerate(reasons, 1)}
    assert found[key("fastpipe_requests_total", route="chat", upstream="api", status_class="2xx")] == 36.0


def test_a_route_less_record_is_dash_for_route_and_upstream() -> None:
    metrics = GatewayMetrics()
    metrics.exchange_ended(record(route=None, upstream="api", status=404, end=REJECTED, usage=Usage(3, None)))
    found = parse(metrics.render().decode())
    assert found[key("fastpipe_requests_total", route="-", upstream="-", status_class="4xx")] == 1.0
    assert found[key("fastpipe_usage_tokens_total", route="-", kind="input")] == 3.0
    assert not [labels for _, labels in found if ("route", "chat") in labels or ("upstream", "api") in labels]


def test_after_the_first_record_of_a_kind_no_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = GatewayMetrics()
    first = record(usage=Usage(5, 6))
    metrics.exchange_ended(first)
    metrics.upstream_health("api", S1, True)

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("series looked up on the per-record path")

    monkeypatch.setattr(metrics, "_kind_of", refused)
    monkeypatch.setattr(metrics, "_tokens_of", refused)
    for _ in range(3):  # same route, upstream, status and end; other sizes, times and usage
        metrics.exchange_ended(record(ttfb=0.5, duration=4.0, request_bytes=1, response_bytes=2, usage=Usage(1, 1)))
    metrics.upstream_health("api", S1, False)
    found = parse(metrics.render().decode())
    assert found[key("fastpipe_requests_total", route="chat", upstream="api", status_class="2xx")] == 4.0
    assert found[key("fastpipe_request_duration_seconds_sum", route="chat")] == 14.0
    assert found[key("fastpipe_request_duration_seconds_bucket", route="chat", le="2.5")] == 1.0
    assert found[key("fastpipe_request_duration_seconds_bucket", route="chat", le="5.0")] == 4.0
    assert found[key("fastpipe_bytes_total", route="chat", direction="out")] == 1006.0
    assert found[key("fastpipe_usage_tokens_total", route="chat", kind="output")] == 9.0
    assert found[key("fastpipe_upstream_up", upstream="api", server=S1)] == 0.0
    with pytest.raises(AssertionError, match="looked up"):  # a new kind does look up (the check is live)
        metrics.exchange_ended(record(status=503))


def test_kinds_with_the_same_labels_share_their_series() -> None:
    metrics = GatewayMetrics()
    # Two kinds, one series: status 200 and 204 are both 2xx; no route and a route named "-" are both "-".
    metrics.exchange_ended(record(status=200, duration=1.0))
    metrics.exchange_ended(record(status=204, duration=1.0, usage=Usage(1, None)))
    metrics.exchange_ended(record(route=None, upstream=None, usage=Usage(2, None)))
    metrics.exchange_ended(record(route="-", upstream="-", usage=Usage(3, None)))
    found = parse(metrics.render().decode())
    assert found[key("fastpipe_requests_total", route="chat", upstream="api", status_class="2xx")] == 2.0
    assert found[key("fastpipe_exchanges_ended_total", route="chat", reason="complete")] == 2.0
    assert found[key("fastpipe_request_duration_seconds_count", route="chat")] == 2.0
    assert found[key("fastpipe_bytes_total", route="chat", direction="in")] == 200.0
    assert found[key("fastpipe_requests_total", route="-", upstream="-", status_class="2xx")] == 2.0
    assert found[key("fastpipe_request_duration_seconds_count", route="-")] == 2.0
    assert found[key("fastpipe_usage_tokens_total", route="-", kind="input")] == 5.0


def test_get_sample_value() -> None:
    metrics = GatewayMetrics()
    metrics.exchange_ended(record(duration=2.0, usage=Usage(4, None)))
    metrics.tunnel_opened()
    metrics.upstream_health("api", S1, True)
    value = metrics.get_sample_value
    assert value("fastpipe_requests_total", {"route": "chat", "upstream": "api", "status_class": "2xx"}) == 1.0
    assert value("fastpipe_usage_tokens_total", {"route": "chat", "kind": "input"}) == 4.0
    assert value("fastpipe_usage_tokens_total", {"route": "chat", "kind": "output"}) == 0.0
    assert value("fastpipe_request_duration_seconds_bucket", {"route": "chat", "le": "1.0"}) == 0.0
    assert value("fastpipe_request_duration_seconds_bucket", {"route": "chat", "le": "2.5"}) == 1.0
    assert value("fastpipe_request_duration_seconds_sum", {"route": "chat"}) == 2.0
    assert value("fastpipe_request_duration_seconds_count", {"route": "chat"}) == 1.0
    assert value("fastpipe_open_tunnels") == 1.0
    assert value("fastpipe_upstream_up", {"upstream": "api", "server": S1}) == 1.0
    assert value("fastpipe_requests_total", {"route": "chat"}) is None  # labels must match whole
    assert value("fastpipe_usage_tokens_total", {"route": "other", "kind": "input"}) is None
    assert value("fastpipe_nothing") is None


def test_two_instances_keep_apart() -> None:
    one, two = GatewayMetrics(), GatewayMetrics()
    one.exchange_ended(record())
    one.connection_opened()
    found = parse(two.render().decode())
    assert found == {key("fastpipe_open_connections"): 0.0, key("fastpipe_open_tunnels"): 0.0}
    assert not one.multiprocess and not two.multiprocess


def test_only_metrics_is_served() -> None:
    metrics = GatewayMetrics()
    metrics.connection_opened()
    with serve_metrics("127.0.0.1", 0, metrics) as server:
        base = f"http://127.0.0.1:{server.port}"
        for path in ("/", "/metrics/", "/metricsx", "/favicon.ico", "/Metrics", "/x/metrics"):
            response = get(base + path)
            assert response.status_code == 404, path
            assert response.headers["content-type"].startswith("text/plain")
        assert parse(get(base + "/metrics?name[]=x").text)[key("fastpipe_open_connections")] == 1.0
        head = get(base + "/metrics", "HEAD")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == CONTENT_TYPE
        assert int(head.headers["content-length"]) == len(metrics.render())
        assert get(base + "/metrics", "POST").status_code == 501


def test_close_stops_listening_and_is_idempotent() -> None:
    metrics = GatewayMetrics()
    server = serve_metrics("127.0.0.1", 0, metrics)
    port = server.port
    assert get(server.url).status_code == 200
    server.close()
    server.close()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_a_given_port_is_used() -> None:
    with socket.socket() as probe:  # a free port, then released for the listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with serve_metrics("127.0.0.1", port, GatewayMetrics()) as server:
        assert server.port == port
        assert get(f"http://127.0.0.1:{port}/metrics").status_code == 200


def test_serve_metrics_wants_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        serve_metrics("127.0.0.1", 0, GatewayMetrics(), multiprocess_dir=str(tmp_path))
    with pytest.raises(ValueError, match="needs"):
        serve_metrics("127.0.0.1", 0)


def test_the_variable_is_read_when_metrics_are_made(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    metrics = GatewayMetrics()
    assert metrics.multiprocess
    # Written at once: this process counts in the sums (its gauges at 0) before it counts anything.
    assert os.listdir(tmp_path) == [f"{os.getpid()}.json"]
    with serve_metrics("127.0.0.1", 0, multiprocess_dir=str(tmp_path)) as server:
        assert scrape(server) == {key("fastpipe_open_connections"): 0.0, key("fastpipe_open_tunnels"): 0.0}
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a directory"):
        GatewayMetrics()


# --- Several workers ---------------------------------------------------------------------------------

# A worker with no event loop: what it counts reaches its snapshot when it exits.
WORKER = """
import json, os, sys
from fastpipe.gateway.metrics import GatewayMetrics
from fastpipe.http.record import ExchangeRecord
from fastpipe.usage import Usage

plan = json.loads(sys.argv[1])
metrics = GatewayMetrics()
assert metrics.multiprocess, "not in multiprocess mode"
for status, duration, tokens in plan["exchanges"]:
    metrics.exchange_ended(ExchangeRecord(
        client="127.0.0.1:1", method="POST", target="/v1/chat", status=status, upstream_status=status, ttfb=0.125,
        duration=duration, request_bytes=100, request_chunks=1, response_bytes=1000, response_chunks=2,
        end="complete", route="chat", upstream="api", server="http://127.0.0.1:9001", attempts=1,
        usage=Usage(tokens, None)))
for _ in range(plan["connections"]):
    metrics.connection_opened()
for _ in range(plan["tunnels"]):
    metrics.tunnel_opened()
for server, up in plan["health"]:
    metrics.upstream_health("api", server, up)
print(os.getpid())
"""


def run_worker(directory: str, plan: dict[str, Any]) -> int:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(plan)],
        env={**os.environ, MULTIPROC_ENV: directory},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_workers_are_summed_and_a_dead_workers_gauges_leave(tmp_path: Path) -> None:
    directory = prepare_multiprocess(str(tmp_path / "multiproc"))
    first = run_worker(
        directory,
        {
            "exchanges": [[200, 1.0, 10], [200, 2.0, 20], [200, 4.0, None]],
            "connections": 2,
            "tunnels": 1,
            "health": [[S1, True], [S2, True]],
        },
    )
    second = run_worker(
        directory,
        {
            "exchanges": [[200, 0.5, 5], [502, 0.25, None]],
            "connections": 1,
            "tunnels": 0,
            "health": [[S1, True], [S2, False]],
        },
    )
    assert first != second
    assert sorted(os.listdir(directory)) == sorted([f"{first}.json", f"{second}.json"])
    totals = {
        key("fastpipe_requests_total", route="chat", upstream="api", status_class="2xx"): 4.0,
        key("fastpipe_requests_total", route="chat", upstream="api", status_class="5xx"): 1.0,
        key("fastpipe_exchanges_ended_total", route="chat", reason="complete"): 5.0,
        key("fastpipe_bytes_total", route="chat", direction="in"): 500.0,
        key("fastpipe_bytes_total", route="chat", direction="out"): 5000.0,
        key("fastpipe_usage_tokens_total", route="chat", kind="input"): 35.0,
        key("fastpipe_usage_tokens_total", route="chat", kind="output"): 0.0,
        **histogram("fastpipe_request_duration_seconds", "chat", [1.0, 2.0, 4.0, 0.5, 0.25]),
        **histogram("fastpipe_ttfb_seconds", "chat", [0.125] * 5),
    }
    with serve_metrics("127.0.0.1", 0, multiprocess_dir=directory) as server:
        assert scrape(server) == {
            **totals,
            key("fastpipe_open_connections"): 3.0,  # summed over the live workers
            key("fastpipe_open_tunnels"): 1.0,
            key("fastpipe_upstream_up", upstream="api", server=S1): 1.0,
            key("fastpipe_upstream_up", upstream="api", server=S2): 0.0,  # the minimum: one worker ejected it
        }
        worker_exited(second)  # the directory prepare_multiprocess returned
        assert sorted(os.listdir(directory)) == sorted([f"{first}.json", "retired.json"])
        assert scrape(server) == {
            **totals,  # the dead worker's counts stay in the sums
            key("fastpipe_open_connections"): 2.0,
            key("fastpipe_open_tunnels"): 1.0,
            key("fastpipe_upstream_up", upstream="api", server=S1): 1.0,
            key("fastpipe_upstream_up", upstream="api", server=S2): 1.0,
        }
        worker_exited(first, directory)
        assert os.listdir(directory) == ["retired.json"]
        assert scrape(server) == totals  # no live worker: no live gauge
        worker_exited(first, directory)  # twice, or a worker that never wrote: nothing changes
        worker_exited(123456789, directory)
        assert scrape(server) == totals


def test_counts_survive_worker_after_worker(tmp_path: Path) -> None:
    directory = prepare_multiprocess(str(tmp_path / "multiproc"))
    plan = {"exchanges": [[200, 1.0, 1]], "connections": 1, "tunnels": 1, "health": [[S1, False]]}
    requests = key("fastpipe_requests_total", route="chat", upstream="api", status_class="2xx")
    tokens = key("fastpipe_usage_tokens_total", route="chat", kind="input")
    with serve_metrics("127.0.0.1", 0, multiprocess_dir=directory) as server:
        for generation in range(1, 4):  # a worker, its replacement, and the replacement's
            pid = run_worker(directory, plan)
            found = scrape(server)
            assert (found[requests], found[tokens]) == (generation, generation)
            assert found[key("fastpipe_request_duration_seconds_count", route="chat")] == generation
            assert found[key("fastpipe_open_connections")] == 1.0  # the live one's only
            assert found[key("fastpipe_upstream_up", upstream="api", server=S1)] == 0.0
            worker_exited(pid, directory)
            found = scrape(server)
            assert (found[requests], found[tokens]) == (generation, generation)
            assert key("fastpipe_open_connections") not in found
            assert key("fastpipe_open_tunnels") not in found
            assert key("fastpipe_upstream_up", upstream="api", server=S1) not in found


# A worker counting from its event loop, as the proxy does; it stays until killed.
LOOP_WORKER = """
import asyncio, os, sys
from fastpipe.gateway.metrics import GatewayMetrics
from fastpipe.http.record import ExchangeRecord

async def main():
    metrics = GatewayMetrics()
    for _ in range(int(sys.argv[1])):
        metrics.exchange_ended(ExchangeRecord(
            client="127.0.0.1:1", method="GET", target="/", status=200, upstream_status=200, ttfb=0.125,
            duration=0.5, request_bytes=0, request_chunks=0, response_bytes=10, response_chunks=1,
            end="complete", route="chat", upstream="api"))
    metrics.connection_opened()
    print("counted", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_a_killed_workers_last_snapshot_stays_in_the_sums(tmp_path: Path) -> None:
    directory = prepare_multiprocess(str(tmp_path / "multiproc"))
    requests = key("fastpipe_requests_total", route="chat", upstream="api", status_class="2xx")
    worker = subprocess.Popen(
        [sys.executable, "-c", LOOP_WORKER, "3"],
        env={**os.environ, MULTIPROC_ENV: directory},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline() == "counted\n"
        counted_at = time.monotonic()
        with serve_metrics("127.0.0.1", 0, multiprocess_dir=directory) as server:
            # The loop's timer writes the snapshot within a second of the first change.
            deadline = counted_at + 10.0
            found = scrape(server)
            while found.get(requests) != 3.0 and time.monotonic() < deadline:
                time.sleep(0.05)
                found = scrape(server)
            assert found.get(requests) == 3.0, found
            assert time.monotonic() - counted_at < SNAPSHOT_INTERVAL + 5.0
            assert found[key("fastpipe_open_connections")] == 1.0
            worker.kill()  # no exit handler runs: the sums keep what its last snapshot had
            assert worker.wait(10) == -signal.SIGKILL
            worker_exited(worker.pid)
            found = scrape(server)
            assert found[requests] == 3.0
            assert found[key("fastpipe_request_duration_seconds_sum", route="chat")] == 1.5
            assert key("fastpipe_open_connections") not in found
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        assert worker.stdout is not None
        worker.stdout.close()


async def test_the_event_loop_writes_at_most_once_an_interval(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    interval = 0.2
    monkeypatch.setattr(metrics_module, "SNAPSHOT_INTERVAL", interval)
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    snapshot = tmp_path / f"{os.getpid()}.json"
    metrics = GatewayMetrics()
    assert snapshot.exists()  # the first one at once
    writes: list[float] = []
    write = metrics._write_snapshot

    def counted() -> None:
        writes.append(time.monotonic())
        write()

    monkeypatch.setattr(metrics, "_write_snapshot", counted)

    def requests_in_file() -> float | None:
        with serve_metrics("127.0.0.1", 0, multiprocess_dir=str(tmp_path)) as server:
            return scrape(server).get(key("fastpipe_requests_total", route="chat", upstream="api", status_class="2xx"))

    started = time.monotonic()
    metrics.exchange_ended(record())
    assert requests_in_file() is None  # not written on the spot
    sent = 1
    while time.monotonic() - started < 5 * interval:  # a change every 10 ms
        await asyncio.sleep(0.01)
        metrics.exchange_ended(record())
        metrics.connection_opened()
        sent += 1
    stopped = time.monotonic()
    await asyncio.sleep(interval * 2)  # the last changes are written, then quiet
    assert requests_in_file() == float(sent)
    quiet = len(writes)
    await asyncio.sleep(interval * 3)
    assert len(writes) == quiet  # no change, no write
    assert writes[0] < stopped  # written while the changes went on, not only after
    assert len(writes) <= 7  # one per interval at most: 5 intervals of changes, and the last ones
    gaps = [later - earlier for earlier, later in itertools.pairwise(writes)]
    assert min(gaps) >= interval * 0.9, gaps
    assert writes[0] - started >= interval * 0.9


def snapshot_text(families: dict[str, list[Any]]) -> str:
    return json.dumps({"families": families})


def test_an_unreadable_snapshot_is_skipped_not_a_500(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = prepare_multiprocess(str(tmp_path / "multiproc"))
    good = run_worker(directory, {"exchanges": [[200, 1.0, 7]], "connections": 1, "tunnels": 0, "health": []})
    whole = (Path(directory) / f"{good}.json").read_text()
    unit = [0] * 16 + [1.0]  # a histogram of one observation above every bound
    bad = {
        "4242.json": whole[: len(whole) // 2],  # cut short
        "4243.json": "",
        "4244.json": snapshot_text({"fastpipe_requests_total": [[["chat"], 1]]}),  # too few labels
        "4245.json": snapshot_text({"fastpipe_request_duration_seconds": [[["chat"], unit[:-1]]]}),  # one short
        "4246.json": snapshot_text({"fastpipe_bytes_total": [[["chat", "in"], "100"]]}),  # a string
        "4247.json": snapshot_text({"fastpipe_open_connections": [[[], True]]}),  # a bool
        "4248.json": '{"families": [1, 2]}',
        "4249.json": "[]",
    }
    for name, text in bad.items():
        (Path(directory) / name).write_text(text)
    (Path(directory) / "4250.json").write_bytes(b"\xff\xfe{not utf-8")
    (Path(directory) / "4251.json").mkdir()  # cannot be read at all
    (Path(directory) / ".4252.json.tmp").write_text(whole[:10])  # a write in progress: not a snapshot yet
    expected = {
        key("fastpipe_requests_total", route="chat", upstream="api", status_class="2xx"): 1.0,
        key("fastpipe_exchanges_ended_total", route="chat", reason="complete"): 1.0,
        key("fastpipe_bytes_total", route="chat", direction="in"): 100.0,
        key("fastpipe_bytes_total", route="chat", direction="out"): 1000.0,
        key("fastpipe_usage_tokens_total", route="chat", kind="input"): 7.0,
        key("fastpipe_usage_tokens_total", route="chat", kind="output"): 0.0,
        **histogram("fastpipe_request_duration_seconds", "chat", [1.0]),
        **histogram("fastpipe_ttfb_seconds", "chat", [0.125]),
        key("fastpipe_open_connections"): 1.0,
        key("fastpipe_open_tunnels"): 0.0,
    }
    with caplog.at_level(logging.WARNING, logger="fastpipe.metrics"):
        with serve_metrics("127.0.0.1", 0, multiprocess_dir=directory) as server:
            assert scrape(server) == expected
            assert scrape(server) == expected
            worker_exited(4242, directory)  # its file is dropped, nothing of it kept
            (Path(directory) / "retired.json").write_text('{"families": {')  # even the total cut short
            assert scrape(server) == expected
    skipped = sorted(
        Path(entry.getMessage().split()[2].rstrip(",")).name for entry in caplog.records if "skipping" in entry.message
    )
    assert skipped == sorted([*(name for name in bad), "4250.json", "4251.json", "retired.json"])  # once each
    assert not (Path(directory) / "4242.json").exists()


# A writer that replaces its large snapshot (some 100 kB) as fast as it can, a count higher each time.
WRITER = """
import os, sys
from fastpipe.gateway.metrics import GatewayMetrics
from fastpipe.http.record import ExchangeRecord

metrics = GatewayMetrics()
print(os.getpid(), flush=True)
for index in range(int(sys.argv[1])):
    metrics.exchange_ended(ExchangeRecord(
        client="127.0.0.1:1", method="GET", target="/", status=200, upstream_status=200, ttfb=0.001,
        duration=0.002, request_bytes=0, request_chunks=0, response_bytes=10, response_chunks=1,
        end="complete", route=f"route-{index % 20:02d}-" + "x" * 1000, upstream="api"))
    metrics._write_snapshot()
"""


def test_a_reader_never_sees_half_a_snapshot(tmp_path: Path) -> None:
    directory = prepare_multiprocess(str(tmp_path / "multiproc"))
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, "600"],
        env={**os.environ, MULTIPROC_ENV: directory},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        path = Path(directory) / f"{int(writer.stdout.readline())}.json"
        seen: set[int] = set()
        reads = 0
        deadline = time.monotonic() + 30.0
        while writer.poll() is None and time.monotonic() < deadline:
            text = path.read_text()  # the file exists from the first write on, whole at every moment
            seen.add(sum(count for _, count in json.loads(text)["families"]["fastpipe_requests_total"]))
            reads += 1
        assert writer.wait(10) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(10)
        assert writer.stdout is not None
        writer.stdout.close()
    assert reads >= 20 and len(seen) >= 10, (reads, sorted(seen))  # it did read while the counts grew
    assert sorted(os.listdir(directory)) == [path.name]  # no temporary file left
    final = json.loads(path.read_text())["families"]["fastpipe_requests_total"]
    assert sum(count for _, count in final) == 600


def test_a_restarted_supervisor_starts_from_zero(tmp_path: Path) -> None:
    directory = str(tmp_path / "multiproc")
    assert prepare_multiprocess(directory) == directory
    first = run_worker(directory, {"exchanges": [[200, 1.0, 1]], "connections": 1, "tunnels": 0, "health": []})
    run_worker(directory, {"exchanges": [[200, 1.0, 1]], "connections": 1, "tunnels": 0, "health": []})
    worker_exited(first, directory)
    (tmp_path / "multiproc" / "notes.txt").write_text("not ours")
    (tmp_path / "multiproc" / ".77.json.tmp").write_text("{")
    assert len(os.listdir(directory)) == 4
    assert prepare_multiprocess(directory) == directory  # the next run: the old snapshots and totals go
    assert sorted(os.listdir(directory)) == ["notes.txt"]
    with serve_metrics("127.0.0.1", 0, multiprocess_dir=directory) as server:
        assert scrape(server) == {}


def test_prepare_multiprocess_makes_a_fresh_directory_and_cleanup_removes_it() -> None:
    made = prepare_multiprocess()
    try:
        assert os.path.isabs(made) and os.path.isdir(made) and os.listdir(made) == []
        other = prepare_multiprocess()
        assert other != made
        run_worker(other, {"exchanges": [], "connections": 0, "tunnels": 0, "health": []})
        cleanup_multiprocess(other)
        assert not os.path.exists(other)
        cleanup_multiprocess(other)  # twice: nothing left to do
    finally:
        shutil.rmtree(made, ignore_errors=True)


def test_cleanup_keeps_a_given_directory_and_what_is_not_ours(tmp_path: Path) -> None:
    given = tmp_path / "given"
    given.mkdir()
    (given / "notes.txt").write_text("not ours")
    directory = prepare_multiprocess(str(given))
    pid = run_worker(directory, {"exchanges": [[200, 1.0, None]], "connections": 0, "tunnels": 0, "health": []})
    worker_exited(pid, directory)
    assert sorted(os.listdir(directory)) == ["notes.txt", "retired.json"]
    cleanup_multiprocess(directory)
    assert sorted(os.listdir(directory)) == ["notes.txt"]
    missing = tmp_path / "missing"
    made = prepare_multiprocess(str(missing))  # made by it (a path that did not exist): removed at the end
    cleanup_multiprocess(made)
    assert not missing.exists()


# --- The supervisor of `fastpipe proxy --workers 2 --metrics`, end to end --------------------------


class _Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Lines:
    """The supervisor's and its workers' stderr, line by line, read on a thread."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 20.0) -> list[re.Match[str]]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [match for line in self.lines if (match := re.search(pattern, line))]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                assert left > 0, f"no {count} lines like {pattern!r} in {self.lines}"
                self._changed.wait(left)


def _requests_total(found: Samples) -> float:
    return sum(value for (name, _), value in found.items() if name == "fastpipe_requests_total")


def _scrape_until(url: str, done: Callable[[Samples], bool], timeout: float = 15.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        response = get(url)
        assert response.status_code == 200
        found = parse(response.text)
        if done(found):
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


def test_the_supervisor_serves_the_sum_of_its_workers() -> None:
    origin = ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    threading.Thread(target=origin.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    command = [sys.executable, "-m", "fastpipe", "proxy", "--upstream", f"http://127.0.0.1:{origin.server_port}"]
    command += ["--workers", "2", "--listen", "127.0.0.1:0", "--metrics", f"127.0.0.1:{metrics_port}"]
    supervisor = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert supervisor.stderr is not None
    lines = _Lines(supervisor.stderr)
    try:
        port = int(lines.wait_for(r"2 workers on http://127\.0\.0\.1:(\d+)")[0].group(1))
        lines.wait_for(r"proxy listening on", count=2)
        workers = [int(match.group(1)) for match in lines.wait_for(r"worker (\d+) started", count=2)]

        def send(count: int) -> None:
            for _ in range(count):  # a connection each, so both workers may take some
                with httpx.Client(trust_env=False, timeout=5.0) as client:
                    assert client.get(f"http://127.0.0.1:{port}/x").text == "ok"

        send(20)
        found = _scrape_until(metrics_url, lambda found: _requests_total(found) >= 20)
        assert _requests_total(found) == 20
        _scrape_until(metrics_url, lambda found: found.get(key("fastpipe_open_connections")) == 0.0)

        # Kill a worker that counted some: its counts are in its last snapshot, and they stay.
        directory = Path(psutil.Process(workers[0]).environ()[MULTIPROC_ENV])
        counted = {pid: json.loads((directory / f"{pid}.json").read_text())["families"] for pid in workers}
        busy = max(workers, key=lambda pid: sum(count for _, count in counted[pid]["fastpipe_requests_total"]))
        os.kill(busy, signal.SIGKILL)
        lines.wait_for(rf"worker {busy} killed by SIGKILL")
        [other] = [pid for pid in workers if pid != busy]
        names = {path.name for path in directory.iterdir()}  # (and maybe the replacement's already)
        assert f"{busy}.json" not in names and {f"{other}.json", "retired.json"} <= names
        assert _requests_total(parse(get(metrics_url).text)) == 20
        lines.wait_for(r"worker \d+ started", count=3)
        lines.wait_for(r"proxy listening on", count=3)
        send(5)
        found = _scrape_until(metrics_url, lambda found: _requests_total(found) >= 25)
        assert _requests_total(found) == 25
        assert found[key("fastpipe_open_connections")] == 0.0
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(20)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait(10)
        origin.shutdown()
        origin.server_close()
        assert supervisor.stderr is not None
        lines.join(5.0)
        supervisor.stderr.close()
    assert supervisor.returncode == 0
    assert re.search(r"worker \d+ exited with status 0", "".join(lines.lines))
    assert not directory.exists()  # the supervisor removed the snapshots' directory it made


def test_worker_exited_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = prepare_multiprocess(str(tmp_path / "multiproc"))
    pid = run_worker(directory, {"exchanges": [[200, 1.0, None]], "connections": 1, "tunnels": 0, "health": []})
    (Path(directory) / "retired.json").mkdir()  # the total cannot be replaced
    with caplog.at_level(logging.ERROR, logger="fastpipe.metrics"):
        worker_exited(pid, directory)
    assert f"cannot retire worker {pid}'s snapshot" in caplog.text
    # Its file stays, so its counts do (and, this once, its gauges).
    with serve_metrics("127.0.0.1", 0, multiprocess_dir=directory) as server:
        found = scrape(server)
    assert found[key("fastpipe_requests_total", route="chat", upstream="api", status_class="2xx")] == 1.0
    assert found[key("fastpipe_open_connections")] == 1.0
