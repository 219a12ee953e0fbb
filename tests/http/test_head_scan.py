"""Reading a head from its bytes, as the lean parsers do (llhttp with no per-header callback), agrees with
httptools' per-header callbacks: request heads in both builds (the C of ``head_scan.pxd`` through the
compiled ``RequestHead``, the pure-Python ``head_scan`` through the ``.py``), response heads in the source
twin and through the proxy. And the proxy, which gives each request whole to one of its two parsers,
forwards every request of a read that mixes heads for the lean parser and for the full one."""

from __future__ import annotations

import importlib.util
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
    HttpResponseParser,
)

import fastpipe.http.request_head as loaded_request_head
from fastpipe._backend import NO_EXTENSIONS, is_compiled
from fastpipe.http import head_scan
from fastpipe.http.headers import RESPONSE_KINDS
from fastpipe.http.limits import Limits

from ..reliability.hostile._drive import CORPUS
from ._proxy_support import MakeRecordingOrigin, StartProxy, parse_responses
from .test_request_version import send_in_pieces


def _source_request_head() -> Any:
    """request_head.py run as Python, whatever build the process loaded (its head_scan is the .py)."""
    spec = importlib.util.spec_from_file_location(
        "fastpipe.http._request_head_source", Path(loaded_request_head.__file__).with_name("request_head.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILDS = {"source": _source_request_head()}
if not NO_EXTENSIONS:
    assert is_compiled(loaded_request_head), "the compiled request path did not load"
    BUILDS["compiled"] = loaded_request_head

HEADS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /x?y=1 HTTP/1.1\r\nhost: a\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
    b"GET  /two-spaces HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A:   lead\r\nX-B: trail \t\r\nX-C:\r\nX-D: \r\nX-E:\tt\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX_Under: 1\r\nX.Dot: 2\r\n-: 3\r\nX-\xff: 4\r\n\r\n",
    b"GET / HTTP/1.1\r\nHOST: a\r\nCONTENT-LENGTH: 0\r\nX-FORWARDED-FOR: 1.2.3.4\r\nx-forwarded-proto: ftp\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Gone\r\nX-Gone: 1\r\nKeep-Alive: t=5\r\nTE: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Content-Length\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nHTTP2-Settings: x\r\n\r\n",
    b"GET http://h:81/p?q HTTP/1.1\r\nHost: a\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: \xc3\xa9t\xc3\xa9\r\nCookie: a=b; c=d\r\nX-Colon: a:b: c\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\nX: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
    b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a\x80 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    *(case.split(b"\r\n\r\n")[0] + b"\r\n\r\n" for case in CORPUS),
]


def mutations(seeds: list[bytes], count: int, seed: int, alphabet: bytes) -> list[bytes]:
    """Seeds with one byte changed, inserted or removed (a fixed seed: the same cases every run)."""
    chooser = random.Random(seed)
    made = []
    for _ in range(count):
        head = bytearray(chooser.choice(seeds))
        at = chooser.randrange(len(head))
        action = chooser.randrange(3)
        if action == 0:
            head[at] = chooser.choice(alphabet)
        elif action == 1:
            head.insert(at, chooser.choice(alphabet))
        else:
            del head[at]
        made.append(bytes(head))
    return made


CASES = HEADS + mutations(HEADS, 3000, 20261201, b" \t\r\n:_-aZ09\x00\x7f\xff,;=/")


def _by_name(parts: list[bytes] | None) -> list[tuple[bytes, bytes]] | None:
    """The forwarded fields in name order, those of one name in the order sent: the lean parser forwards
    fields it need not read before the others, and only the order within one name is significant (RFC
    9110 §5.3)."""
    if parts is None:
        return None
    assert parts[0] == b"" and all(parts[index] == b": " for index in range(2, len(parts), 4))
    fields = [(parts[index], parts[index + 2]) for index in range(1, len(parts), 4)]
    return sorted(fields, key=lambda field: field[0].lower())


def _state(head: Any) -> tuple[Any, ...]:
    return (
        head.target,
        _by_name(head.parts),
        head.host,
        head.xff,
        head.connection_names,
        head.transfer_encoding,
        head.content_length,
        head.upgrade,
        head.connection_upgrade,
        head.size,
        head.count,
    )


def _outcome(module: Any, feed: Callable[[], None], head: Any) -> tuple[Any, ...]:
    try:
        feed()
    except HttpParserCallbackError as error:
        cause = error.__context__
        if isinstance(cause, module.BadRequest):
            return ("refused", cause.status)
        raise
    except HttpParserUpgrade:
        pass
    except HttpParserError:
        return ("refused by llhttp",)
    return ("read", *_state(head))


def full_parser_reads(module: Any, data: bytes) -> tuple[Any, ...]:
    """What httptools' callbacks make of the head: the proxy's full parser."""
    head = module.RequestHead(Limits(max_header_count=8))
    completed = []

    class Callbacks:
        on_url = head.add_url
        on_header = head.add_header

        def on_headers_complete(self) -> None:
            completed.append(True)

    outcome = _outcome(module, lambda: HttpRequestParser(Callbacks()).feed_data(data), head)
    return outcome if completed or outcome[0] != "read" else ("incomplete",)


def lean_parser_reads(module: Any, data: bytes, end: int) -> tuple[Any, ...]:
    """What the lean parser and RequestHead.read make of the head: the proxy's lean parser."""
    head = module.RequestHead(Limits(max_header_count=8))
    completed = []

    class Callbacks:
        def on_headers_complete(self) -> None:
            head.read(data[:end])
            completed.append(True)

    outcome = _outcome(module, lambda: HttpRequestParser(Callbacks()).feed_data(data[:end]), head)
    return outcome if completed or outcome[0] != "read" else ("incomplete",)


@pytest.mark.parametrize("build", BUILDS)
def test_a_head_read_from_its_bytes_is_what_the_per_header_callbacks_collect(build: str) -> None:
    module = BUILDS[build]
    taken = 0
    for data in CASES:
        end = module.RequestHead(Limits()).lean_end(data, 0)
        if end < 0:
            continue
        taken += 1
        assert lean_parser_reads(module, data, end) == full_parser_reads(module, data), data
    assert taken > len(CASES) // 3, "too few heads were for the lean parser to prove anything"


@pytest.mark.parametrize("build", BUILDS)
def test_a_field_is_read_from_its_own_line_only(build: str) -> None:
    """A line without a colon (which llhttp refuses) is never read as part of the next line's name."""
    head = BUILDS[build].RequestHead(Limits())
    with pytest.raises(ValueError, match="not a head llhttp accepted"):
        head.read(b"GET / HTTP/1.1\r\nNo colon here\r\nX-Next: value\r\n\r\n")


@pytest.mark.parametrize("build", BUILDS)
def test_where_a_head_ends_is_what_the_source_twin_says_at_every_start(build: str) -> None:
    head = BUILDS[build].RequestHead(Limits())
    chooser = random.Random(7)
    for data in CASES:
        reads = data + chooser.choice(HEADS)  # a second head after it, as in a pipelined read
        for start in {0, 1, len(data) - 1, len(data), chooser.randrange(len(reads))}:
            assert head.lean_end(reads, start) == head_scan.lean_head_end(reads, start), (reads, start)


def test_the_lean_parser_takes_the_heads_it_may_and_no_other() -> None:
    pipelined = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    assert head_scan.lean_head_end(pipelined, 0) == pipelined.index(b"GET /2")
    assert head_scan.lean_head_end(pipelined, pipelined.index(b"GET /2")) == len(pipelined)
    assert head_scan.lean_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0) == -1  # not all here
    assert head_scan.lean_head_end(b"\r\nGET / HTTP/1.1\r\n\r\n", 0) == -1  # an empty line first
    assert head_scan.lean_head_end(b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 0) == -1  # a CR without LF
    for name in (b"Transfer-Encoding", b"transfer-encoding", b"TRANSFER-ENCODING"):
        assert head_scan.lean_head_end(b"POST / HTTP/1.1\r\n" + name + b": chunked\r\n\r\n", 0) == -1


# One read each: heads for the lean parser (bodiless, Content-Length bodies) around a chunked request,
# after which the full parser takes the rest of the read; the last read begins between messages again.
MIXED_READS = [
    b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\n"
    b"POST /2 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
    b"POST /3 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    b"GET /4 HTTP/1.1\r\nHost: t\r\n\r\n",
    b"POST /5 HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234",
    b"56789GET /6 HTTP/1.1\r\nHost: t\r\n\r\nGET /7 HTTP/1.1\r\nHost: t\r\nCon",
    b"nection: close\r\n\r\n",
]


def _answer_whole_requests() -> Callable[[Any, bytes], None]:
    """An origin's reply: 200 to each request once all of its body came (not at its head)."""
    parsers: dict[int, HttpRequestParser] = {}

    def reply(origin: Any, data: bytes) -> None:
        parser = parsers.get(id(origin))
        if parser is None:

            class Answer:
                def on_message_complete(self) -> None:
                    origin.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

            parser = parsers[id(origin)] = HttpRequestParser(Answer())
        parser.feed_data(data)

    return reply


async def test_every_request_of_reads_mixing_lean_and_full_heads_is_forwarded_whole(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    port, origins = await recording_origin(_answer_whole_requests())
    proxy = await start(port)
    answer = await send_in_pieces(proxy.port, MIXED_READS)
    assert [response.status for response in parse_responses(answer)] == [200] * 7
    upstream = b"".join(origin.data for origin in origins)
    # (in order per upstream connection; the pool may have used more than one)
    assert sorted(re.findall(rb"(?:GET|POST) (/\d) HTTP/1\.1\r\n", upstream)) == [b"/%d" % n for n in range(1, 8)]
    for body in (b"\r\n\r\nhello", b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n", b"\r\n\r\n0123456789"):
        assert body in upstream


RESPONSE_HEADS = [
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A:   lead\r\nX-B: trail \t\r\nX-C:\r\nX_Under: 1\r\nX.Dot: 2\r\nContent-Length: 2\r\n\r\n",
    b"\r\n\r\nHTTP/1.1 200 OK\r\nServer: after empty lines\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 204\r\nCONNECTION: keep-alive, X-Hop\r\nX-Hop: 1\r\nkeep-alive: timeout=5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nTransfer-Encoding: chunked\r\n\r\n",
]


def response_fields(data: bytes) -> list[tuple[bytes, bytes]]:
    fields: list[tuple[bytes, bytes]] = []

    class Callbacks:
        def on_header(self, name: bytes, value: bytes) -> None:
            fields.append((name, value))

    try:
        HttpResponseParser(Callbacks()).feed_data(data)
    except HttpParserError:
        pass  # a body that never comes: the head is all that matters here
    return fields


@pytest.mark.parametrize("data", RESPONSE_HEADS)
def test_a_response_head_read_from_its_bytes_is_what_the_per_header_callbacks_collect(data: bytes) -> None:
    parts = [b""]
    fields = head_scan.read_head(data, 0, parts, tuple(RESPONSE_KINDS), False, False)
    status_line = len(data) - len(data.lstrip(b"\r\n"))  # llhttp skips empty lines before a response
    assert fields[0] is None and fields[3] == data.index(b"\r\n\r\n", status_line) + 4
    read = [(parts[index], parts[index + 2]) for index in range(1, len(parts), 4)]
    read += [(fields[index], fields[index + 1]) for index in range(4, len(fields), 2)]
    expected = response_fields(data)
    assert sorted(read, key=lambda field: field[0].lower()) == sorted(expected, key=lambda field: field[0].lower())


async def test_the_proxy_forwards_response_fields_as_httptools_reads_them(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    """The compiled build's C reader on response heads: what the client gets is the origin's fields, less
    the hop-by-hop ones, whatever their spacing and case; and a head after empty lines keeps its body."""
    head = (
        b"\r\n\r\nHTTP/1.1 200 OK\r\nX-A:   lead\r\nX-B: trail \t\r\nX-C:\r\nX.Dot: 2\r\nDate: today\r\n"
        b"CONNECTION: X-Hop\r\nX-Hop: 1\r\ncontent-LENGTH: 5\r\n\r\n"
    )

    def reply(origin: Any, data: bytes) -> None:
        origin.transport.write(head + b"hello")

    port, _ = await recording_origin(reply)
    proxy = await start(port)
    answer = await send_in_pieces(proxy.port, [b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"])
    (response,) = parse_responses(answer)
    assert (response.status, response.body) == (200, b"hello")
    hop_by_hop = {b"connection", b"x-hop"}
    sent = [field for field in response_fields(head + b"hello") if field[0].lower() not in hop_by_hop]
    got = [field for field in response.headers if field[0].lower() != b"connection"]
    assert sorted(got, key=lambda field: field[0].lower()) == sorted(sent, key=lambda field: field[0].lower())


@pytest.mark.parametrize("build", BUILDS)
def test_a_content_length_is_read_as_a_number_or_refused_as_too_large(build: str) -> None:
    head = BUILDS[build].RequestHead(Limits())
    readings = [(b"0", 0), (b"05", 5), (b"7 \t", 7), (b"0" * 30 + b"9", 9), (b"9223372036854775807", 2**63 - 1)]
    for value, length in readings:
        head.reset()
        head.add_header(b"Content-Length", value)
        assert head.content_length == length, value
    for value in (b"9223372036854775808", b"18446744073709551615"):
        head.reset()
        with pytest.raises(BUILDS[build].BadRequest, match="Content-Length too large"):
            head.add_header(b"Content-Length", value)


def test_the_lean_parsers_run_where_the_request_path_is_compiled() -> None:
    """Compiled, the fields are read in C and the parsers call no Python per header; run as Python, the
    per-header callbacks are the faster way, and both sides use them."""
    import fastpipe.http.server as server
    import fastpipe.http.upstream as upstream

    compiled = is_compiled(server)
    assert is_compiled(upstream) is compiled and server._LEAN is compiled and upstream._LEAN is compiled
    # httptools asks llhttp for per-header callbacks exactly when the callbacks object has on_header
    assert hasattr(upstream.UpstreamConnection, "on_header") is not compiled
