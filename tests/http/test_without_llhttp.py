"""What the compiled request path reads without llhttp: plain heads and whole chunks.

Every head either build calls plain is one httptools accepts and reads the same (method or status,
keep-alive, that Content-Length, no upgrade), and every piece called whole chunks leaves httptools between
two chunks with exactly their data read, over the fuzz corpus and thousands of mutations; the C and the
source twin agree on every case; and through the proxy, the steps taken instead of llhttp's callbacks end
exchanges, refuse requests, reuse connections and relay chunked bodies as the callbacks do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser, HttpResponseParser

import fastpipe.http.upstream as loaded_upstream
from fastpipe._backend import NO_EXTENSIONS, is_compiled
from fastpipe.http import head_scan
from fastpipe.http.limits import Limits
from fastpipe.http.upstream import whole_chunks

from ._proxy_support import MakeRecordingOrigin, StartProxy, parse_responses
from .test_head_scan import BUILDS, CASES, mutations, response_fields
from .test_request_version import send_in_pieces

PLAIN_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n",
    b"PUT /p HTTP/1.0\r\ncontent-length: 0\r\n\r\n",
    b"GET /a/b?c=d&e=%20f HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: curl/8.5\r\nAccept: */*\r\n\r\n",
    b"HEAD /~u/;p=1 HTTP/1.0\r\nX_Under: 1\r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n",
    b"OPTIONS /'()*+,$!@:= HTTP/1.1\r\nHost: a\r\nAccept: text/html, */*;q=0.8\r\n\r\n",
    b"POST /no-body HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
    b'DELETE /x HTTP/1.1\r\nHost: a\r\nCookie: a=b; c="d"\r\nX: {json} <tag> \\ ^ ` |\r\n\r\n',
    b"PUT /p HTTP/1.1\r\nhost: a\r\nkeep-alive: 5\r\nTE: trailers\r\n\r\n",
    b"PATCH /p HTTP/1.1\r\nHost: a\r\nUpgrade-Insecure-Requests: 1\r\nConnection-Id: 7\r\n\r\n",
]
ALPHABET = b' \t\r\n:_-aZ09\x00\x7f\x80\xff,;=/?#%"<>\\^`{|}[]'


REQUEST_CASES = CASES + PLAIN_REQUESTS + mutations(PLAIN_REQUESTS, 4000, 20261201, ALPHABET)


def httptools_request(head: bytes) -> tuple[bytes, bool, str, int] | None:
    """(method, keep-alive, version, Content-Length) of a request head httptools reads from ``head``, and
    then, fed a body of that length, ends the message with; None if it refuses it or asks for an upgrade."""
    seen: dict[str, Any] = {"body": 0, "length": 0}

    class Callbacks:
        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() == b"content-length":
                seen["length"] = int(value)

        def on_headers_complete(self) -> None:
            seen["head"] = (parser.get_method(), parser.should_keep_alive(), parser.get_http_version())

        def on_body(self, body: bytes) -> None:
            seen["body"] += len(body)

        def on_message_complete(self) -> None:
            seen["complete"] = True

    parser = HttpRequestParser(Callbacks())
    try:
        parser.feed_data(head)
        if "head" in seen and 0 < seen["length"] <= 1 << 16:
            parser.feed_data(b"x" * seen["length"])
    except (HttpParserError, HttpParserUpgrade):
        return None
    if "head" not in seen or ("complete" not in seen and seen["length"] <= 1 << 16):
        return None
    assert seen["body"] == (seen["length"] if seen["length"] <= 1 << 16 else 0)
    method, keep_alive, version = seen["head"]
    return method, keep_alive, version, seen["length"]


@pytest.mark.parametrize("build", BUILDS)
def test_a_plain_request_head_is_one_httptools_reads_the_same(build: str) -> None:
    module = BUILDS[build]
    head = module.RequestHead(Limits())
    plain_count = with_body = 0
    for data in REQUEST_CASES:
        end = head.lean_end(data, 0)
        if end < 0:
            continue
        plain = head.plain_request(data, 0, end)
        assert plain == head_scan.plain_request(data, 0, end), data  # the C agrees with the twin
        if plain is None:
            continue
        plain_count += 1
        read = httptools_request(data[:end])
        assert read is not None, f"plain, but httptools does not read it whole: {data!r}"
        method, keep_alive, version, length = read
        assert (method, keep_alive) == plain and version in ("1.0", "1.1"), data
        # the body the proxy will count is the one llhttp would
        head.reset()
        try:
            head.read(data[:end])
        except module.BadRequest:
            continue  # refused before any body is read (too many fields, a length too large)
        assert max(head.content_length, 0) == length, data
        with_body += length > 0
    assert plain_count > 1000 and with_body > 20, "too few plain heads to prove anything"


@pytest.mark.parametrize("build", BUILDS)
def test_heads_llhttp_must_judge_are_not_plain(build: str) -> None:
    head = BUILDS[build].RequestHead(Limits())
    judged = [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 \r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1234567890123456789\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",  # keep-alive is llhttp's to say
        b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",  # absolute form
        b"GET /#frag HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /\x80 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n",  # obs-text
        b"GET / HTTP/1.1\r\nX.Dot: 1\r\n\r\n",
        b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"PROPFIND / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    ]
    for data in judged:
        assert head.plain_request(data, 0, len(data)) is None, data
        assert head_scan.plain_request(data, 0, len(data)) is None, data


PLAIN_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nServer: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 204 \r\ncontent-length: 0\r\nCONNECTION: Keep-Alive\r\nX_Under:\t1\t\r\n\r\n",
    b"HTTP/1.1 599 x\ty\r\nSet-Cookie: a=1; Path=/\r\nContent-Length: 123456789012345678\r\n\r\n",
    b"HTTP/1.1 302 Found\r\nLocation: /next?a=b\r\nContent-Length: 5\r\n\r\nhello",
]
RESPONSE_CASES = PLAIN_RESPONSES + mutations(PLAIN_RESPONSES, 4000, 1130, ALPHABET)
RESPONSE_BUILDS: dict[str, Callable[[bytes], Any]] = {"source": head_scan.plain_response}
if not NO_EXTENSIONS:
    assert is_compiled(loaded_upstream), "the compiled request path did not load"
    RESPONSE_BUILDS["compiled"] = loaded_upstream.plain_response


def httptools_response(data: bytes) -> tuple[int, bool, int] | None:
    """(status, keep-alive, Content-Length) of the response head httptools reads from ``data``; None if it
    refuses it, asks for an upgrade, or the head is not all there."""
    seen: dict[str, Any] = {}

    class Callbacks:
        def on_headers_complete(self) -> None:
            seen["head"] = (parser.get_status_code(), parser.should_keep_alive())

    parser = HttpResponseParser(Callbacks())
    head_end = data.find(b"\r\n\r\n")
    try:
        parser.feed_data(data[: head_end + 4] if head_end >= 0 else data)
    except (HttpParserError, HttpParserUpgrade):
        return None
    if "head" not in seen:
        return None
    lengths = [value for name, value in response_fields(data[: head_end + 4]) if name.lower() == b"content-length"]
    status, keep_alive = seen["head"]
    return status, keep_alive, int(lengths[0]) if len(lengths) == 1 else -1


@pytest.mark.parametrize("build", RESPONSE_BUILDS)
def test_a_plain_response_head_is_one_httptools_reads_the_same(build: str) -> None:
    plain_response = RESPONSE_BUILDS[build]
    plain_count = 0
    for data in RESPONSE_CASES:
        plain = plain_response(data)
        assert plain == head_scan.plain_response(data), data
        if plain is None:
            continue
        plain_count += 1
        read = httptools_response(data)
        assert read is not None, f"plain, but httptools refuses it: {data!r}"
        status, keep_alive, length = read
        assert (status, keep_alive) == plain and length >= 0, data
    assert plain_count > 1000, "too few plain heads to prove anything"


@pytest.mark.parametrize("build", RESPONSE_BUILDS)
def test_response_heads_llhttp_must_judge_are_not_plain(build: str) -> None:
    plain_response = RESPONSE_BUILDS[build]
    judged = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",  # not all here
        b"HTTP/1.1 200 OK\r\n\r\n",  # read until the close
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2 \r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close, x-hop\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
        b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 \xc3\xa9\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nUpgrade: h2c\r\n\r\n",
    ]
    for data in judged:
        assert plain_response(data) is None, data


def _answer(response: Callable[[bytes], bytes]) -> Callable[[Any, bytes], None]:
    """An origin that answers each request (whole in the reads it is given) with ``response(head)``."""

    def reply(origin: Any, data: bytes) -> None:
        for head in data.split(b"\r\n\r\n")[:-1]:
            origin.transport.write(response(head))

    return reply


async def test_plain_requests_end_refuse_and_close_as_parsed_ones_do(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    port, origins = await recording_origin(_answer(lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    proxy = await start(port)
    # an HTTP/1.0 request ends the connection after its answer: the request after it is never read
    pipelined = b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\nGET /2 HTTP/1.0\r\n\r\nGET /3 HTTP/1.1\r\nHost: t\r\n\r\n"
    responses = parse_responses(await send_in_pieces(proxy.port, [pipelined]))
    assert [(response.status, response.body) for response in responses] == [(200, b"ok"), (200, b"ok")]
    upstream = b"".join(origin.data for origin in origins)
    assert b"GET /1 HTTP/1.1\r\n" in upstream and b"GET /2 HTTP/1.0\r\n" in upstream and b"/3" not in upstream
    # a plain head the proxy refuses: an HTTP/1.1 request without Host
    (refused,) = parse_responses(await send_in_pieces(proxy.port, [b"GET /4 HTTP/1.1\r\nUser-Agent: t\r\n\r\n"]))
    assert refused.status == 400 and b"without Host" in refused.body


async def test_a_plain_response_keeps_its_connection_as_llhttp_would(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    """A HEAD answer's Content-Length frames no body, and the next answer on that upstream connection is
    read from its first byte; an answer with Connection: close is not pooled."""

    def response(head: bytes) -> bytes:
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        if b"/close" in head:
            return b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

    port, origins = await recording_origin(_answer(response))
    proxy = await start(port)
    pieces = [b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n", b"GET /g HTTP/1.1\r\nHost: t\r\n\r\n"]
    pieces += [
        b"GET /close HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    ]
    answer = await send_in_pieces(proxy.port, pieces)
    head_answer, _, rest = answer.partition(b"\r\n\r\n")  # the HEAD's: a head alone, its length kept
    assert head_answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 5" in head_answer
    responses = parse_responses(rest)
    assert [(response.status, response.body) for response in responses] == [
        (200, b"hello"),
        (200, b"bye"),
        (200, b"hello"),
    ]
    # HEAD, GET and /close on the first upstream connection; after its close, a second one
    assert [origin.data.count(b"\r\n\r\n") for origin in origins] == [3, 1]


CHUNK_PIECES = [
    b"5\r\nhello\r\n",
    b"1\r\n\n\r\n",
    b"a\r\n0123456789\r\nA\r\n0123456789\r\n",
    b"000f\r\ndata: event 1\n\n\r\n",
    b'1b\r\ndata: {"delta": "hi"}\r\n\r\n\r\n',
    b"3\r\n\r\n\r\r\n2\r\n\xff\x00\r\n",
]
NOT_WHOLE = [b"0\r\n\r\n", b"5;ext=1\r\nhello\r\n", b" 5\r\nhello\r\n"]
CHUNK_CASES = CHUNK_PIECES + mutations(CHUNK_PIECES, 4000, 3, ALPHABET) + NOT_WHOLE
CHUNK_BUILDS: dict[str, Callable[[bytes, int], bool]] = {"source": head_scan.whole_chunks}
if not NO_EXTENSIONS:
    CHUNK_BUILDS["compiled"] = whole_chunks
_CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def httptools_chunks(piece: bytes) -> bytes | None:
    """The body httptools reads from ``piece`` after a chunked head, when it then stands between two chunks
    (the last chunk right after ends the message); None otherwise."""
    body: list[bytes] = []
    complete: list[bool] = []

    class Callbacks:
        def on_body(self, data: bytes) -> None:
            body.append(data)

        def on_message_complete(self) -> None:
            complete.append(True)

    parser = HttpResponseParser(Callbacks())
    try:
        parser.feed_data(_CHUNKED_HEAD + piece)
        if complete:
            return None
        read = b"".join(body)
        parser.feed_data(b"0\r\n\r\n")
    except HttpParserError:
        return None
    return read if complete and b"".join(body) == read else None


def _chunk_data(piece: bytes) -> bytes:
    data, at = [], 0
    while at < len(piece):
        line_end = piece.index(b"\r\n", at)
        size = int(piece[at:line_end], 16)
        data.append(piece[line_end + 2 : line_end + 2 + size])
        at = line_end + 4 + size
    return b"".join(data)


@pytest.mark.parametrize("build", CHUNK_BUILDS)
def test_whole_chunks_are_ones_httptools_reads_the_same(build: str) -> None:
    read_whole = CHUNK_BUILDS[build]
    whole_count = 0
    for piece in CHUNK_CASES:
        whole = read_whole(piece, 0)
        assert whole == head_scan.whole_chunks(piece, 0), piece
        assert read_whole(b"xx" + piece, 2) == whole, piece  # from a start inside a read, the same
        if not whole:
            continue
        whole_count += 1
        assert httptools_chunks(piece) == _chunk_data(piece), piece
    assert whole_count > 400, "too few whole pieces to prove anything"


async def test_a_chunked_body_relays_whole_chunks_and_split_ones_alike(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    """Whole chunks a read at a time, then a chunk split across reads (llhttp reads on from there), then more
    whole chunks and the last one: the client gets every byte, and the connection is pooled after it."""
    pieces = [b"4\r\none \r\n", b"4\r\ntwo \r\n3\r\nthr\r\n", b"6\r\nsp", b"lit \r\n", b"4\r\nlast\r\n", b"0\r\n\r\n"]

    async def reply_later(origin: Any) -> None:
        origin.transport.write(_CHUNKED_HEAD)
        for piece in pieces:
            await asyncio.sleep(0.02)
            origin.transport.write(piece)

    def reply(origin: Any, data: bytes) -> None:
        for _ in data.split(b"\r\n\r\n")[:-1]:
            asyncio.get_running_loop().create_task(reply_later(origin))

    port, origins = await recording_origin(reply)
    proxy = await start(port)
    requests = [b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\n", b"GET /2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"]
    responses = parse_responses(await send_in_pieces(proxy.port, requests))
    assert [(response.status, response.body) for response in responses] == [(200, b"one two thrsplit last")] * 2
    assert len(origins) == 1 and origins[0].data.count(b"\r\n\r\n") == 2


@pytest.mark.parametrize("build", BUILDS)
def test_a_plain_heads_forwarded_fields_as_runs_are_its_lines(build: str) -> None:
    """Where nothing reads them by name, a plain head's forwarded fields go upstream as the runs of lines
    they came in: the same lines, counted and sized the same, as the fields read one by one."""
    module = BUILDS[build]
    by_field, by_run = module.RequestHead(Limits()), module.RequestHead(Limits())
    checked = 0
    for data in REQUEST_CASES:
        end = by_field.lean_end(data, 0)
        if end < 0 or by_field.plain_request(data, 0, end) is None:
            continue
        outcomes = []
        for head, runs in ((by_field, False), (by_run, True)):
            head.reset()
            try:
                head.read(data[:end], runs)
            except module.BadRequest as refused:
                outcomes.append(("refused", refused.status))
            else:
                outcomes.append(("read", head.count, head.size, head.host, head.content_length, head.target))
        assert outcomes[0] == outcomes[1], data
        if outcomes[0][0] != "read":
            continue
        checked += 1
        fields = by_field.parts[1:]
        one_by_one = [(fields[index], fields[index + 2]) for index in range(0, len(fields), 4)]
        lines = b"".join(by_run.parts[1:]).split(b"\r\n")[:-1]
        as_lines = [(name, value.lstrip(b" \t")) for name, _, value in (line.partition(b":") for line in lines)]
        assert as_lines == one_by_one, data
        runs = [part for part in by_run.parts[1:] if part.endswith(b"\r\n") and part != b"\r\n"]
        assert all(run in data for run in runs), data  # each run the lines as they came
    assert checked > 1000, "too few plain heads to prove anything"


def _request_fields(data: bytes) -> list[tuple[bytes, bytes]]:
    """The fields of the request head httptools reads at the start of ``data``."""
    fields: list[tuple[bytes, bytes]] = []

    class Callbacks:
        def on_header(self, name: bytes, value: bytes) -> None:
            fields.append((name, value))

    HttpRequestParser(Callbacks()).feed_data(data[: data.index(b"\r\n\r\n") + 4])
    return fields


async def test_the_origin_reads_a_plain_heads_fields_as_the_client_sent_them(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    """Forwarded as runs of lines or one by one, the origin's parser reads the client's fields (less
    Host, which the proxy writes itself, and plus the forwarding ones)."""
    sent = (
        b"POST /p HTTP/1.1\r\nX-A:   lead\r\nHost: t\r\nX-B: trail \t\r\nUser-Agent: u\r\nX_Under: 1\r\n"
        b"Content-Length: 2\r\nAccept: */*\r\n\r\nhi"
    )
    port, origins = await recording_origin(_answer(lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    proxy = await start(port)
    answer = await send_in_pieces(proxy.port, [sent, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"])
    assert [response.status for response in parse_responses(answer)] == [200, 200]
    got = _request_fields(origins[0].data)
    added = {b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
    dropped = {b"host", b"x_under"}  # (underscored names are dropped, as nginx does by default)
    expected = [field for field in _request_fields(sent) if field[0].lower() not in dropped]
    assert sorted(field for field in got if field[0].lower() not in added) == sorted(expected)
    assert origins[0].data.split(b"\r\n\r\n", 1)[1].startswith(b"hi")
