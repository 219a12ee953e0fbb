"""The gateway's Prometheus metrics: records in, a real scrape of ``/metrics`` over HTTP on 127.0.0.1 out.

The multi-worker tests start real worker processes (``python -c``) that write into one multiprocess
directory, and read their sums back from the listener the supervisor would run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastpipe.gateway.metrics import (
    MULTIPROC_ENV,
    GatewayMetrics,
    MetricsServer,
    metrics_exposition,
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
LE = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0", "60.0", "120.0")
LE = (*LE, "300.0", "+Inf")
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
    with serve_metrics("127.0.0.1", 0, metrics.registry) as server:
        assert server.port > 0
        response = get(server.url)
        assert response.status_code == 200
        assert response.headers["content-type"] == CONTENT_TYPE
        assert int(response.headers["content-length"]) == len(response.content)
        assert parse(response.text) == expected
        assert response.content == metrics_exposition(metrics.registry)  # nothing changed in between
    assert expected[key("fastpipe_request_duration_seconds_bucket", route="chat", le="30.0")] == 4.0  # le is <=
    assert expected[key("fastpipe_request_duration_seconds_bucket", route="ws", le="300.0")] == 0.0


def test_metric_families_and_types() -> None:
    metrics = GatewayMetrics()
    metrics.exchange_ended(record(usage=Usage(1, 1)))
    metrics.upstream_health("api", S1, True)
    families = {
        family.name: family.type
        for family in text_string_to_metric_families(metrics_exposition(metrics.registry).decode())
    }
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
        # prometheus_client's creation times of the counters and histograms (not in the multiprocess sum)
        "fastpipe_requests_created": "gauge",
        "fastpipe_request_duration_seconds_created": "gauge",
        "fastpipe_ttfb_seconds_created": "gauge",
        "fastpipe_bytes_created": "gauge",
        "fastpipe_exchanges_ended_created": "gauge",
        "fastpipe_usage_tokens_created": "gauge",
    }


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
    found = parse(metrics_exposition(metrics.registry).decode())
    requests = {labels: value for (name, labels), value in found.items() if name == "fastpipe_requests_total"}
    assert requests == {key("", route="chat", status_class=status_class, upstream="api")[1]: 1.0}


def test_every_end_reason_passes_through_as_is() -> None:
    metrics = GatewayMetrics()
    reasons = (COMPLETE, CLIENT_GONE, UPSTREAM_ERROR, TIMEOUT, DRAINED, REJECTED, SHUTDOWN, UPGRADED)
    for count, reason in enumerate(reasons, 1):
        for _ in range(count):
            metrics.exchange_ended(record(end=reason))
    found = parse(metrics_exposition(metrics.registry).decode())
    ended = {labels: value for (name, labels), value in found.items() if name == "fastpipe_exchanges_ended_total"}
    assert ended == {key("", route="chat", reason=reason)[1]: float(n) for n, reason in enumerate(reasons, 1)}
    assert found[key("fastpipe_requests_total", route="chat", upstream="api", status_class="2xx")] == 36.0


def test_a_route_less_record_is_dash_for_route_and_upstream() -> None:
    metrics = GatewayMetrics()
    metrics.exchange_ended(record(route=None, upstream="api", status=404, end=REJECTED, usage=Usage(3, None)))
    found = parse(metrics_exposition(metrics.registry).decode())
    assert found[key("fastpipe_requests_total", route="-", upstream="-", status_class="4xx")] == 1.0
    assert found[key("fastpipe_usage_tokens_total", route="-", kind="input")] == 3.0
    assert not [labels for _, labels in found if ("route", "chat") in labels or ("upstream", "api") in labels]


def test_after_the_first_record_of_a_kind_no_labels_call(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = GatewayMetrics()
    first = record(usage=Usage(5, 6))
    metrics.exchange_ended(first)
    metrics.upstream_health("api", S1, True)

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("labels() called on the per-record path")

    for metric in (
        metrics.requests,
        metrics.duration,
        metrics.ttfb,
        metrics.bytes,
        metrics.ended,
        metrics.tokens,
        metrics.upstream_up,
    ):
        monkeypatch.setattr(metric, "labels", refused)
    for _ in range(3):  # same route, upstream, status and end; other sizes, times and usage
        metrics.exchange_ended(record(ttfb=0.5, duration=4.0, request_bytes=1, response_bytes=2, usage=Usage(1, 1)))
    metrics.upstream_health("api", S1, False)
    found = parse(metrics_exposition(metrics.registry).decode())
    assert found[key("fastpipe_requests_total", route="chat", upstream="api", status_class="2xx")] == 4.0
    assert found[key("fastpipe_request_duration_seconds_sum", route="chat")] == 14.0
    assert found[key("fastpipe_bytes_total", route="chat", direction="out")] == 1006.0
    assert found[key("fastpipe_usage_tokens_total", route="chat", kind="output")] == 9.0
    assert found[key("fastpipe_upstream_up", upstream="api", server=S1)] == 0.0
    with pytest.raises(AssertionError, match="labels"):  # a new kind does call it (the check is live)
        metrics.exchange_ended(record(status=503))


def test_two_instances_keep_apart() -> None:
    one, two = GatewayMetrics(), GatewayMetrics()
    one.exchange_ended(record())
    one.connection_opened()
    found = parse(metrics_exposition(two.registry).decode())
    assert found == {key("fastpipe_open_connections"): 0.0, key("fastpipe_open_tunnels"): 0.0}
    assert not one.multiprocess and not two.multiprocess


def test_only_metrics_is_served() -> None:
    metrics = GatewayMetrics()
    metrics.connection_opened()
    with serve_metrics("127.0.0.1", 0, metrics.registry) as server:
        base = f"http://127.0.0.1:{server.port}"
        for path in ("/", "/metrics/", "/metricsx", "/favicon.ico", "/Metrics", "/x/metrics"):
            response = get(base + path)
            assert response.status_code == 404, path
            assert response.headers["content-type"].startswith("text/plain")
        assert parse(get(base + "/metrics?name[]=x").text)[key("fastpipe_open_connections")] == 1.0
        head = get(base + "/metrics", "HEAD")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == CONTENT_TYPE
        assert int(head.headers["content-length"]) == len(metrics_exposition(metrics.registry))
        assert get(base + "/metrics", "POST").status_code == 501


def test_close_stops_listening_and_is_idempotent() -> None:
    metrics = GatewayMetrics()
    server = serve_metrics("127.0.0.1", 0, metrics.registry)
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
    with serve_metrics("127.0.0.1", port, GatewayMetrics().registry) as server:
        assert server.port == port
        assert get(f"http://127.0.0.1:{port}/metrics").status_code == 200


def test_serve_metrics_wants_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        serve_metrics("127.0.0.1", 0, GatewayMetrics().registry, multiprocess_dir=str(tmp_path))
    with pytest.raises(ValueError, match="needs"):
        serve_metrics("127.0.0.1", 0)


def test_the_variable_set_after_import_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))  # too late: prometheus_client is imported already
    with pytest.raises(RuntimeError, match="after prometheus_client was imported"):
        GatewayMetrics()


# --- Several workers ---------------------------------------------------------------------------------

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
            key("fastpipe_open_connections"): 3.0,  # livesum
            key("fastpipe_open_tunnels"): 1.0,
            key("fastpipe_upstream_up", upstream="api", server=S1): 1.0,
            key("fastpipe_upstream_up", upstream="api", server=S2): 0.0,  # livemin: one worker ejected it
        }
        worker_exited(second)  # the directory prepare_multiprocess returned
        assert scrape(server) == {
            **totals,  # the dead worker's counts stay in the sums
            key("fastpipe_open_connections"): 2.0,
            key("fastpipe_open_tunnels"): 1.0,
            key("fastpipe_upstream_up", upstream="api", server=S1): 1.0,
            key("fastpipe_upstream_up", upstream="api", server=S2): 1.0,
        }
        worker_exited(first, directory)
        assert scrape(server) == totals  # no live worker: no live gauge


def test_a_restarted_supervisor_starts_from_zero(tmp_path: Path) -> None:
    directory = str(tmp_path / "multiproc")
    assert prepare_multiprocess(directory) == directory
    run_worker(directory, {"exchanges": [[200, 1.0, 1]], "connections": 1, "tunnels": 0, "health": []})
    (tmp_path / "multiproc" / "notes.txt").write_text("not ours")
    assert prepare_multiprocess(directory) == directory  # the next run: the old *.db files go
    assert sorted(os.listdir(directory)) == ["notes.txt"]
    with serve_metrics("127.0.0.1", 0, multiprocess_dir=directory) as server:
        assert scrape(server) == {}


def test_prepare_multiprocess_makes_a_fresh_directory() -> None:
    made = prepare_multiprocess()
    try:
        assert os.path.isabs(made) and os.path.isdir(made) and os.listdir(made) == []
        other = prepare_multiprocess()
        assert other != made
        shutil.rmtree(other)
    finally:
        shutil.rmtree(made)
