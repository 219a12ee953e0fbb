"""The gateway's Prometheus metrics: what the proxy counts, and the ``/metrics`` listener that shows it.

The proxy holds one ``GatewayMetrics`` per process and calls it: ``exchange_ended(record)`` once per
finished exchange, ``connection_opened``/``connection_closed`` per client connection,
``tunnel_opened``/``tunnel_closed`` per WebSocket tunnel, and ``upstream_health(group, server_url, up)``
when a server is ejected or back. ``serve_metrics(host, port, metrics)`` answers ``GET /metrics``
in the Prometheus text format (version 0.0.4) from a daemon thread.

==============================================  ====================================================
``fastpipe_requests_total``                     exchanges by ``route``, ``upstream``, ``status_class``
                                                (``1xx``..``5xx`` as the client got it; ``none``: it got
                                                no status)
``fastpipe_request_duration_seconds``           histogram by ``route``: request head to the end
``fastpipe_ttfb_seconds``                       histogram by ``route``: request head to the first response
                                                byte (exchanges that sent none are not observed)
``fastpipe_bytes_total``                        body bytes by ``route``, ``direction`` (``in``: request,
                                                ``out``: response)
``fastpipe_exchanges_ended_total``              exchanges by ``route``, ``reason`` (the record's ``end``)
``fastpipe_usage_tokens_total``                 tokens by ``route``, ``kind`` (``input``/``output``), as the
                                                provider reported them on a route with ``usage``
``fastpipe_open_connections``                   client connections open now
``fastpipe_open_tunnels``                       WebSocket tunnels open now
``fastpipe_upstream_up``                        by ``upstream``, ``server``: 1 in service, 0 ejected
==============================================  ====================================================

An exchange that never got a route (a bad request, no route matched) has route ``-`` and upstream ``-``.
Both histograms share buckets from 5 ms to 5 minutes, for LLM streams as much as for quick calls.

**Written by hand, for cost.** prometheus_client cost 4-6 µs per ``exchange_ended`` in one process and
10-17 µs in a worker (its multiprocess mode writes each value to a memory-mapped file), against ~25 µs
the proxy spends on a small request. Here the numbers are plain ints and floats in lists: the first
exchange of a kind (route, upstream, status, end) looks its lists up and keeps them, a later one adds to
them and finds each histogram bucket by bisection; requests, end reasons and bytes are summed over the
kinds when read. ``exchange_ended`` in µs, best of 3 runs of 7 timeit repeats each, all in one run
(CPython 3.11, x86-64, ``timeit`` overhead taken off):

=====================  ===================  ===================  ===========  ===========
record                 prometheus_client    prometheus_client    by hand      by hand
                       one process          worker               one process  worker
=====================  ===================  ===================  ===========  ===========
plain GET              4.0                  10.7                 0.65         0.67
LLM stream             4.9                  13.0                 0.65         0.65
stream with usage      6.4                  16.5                 0.77         0.84
rejected (no route)    4.0                  10.4                 0.63         0.64
=====================  ===================  ===================  ===========  ===========

A worker also writes its snapshot (below), at most once a second: 0.3-0.5 ms on the event loop here
for 10 routes (5 kB of JSON, about half of it the file system's), under 0.05% of the loop's time. A scrape
formats the text on the listener's thread, off the proxy's path.

**Several workers** (``fastpipe proxy --workers N``) share a directory:

1. The supervisor calls ``prepare_multiprocess()`` before it starts any worker: a fresh directory (or the
   one given, emptied of the files an earlier run left there).
2. Each worker starts with ``PROMETHEUS_MULTIPROC_DIR`` (``MULTIPROC_ENV``) naming it. Its
   ``GatewayMetrics`` then writes a snapshot of all its numbers to ``<pid>.json`` there: once when made,
   then at most once a second while they change, and at exit. Each write is a new file renamed over the
   old one, so a reader sees the old snapshot or the new one, never half of one.
3. The supervisor serves ``serve_metrics(host, port, multiprocess_dir=directory)``: each scrape reads the
   snapshots and shows counters and histograms summed over the workers and over ``retired.json``, what the
   workers that exited had counted (a total does not drop when a worker is replaced). A file that does not
   parse as a snapshot is skipped (and logged once).
4. When a worker exits, the supervisor calls ``worker_exited(pid)``: its last snapshot's counters and
   histograms are added to ``retired.json`` and the snapshot is removed, so its gauges leave the sums.
5. When the supervisor stops it calls ``cleanup_multiprocess(directory)``.

The sums lag the workers by a second at most (``SNAPSHOT_INTERVAL``, plus the loop's delay if busy). A
worker killed at once (SIGKILL) loses what it counted since its last snapshot; one that exits normally
writes a last one.

The timer is the worker's event loop (``loop.call_later``, armed by the first change after a write: a
process that counts nothing writes nothing, and a proxy, which reports its servers' health each second,
writes about once a second), not a thread: the snapshot is then taken in the thread that changes the
numbers, consistent without a lock on the per-exchange path, and a worker runs no thread for it. A
process that counts with no running event loop writes when the ``GatewayMetrics`` is made and at exit.

The gauges are "live": only workers still running count. ``fastpipe_open_connections`` and
``fastpipe_open_tunnels`` are summed. ``fastpipe_upstream_up`` is the **minimum** over the workers that
reported the server: each worker keeps its own health record, and one may have ejected a server that
another has not yet tried. The minimum stays a readable 0 or 1, and 0 means "ejected by at least one
worker", the earliest sign that a server fails; a sum would count workers and change meaning with N, and
a maximum would hide a failing server until every worker had hit it.

In that mode a process holds one ``GatewayMetrics`` (two would write the same file). Alone (no
variable), each ``GatewayMetrics`` is on its own, so tests may make several.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import weakref
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import AF_INET, AF_INET6
from socketserver import TCPServer
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Union

if TYPE_CHECKING:
    from ..http.record import ExchangeRecord

__all__ = (
    "BUCKETS",
    "CONTENT_TYPE",
    "MULTIPROC_ENV",
    "SNAPSHOT_INTERVAL",
    "Exposition",
    "GatewayMetrics",
    "MetricsServer",
    "cleanup_multiprocess",
    "prepare_multiprocess",
    "serve_metrics",
    "worker_exited",
)

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"  # the workers' shared directory (the name is historical)
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
NO_LABEL: Final = "-"  # the route and upstream of an exchange that never got a route
SNAPSHOT_INTERVAL: Final = 1.0  # seconds: a worker writes its snapshot at most this often

# Seconds, for both histograms: a quick call (5 ms) to a long LLM stream (5 minutes).
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_BOUNDS: Final = list(BUCKETS)  # bisect_left(_BOUNDS, v): the first bucket with v <= its bound; past it, +Inf
_LE: Final = (*(repr(float(bound)) for bound in BUCKETS), "+Inf")
_HISTOGRAM_SIZE: Final = len(BUCKETS) + 2  # a histogram's list: one count per bucket, +Inf's, then the sum

_log = logging.getLogger("fastpipe.metrics")

Number = Union[int, float]
Labels = tuple[str, ...]
# A family's series by label values: a number, or for a histogram [count per bucket..., count above, sum].
Series = dict[Labels, Any]


class _Family(NamedTuple):
    name: str  # as the samples are named (a counter's ends in _total)
    type: str  # counter, histogram or gauge
    help: str
    labels: Labels
    workers: str  # how the supervisor combines its workers: "sum" (exited ones included), "livesum", "livemin"


_REQUESTS: Final = _Family(
    "fastpipe_requests_total",
    "counter",
    "Exchanges ended, by the status class the client got",
    ("route", "upstream", "status_class"),
    "sum",
)
_DURATION: Final = _Family(
    "fastpipe_request_duration_seconds",
    "histogram",
    "From the end of the request head to the end of the exchange",
    ("route",),
    "sum",
)
_TTFB: Final = _Family(
    "fastpipe_ttfb_seconds",
    "histogram",
    "From the end of the request head to the first response byte sent",
    ("route",),
    "sum",
)
_BYTES: Final = _Family(
    "fastpipe_bytes_total", "counter", "Body bytes: in from the client, out to it", ("route", "direction"), "sum"
)
_ENDED: Final = _Family(
    "fastpipe_exchanges_ended_total", "counter", "Exchanges ended, by why they ended", ("route", "reason"), "sum"
)
_TOKENS: Final = _Family(
    "fastpipe_usage_tokens_total", "counter", "Tokens the providers reported", ("route", "kind"), "sum"
)
_CONNECTIONS: Final = _Family("fastpipe_open_connections", "gauge", "Client connections open", (), "livesum")
_TUNNELS: Final = _Family("fastpipe_open_tunnels", "gauge", "WebSocket tunnels open", (), "livesum")
_UPSTREAM_UP: Final = _Family(
    "fastpipe_upstream_up",
    "gauge",
    "1 when the server is in service, 0 when ejected (the minimum over workers)",
    ("upstream", "server"),
    "livemin",
)
_FAMILIES: Final = (_REQUESTS, _DURATION, _TTFB, _BYTES, _ENDED, _TOKENS, _CONNECTIONS, _TUNNELS, _UPSTREAM_UP)
_BY_NAME: Final = {family.name: family for family in _FAMILIES}

Values = dict[str, Series]  # by family name

# What the first exchange of a kind looks up and the later ones add to: its own [exchanges, bytes in,
# bytes out], and its route's duration and ttfb histograms.
_Kind = tuple[list[int], list[Number], list[Number]]


def _status_class(status: int | None) -> str:
    return "none" if status is None else f"{status // 100}xx"


# --- The text format ---------------------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: Number) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)  # the shortest text that reads back as the same float, e.g. 0.25, 1e-05, 3e+20


def _labels(names: Labels, values: Labels) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)) + "}"


def _samples(family: _Family, series: Series) -> Iterator[tuple[str, Labels, Labels, Number]]:
    """A family's samples: (sample name, label names, label values, value), series sorted by labels."""
    for values in sorted(series):
        value = series[values]
        if family.type != "histogram":
            yield family.name, family.labels, values, value
            continue
        names = (*family.labels, "le")
        cumulative = 0
        for le, count in zip(_LE, value[:-1], strict=True):
            cumulative += count
            yield f"{family.name}_bucket", names, (*values, le), cumulative
        yield f"{family.name}_count", family.labels, values, cumulative
        yield f"{family.name}_sum", family.labels, values, value[-1]


def _render(values: Mapping[str, Series]) -> bytes:
    lines: list[str] = []
    for family in _FAMILIES:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for name, label_names, label_values, value in _samples(family, values.get(family.name, {})):
            lines.append(f"{name}{_labels(label_names, label_values)} {_number(value)}")
    lines.append("")
    return "\n".join(lines).encode("utf-8", "backslashreplace")


class Exposition:
    """What ``serve_metrics`` shows: ``render()`` gives the text format."""

    def _values(self) -> Values:
        raise NotImplementedError

    def render(self) -> bytes:
        """All metrics in the Prometheus text format (``CONTENT_TYPE``)."""
        return _render(self._values())

    def get_sample_value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One sample's value by its name (``x_total``, ``x_bucket``, ``x_sum``...) and labels, or None."""
        wanted = dict(labels or {})
        values = self._values()
        for family in _FAMILIES:
            if not name.startswith(family.name):
                continue
            for sample, label_names, label_values, value in _samples(family, values.get(family.name, {})):
                if sample == name and dict(zip(label_names, label_values, strict=True)) == wanted:
                    return float(value)
        return None


# --- One process's numbers ---------------------------------------------------------------------------


class GatewayMetrics(Exposition):
    """The proxy's counters, histograms and gauges; one per process, changed from the event loop's thread
    (a ``/metrics`` thread may read them meanwhile)."""

    def __init__(self) -> None:
        # Each series is a list (one number, or a histogram's), so a kind can keep it and add to it. A kind
        # (route, upstream, status, end) has its own [exchanges, bytes in, bytes out]: the requests, ended
        # and bytes series are sums over kinds, added up when read.
        self._kinds: dict[tuple[str | None, str | None, int | None, str], _Kind] = {}
        self._kind_labels: list[tuple[Labels, Labels, str, list[int]]] = []  # requests', ended's, the route
        self._duration: dict[str, list[Number]] = {}  # by route label
        self._ttfb: dict[str, list[Number]] = {}
        self._tokens: dict[str, list[int]] = {}  # by route label: [input, output]
        self._tokens_of_route: dict[str | None, list[int]] = {}  # the same lists by record.route
        self._up: Series = {}  # by (upstream, server): 1 or 0
        self._connections = 0
        self._tunnels = 0
        directory = os.environ.get(MULTIPROC_ENV) or None
        if directory is not None and not os.path.isdir(directory):
            raise ValueError(f"{MULTIPROC_ENV}={directory!r} is not a directory")
        self._directory = directory
        # False when a change should arm the snapshot timer; always True alone (no snapshot to write).
        self._armed = directory is None
        if directory is not None:
            self._failed_write = False
            self._write_snapshot()  # this worker counts in the sums (gauges at 0) from now
            myself = weakref.ref(self)
            atexit.register(_write_at_exit, myself)

    @property
    def multiprocess(self) -> bool:
        """Whether this process writes snapshots for a supervisor (``PROMETHEUS_MULTIPROC_DIR`` is set)."""
        return self._directory is not None

    def exchange_ended(self, record: ExchangeRecord) -> None:
        """Count one finished exchange (from the event loop's thread)."""
        kind = self._kinds.get((record.route, record.upstream, record.status, record.end))
        if kind is None:
            kind = self._kind_of(record)
        counts, duration, ttfb = kind
        counts[0] += 1
        counts[1] += record.request_bytes
        counts[2] += record.response_bytes
        seconds = record.duration
        duration[bisect_left(_BOUNDS, seconds)] += 1
        duration[-1] += seconds
        first_byte = record.ttfb
        if first_byte is not None:
            ttfb[bisect_left(_BOUNDS, first_byte)] += 1
            ttfb[-1] += first_byte
        usage = record.usage
        if usage is not None:
            # Apart, so a route without usage capture shows no token series at all.
            tokens = self._tokens_of_route.get(record.route)
            if tokens is None:
                tokens = self._tokens_of(record.route)
            if usage.input_tokens is not None:
                tokens[0] += usage.input_tokens
            if usage.output_tokens is not None:
                tokens[1] += usage.output_tokens
        if not self._armed:
            self._arm()

    def _kind_of(self, record: ExchangeRecord) -> _Kind:
        route = NO_LABEL if record.route is None else record.route
        upstream = NO_LABEL if record.upstream is None or record.route is None else record.upstream
        counts = [0, 0, 0]
        # setdefault: a route named "-" and no route share their histograms.
        kind: _Kind = (
            counts,
            self._duration.setdefault(route, [0] * (_HISTOGRAM_SIZE - 1) + [0.0]),
            self._ttfb.setdefault(route, [0] * (_HISTOGRAM_SIZE - 1) + [0.0]),
        )
        self._kind_labels.append(((route, upstream, _status_class(record.status)), (route, record.end), route, counts))
        self._kinds[(record.route, record.upstream, record.status, record.end)] = kind
        return kind

    def _tokens_of(self, route_name: str | None) -> list[int]:
        route = NO_LABEL if route_name is None else route_name
        tokens = self._tokens_of_route[route_name] = self._tokens.setdefault(route, [0, 0])
        return tokens

    def connection_opened(self) -> None:
        self._connections += 1
        if not self._armed:
            self._arm()

    def connection_closed(self) -> None:
        self._connections -= 1
        if not self._armed:
            self._arm()

    def tunnel_opened(self) -> None:
        self._tunnels += 1
        if not self._armed:
            self._arm()

    def tunnel_closed(self) -> None:
        self._tunnels -= 1
        if not self._armed:
            self._arm()

    def upstream_health(self, upstream: str, server: str, up: bool) -> None:
        """Report a server in service (``up``) or ejected; ``server`` is its URL as configured."""
        self._up[(upstream, server)] = 1 if up else 0
        if not self._armed:
            self._arm()

    def _values(self) -> Values:
        # Each copy() and list() is one C call, whole under the GIL: safe while the loop's thread adds.
        requests: Series = {}
        ended: Series = {}
        transferred: Series = {}
        for requests_labels, ended_labels, route, cell in self._kind_labels.copy():
            exchanges, bytes_in, bytes_out = cell
            requests[requests_labels] = requests.get(requests_labels, 0) + exchanges
            ended[ended_labels] = ended.get(ended_labels, 0) + exchanges
            transferred[(route, "in")] = transferred.get((route, "in"), 0) + bytes_in
            transferred[(route, "out")] = transferred.get((route, "out"), 0) + bytes_out
        tokens: Series = {}
        for route, (tokens_in, tokens_out) in self._tokens.copy().items():
            tokens[(route, "input")] = tokens_in
            tokens[(route, "output")] = tokens_out
        return {
            _REQUESTS.name: requests,
            _DURATION.name: {(route,): list(cell) for route, cell in self._duration.copy().items()},
            _TTFB.name: {(route,): list(cell) for route, cell in self._ttfb.copy().items()},
            _BYTES.name: transferred,
            _ENDED.name: ended,
            _TOKENS.name: tokens,
            _CONNECTIONS.name: {(): self._connections},
            _TUNNELS.name: {(): self._tunnels},
            _UPSTREAM_UP.name: self._up.copy(),
        }

    # --- The snapshot a worker writes ---

    def _arm(self) -> None:
        self._armed = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop to time the writes: the snapshot at exit has it all
        loop.call_later(SNAPSHOT_INTERVAL, self._snapshot_due)

    def _snapshot_due(self) -> None:
        self._armed = False  # the next change arms the timer again
        self._write_snapshot()

    def _write_snapshot(self) -> None:
        directory = self._directory
        assert directory is not None
        try:
            _write_atomically(directory, f"{os.getpid()}.json", _snapshot_text(self._values()))
        except OSError as error:
            if not self._failed_write:  # once: the next writes would most likely fail alike
                self._failed_write = True
                _log.warning("metrics: cannot write this worker's snapshot in %s: %s", directory, error)


def _write_at_exit(metrics: weakref.ref[GatewayMetrics]) -> None:
    alive = metrics()
    if alive is not None:
        alive._write_snapshot()


def _snapshot_text(values: Values) -> str:
    """``{"families": {name: [[[label value, ...], value], ...]}}``; a histogram's value is its list."""
    families = {name: list(series.items()) for name, series in values.items()}
    return json.dumps({"families": families}, separators=(",", ":"))


def _write_atomically(directory: str, name: str, text: str) -> None:
    """Write ``directory/name`` whole or not at all: a temporary file first, renamed over it."""
    temporary = os.path.join(directory, f".{name}.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, os.path.join(directory, name))


# --- Several workers: the supervisor's side ----------------------------------------------------------

_OURS: Final = re.compile(r"(?:\d+|retired)\.json|\.(?:\d+|retired)\.json\.tmp")
_WORKER_FILE: Final = re.compile(r"(\d+)\.json")
_RETIRED: Final = "retired.json"

_prepared: list[str] = []  # the directory prepare_multiprocess made or emptied last, for worker_exited
_created: set[str] = set()  # the directories prepare_multiprocess made (cleanup_multiprocess removes them)
_files_lock = threading.Lock()  # a scrape's reads against worker_exited's fold (both in the supervisor)
_bad_files: set[str] = set()  # the unreadable snapshots logged already


def prepare_multiprocess(directory: str | None = None) -> str:
    """The directory the workers write their snapshots in: a new temporary one, or ``directory`` (created
    if missing) emptied of the snapshots an earlier run left. Call it before starting any worker, start
    them with ``PROMETHEUS_MULTIPROC_DIR`` set to the path returned, and call ``cleanup_multiprocess`` with
    it at the end."""
    if directory is None:
        directory = os.path.abspath(tempfile.mkdtemp(prefix="fastpipe-metrics-"))
        _created.add(directory)
    else:
        directory = os.path.abspath(directory)
        if not os.path.isdir(directory):
            os.makedirs(directory)
            _created.add(directory)
        _remove_ours(directory)
    _prepared[:] = [directory]
    return directory


def cleanup_multiprocess(directory: str) -> None:
    """The supervisor is done: remove ``directory`` if ``prepare_multiprocess`` made it, else only the
    snapshots in it."""
    directory = os.path.abspath(directory)
    if directory in _created:
        _created.discard(directory)
        shutil.rmtree(directory, ignore_errors=True)
    elif os.path.isdir(directory):
        _remove_ours(directory)
    if _prepared == [directory]:
        _prepared.clear()


def _remove_ours(directory: str) -> None:
    for name in os.listdir(directory):
        if _OURS.fullmatch(name):
            try:
                os.remove(os.path.join(directory, name))
            except FileNotFoundError:
                pass


def worker_exited(pid: int, directory: str | None = None) -> None:
    """A worker exited: keep its counters and histograms in the sums (``retired.json``), drop its gauges.

    ``directory`` defaults to the one ``prepare_multiprocess`` returned last, then to
    ``PROMETHEUS_MULTIPROC_DIR``; with neither there is nothing to do.
    """
    if directory is None:
        directory = _prepared[0] if _prepared else os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    path = os.path.join(directory, f"{pid}.json")
    with _files_lock:  # a scrape sees the worker in its file or in retired.json, never both or neither
        try:
            last = _read_snapshot(path)
            if last is not None:
                retired = _read_snapshot(os.path.join(directory, _RETIRED)) or {}
                _write_atomically(directory, _RETIRED, _snapshot_text(_combine([retired, last], live=[])))
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as error:  # the supervisor goes on; the worker's file stays, counts and gauges
            _log.error("metrics: cannot retire worker %d's snapshot in %s: %s", pid, directory, error)


class _WorkerSum(Exposition):
    """The sum over the snapshots of a multiprocess directory, read afresh at each scrape."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _values(self) -> Values:
        live: list[Values] = []
        with _files_lock:
            retired = _read_snapshot(os.path.join(self.directory, _RETIRED)) or {}
            for name in sorted(os.listdir(self.directory)):
                if _WORKER_FILE.fullmatch(name):
                    snapshot = _read_snapshot(os.path.join(self.directory, name))
                    if snapshot is not None:
                        live.append(snapshot)
        return _combine([retired, *live], live)


def _combine(counted: list[Values], live: list[Values]) -> Values:
    """Counters and histograms summed over ``counted``; gauges summed or least over ``live``."""
    combined: Values = {}
    for family in _FAMILIES:
        series: Series = {}
        if family.workers == "sum":
            for snapshot in counted:
                for labels, value in snapshot.get(family.name, {}).items():
                    before = series.get(labels)
                    if before is None:
                        series[labels] = list(value) if isinstance(value, list) else value
                    elif isinstance(value, list):
                        series[labels] = [a + b for a, b in zip(before, value, strict=True)]
                    else:
                        series[labels] = before + value
        else:
            pick = min if family.workers == "livemin" else None
            for snapshot in live:
                for labels, value in snapshot.get(family.name, {}).items():
                    before = series.get(labels)
                    if before is None:
                        series[labels] = value
                    else:
                        series[labels] = pick(before, value) if pick is not None else before + value
        if series:
            combined[family.name] = series
    return combined


def _read_snapshot(path: str) -> Values | None:
    """A snapshot file's families, or None when it is missing or not a whole, well-formed snapshot."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        _bad_file(path, str(error))
        return None
    try:
        return _parse_snapshot(json.loads(text))
    except (ValueError, TypeError) as error:
        _bad_file(path, str(error))
        return None


def _parse_snapshot(data: Any) -> Values:
    if not isinstance(data, dict) or not isinstance(data.get("families"), dict):
        raise ValueError("not a snapshot")
    parsed: Values = {}
    for name, pairs in data["families"].items():
        family = _BY_NAME.get(name)
        if family is None:
            continue  # a family this version does not know: not shown
        if not isinstance(pairs, list):
            raise ValueError(f"{name}: not a list of series")
        series: Series = {}
        parsed[name] = series
        for pair in pairs:
            labels, value = pair  # TypeError or ValueError unless a pair
            if (
                not isinstance(labels, list)
                or len(labels) != len(family.labels)
                or not all(isinstance(label, str) for label in labels)
            ):
                raise ValueError(f"{name}: bad labels {labels!r}")
            if family.type == "histogram":
                if (
                    not isinstance(value, list)
                    or len(value) != _HISTOGRAM_SIZE
                    or not all(_is_number(number) for number in value)
                ):
                    raise ValueError(f"{name}: bad histogram {value!r}")
            elif not _is_number(value):
                raise ValueError(f"{name}: bad value {value!r}")
            series[tuple(labels)] = value
    return parsed


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bad_file(path: str, why: str) -> None:
    if path not in _bad_files:
        _bad_files.add(path)
        _log.warning("metrics: skipping %s, not a whole snapshot: %s", path, why)


# --- The listener ------------------------------------------------------------------------------------


class MetricsServer:
    """A ``/metrics`` listener on a daemon thread; ``port`` is the port bound, ``close()`` stops it."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._closed = False
        self.host = str(server.server_address[0])
        self.port = int(server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop listening and wait (a second at most) for the thread; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(1.0)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve_metrics(
    host: str, port: int, metrics: Exposition | None = None, *, multiprocess_dir: str | None = None
) -> MetricsServer:
    """Answer ``GET /metrics`` on ``host:port`` (port 0: any free port) from a daemon thread.

    It shows ``metrics`` (one process: its ``GatewayMetrics``), or with ``multiprocess_dir`` the sum
    of the workers writing there (read afresh at each scrape). Any other path is 404.
    """
    if multiprocess_dir is not None:
        if metrics is not None:
            raise ValueError("serve_metrics shows one process's metrics or a multiprocess directory, not both")
        metrics = _WorkerSum(multiprocess_dir)
    elif metrics is None:
        raise ValueError("serve_metrics needs a process's metrics or a multiprocess directory")
    host = host.removeprefix("[").removesuffix("]")

    class Server(ThreadingHTTPServer):
        address_family = AF_INET6 if ":" in host else AF_INET
        daemon_threads = True

        def server_bind(self) -> None:
            TCPServer.server_bind(self)  # without HTTPServer's reverse DNS lookup of the host
            self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    server = Server((host, port), _handler(metrics))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="fastpipe-metrics", daemon=True
    )
    thread.start()
    return MetricsServer(server, thread)


def _handler(metrics: Exposition) -> type[BaseHTTPRequestHandler]:
    class MetricsHandler(BaseHTTPRequestHandler):
        server_version = "fastpipe-metrics"
        timeout = 30  # seconds a connection may take to send its request

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _answer(self, *, body: bool) -> None:
            if self.path.partition("?")[0] != "/metrics":
                self._send(404, "text/plain; charset=utf-8", b"not found; try /metrics\n", body)
                return
            try:
                text = metrics.render()
            except Exception:
                _log.exception("metrics: the exposition failed")
                self._send(500, "text/plain; charset=utf-8", b"metrics failed; see the log\n", body)
                return
            self._send(200, CONTENT_TYPE, text, body)

        def _send(self, status: int, content_type: str, payload: bytes, body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            _log.debug("metrics: %s %s", self.address_string(), format % args)

    return MetricsHandler
