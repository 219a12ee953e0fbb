"""A strict HTTP/1.1 message reader for the test peers: what a careful origin or client accepts, no more.

The recording origin judges every byte the proxy sends upstream with ``parse_request``; the chaos client
judges every response with ``parse_response``. Both follow RFC 9112 to the letter and refuse the lenient
cases (bare LF, obs-fold, CL with TE, repeated or signed Content-Length, transfer codings other than a
single ``chunked``, controls in fields), so a proxy that forwards something a strict peer would read
differently fails the test that sent it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = (
    "ChunkedReader",
    "Request",
    "RequestHead",
    "Response",
    "ResponseReader",
    "StrictError",
    "find_head_end",
    "parse_request",
    "parse_request_head",
    "parse_response",
    "read_chunked",
)

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TARGET = re.compile(rb"/[\x21-\x7e]*\Z")
_FIELD_VALUE = re.compile(rb"[\x21-\x7e\x80-\xff]([\x20\x21-\x7e\x80-\xff\t]*[\x21-\x7e\x80-\xff])?\Z")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")
_DIGITS = re.compile(rb"[0-9]{1,18}\Z")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9]) [\x20\x21-\x7e\t\x80-\xff]*\Z")
_CHUNK_EXT = re.compile(rb"(;[!#$%&'*+\-.^_`|~0-9A-Za-z]+(=[!#$%&'*+\-.^_`|~0-9A-Za-z]+)?)*\Z")

MAX_HEAD = 256 * 1024
Buffer = bytes | bytearray


class StrictError(ValueError):
    """The bytes are not a message a strict HTTP/1.1 peer would accept."""


@dataclass
class RequestHead:
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    length: int  # bytes of the head, CRLF CRLF included

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]

    @property
    def chunked(self) -> bool:
        return bool(self.values(b"transfer-encoding"))

    @property
    def content_length(self) -> int:
        values = self.values(b"content-length")
        return int(values[0]) if values else 0


@dataclass
class Request:
    head: RequestHead
    body: bytes
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    interim: list[int]
    framing: str  # "length", "chunked", "close" or "none"
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]


def find_head_end(buf: Buffer, start: int = 0) -> int:
    """Index just past the CRLF CRLF that ends a head starting at ``start``, or -1 if not there yet."""
    end = buf.find(b"\r\n\r\n", start)
    return -1 if end < 0 else end + 4


def _header_lines(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    headers = []
    for line in lines:
        if b"\n" in line or b"\r" in line:
            raise StrictError(f"bare CR or LF in a header line {line[:60]!r}")
        if line[:1] in (b" ", b"\t"):
            raise StrictError("obs-fold (a header line starting with whitespace)")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise StrictError(f"bad header name in {line[:60]!r}")
        value = value.strip(b" \t")
        if value and not _FIELD_VALUE.match(value):
            raise StrictError(f"control character in the value of {name!r}")
        headers.append((name, value))
    return headers


def _head_lines(buf: Buffer, start: int) -> tuple[list[bytes], int] | None:
    end = find_head_end(buf, start)
    if end < 0:
        if len(buf) - start > MAX_HEAD:
            raise StrictError("head larger than the strict reader accepts")
        return None
    return bytes(buf[start : end - 4]).split(b"\r\n"), end


def _framing_headers(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """(content length or None, chunked) after refusing every ambiguous combination."""
    lengths = [value for name, value in headers if name.lower() == b"content-length"]
    codings = [value for name, value in headers if name.lower() == b"transfer-encoding"]
    if lengths and codings:
        raise StrictError("both Content-Length and Transfer-Encoding")
    if len(codings) > 1:
        raise StrictError("more than one Transfer-Encoding header")
    if codings:
        if codings[0].lower() != b"chunked":
            raise StrictError(f"transfer coding {codings[0]!r} is not exactly 'chunked'")
        return None, True
    if len(lengths) > 1:
        raise StrictError("more than one Content-Length header")
    if lengths:
        if not _DIGITS.match(lengths[0]):
            raise StrictError(f"Content-Length {lengths[0][:30]!r} is not 1 to 18 digits")
        return int(lengths[0]), False
    return None, False


def parse_request_head(buf: bytes, start: int = 0) -> RequestHead | None:
    """The request head at ``start``; None until its CRLF CRLF arrived."""
    found = _head_lines(buf, start)
    if found is None:
        return None
    lines, end = found
    request_line = lines[0]
    if b"\n" in request_line or b"\r" in request_line:
        raise StrictError("bare CR or LF in the request line")
    pieces = request_line.split(b" ")
    if len(pieces) != 3:
        raise StrictError(f"request line {request_line[:80]!r} is not METHOD SP TARGET SP VERSION")
    method, target, version = pieces
    if not _TOKEN.match(method):
        raise StrictError(f"method {method[:30]!r} is not a token")
    if not _TARGET.match(target):
        raise StrictError(f"target {target[:60]!r} is not origin-form")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise StrictError(f"version {version[:30]!r}")
    headers = _header_lines(lines[1:])
    hosts = [value for name, value in headers if name.lower() == b"host"]
    if len(hosts) > 1 or (version == b"HTTP/1.1" and len(hosts) != 1):
        raise StrictError("an HTTP/1.1 request needs exactly one Host header")
    _framing_headers(headers)
    return RequestHead(method, target, version, headers, end - start)


class ChunkedReader:
    """Decodes a chunked body incrementally: ``feed(buf, position)`` resumes where the last call stopped."""

    def __init__(self) -> None:
        self.payload: list[bytes] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.done = False

    def feed(self, buf: Buffer, position: int) -> int:
        """Decode whole units from ``position`` on; returns the position after the last one decoded."""
        while not self.done:
            line_end = buf.find(b"\r\n", position)
            if line_end < 0:
                if len(buf) - position > 1024:
                    raise StrictError("chunk-size line too long")
                return position
            size_text, _, extensions = buf[position:line_end].partition(b";")
            if not _HEX.match(size_text):
                raise StrictError(f"chunk size {buf[position:line_end][:30]!r} is not 1 to 16 hex digits")
            if extensions and not _CHUNK_EXT.match(b";" + extensions):
                raise StrictError("malformed chunk extension")
            size = int(size_text, 16)
            data_start = line_end + 2
            if size == 0:
                if len(buf) < data_start + 2:
                    return position
                if buf.startswith(b"\r\n", data_start):
                    self.done = True
                    return data_start + 2
                found = _head_lines(buf, data_start)  # a trailer section ends like a head
                if found is None:
                    return position
                lines, end = found
                self.trailers = _header_lines(lines)
                self.done = True
                return end
            if len(buf) < data_start + size + 2:
                return position
            if buf[data_start + size : data_start + size + 2] != b"\r\n":
                raise StrictError("chunk data not followed by CRLF")
            self.payload.append(bytes(buf[data_start : data_start + size]))
            position = data_start + size + 2
        return position


def read_chunked(buf: bytes, start: int) -> tuple[bytes, list[tuple[bytes, bytes]], int] | None:
    """(payload, trailers, end) of the chunked body at ``start``; None if it is not all there yet."""
    reader = ChunkedReader()
    end = reader.feed(buf, start)
    if not reader.done:
        return None
    return b"".join(reader.payload), reader.trailers, end


def parse_request(buf: bytes, start: int = 0) -> tuple[Request, int] | None:
    """A whole request (head and body) at ``start`` and the index past it; None until it has all arrived."""
    head = parse_request_head(buf, start)
    if head is None:
        return None
    body_start = start + head.length
    if head.chunked:
        read = read_chunked(buf, body_start)
        if read is None:
            return None
        body, trailers, end = read
        return Request(head, body, trailers), end
    length = head.content_length
    if len(buf) < body_start + length:
        return None
    return Request(head, buf[body_start : body_start + length]), body_start + length


class ResponseReader:
    """Reads one response incrementally: call ``feed`` with the whole buffer so far (it resumes where it
    stopped, so a body of a million tiny chunks costs one pass)."""

    def __init__(self, *, head_request: bool = False) -> None:
        self.head_request = head_request
        self.interim: list[int] = []
        self.position = 0  # where the next head (or the body) starts
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.framing = ""
        self.length = 0
        self.chunks: ChunkedReader | None = None

    def feed(self, buf: Buffer, *, eof: bool = False) -> tuple[Response, int] | None:
        """The response and the index past it once complete; None until then (see ``parse_response``)."""
        while not self.framing:
            found = _head_lines(buf, self.position)
            if found is None:
                return None
            lines, end = found
            match = _STATUS_LINE.match(lines[0])
            if match is None:
                raise StrictError(f"status line {lines[0][:80]!r}")
            status = int(match.group(1))
            headers = _header_lines(lines[1:])
            self.position = end
            if status < 200:
                if status == 101:
                    raise StrictError("101 without an upgrade")
                self.interim.append(status)
                continue
            self.status, self.headers = status, headers
            length, chunked = _framing_headers(headers)
            if self.head_request or status in (204, 304):
                self.framing = "none"
            elif chunked:
                self.framing = "chunked"
                self.chunks = ChunkedReader()
                self.length = end  # the chunk reader's resume point
            elif length is not None:
                self.framing, self.length = "length", length
            else:
                self.framing = "close"
        start = self.position
        if self.framing == "none":
            return Response(self.status, self.headers, b"", self.interim, "none"), start
        if self.framing == "chunked":
            assert self.chunks is not None
            self.length = self.chunks.feed(buf, self.length)
            if not self.chunks.done:
                return None
            body = b"".join(self.chunks.payload)
            return Response(self.status, self.headers, body, self.interim, "chunked", self.chunks.trailers), self.length
        if self.framing == "length":
            if len(buf) < start + self.length:
                return None
            body = bytes(buf[start : start + self.length])
            return Response(self.status, self.headers, body, self.interim, "length"), start + self.length
        if not eof:
            return None
        return Response(self.status, self.headers, bytes(buf[start:]), self.interim, "close"), len(buf)


def parse_response(buf: bytes, *, head_request: bool = False, eof: bool = False) -> tuple[Response, int] | None:
    """The response at the start of ``buf`` (interim 1xx heads skipped) and the index past it.

    None while it is incomplete; with ``eof`` a close-delimited body ends at the end of ``buf``, and any
    other incomplete message stays None (visibly incomplete).
    """
    return ResponseReader(head_request=head_request).feed(buf, eof=eof)
