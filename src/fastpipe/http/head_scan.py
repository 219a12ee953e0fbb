"""Reading a request head from its bytes, for the parser that calls back once per message rather than once
per header (see ``ProxyProtocol``'s lean parser and docs/architecture.md).

llhttp still reads every byte and refuses what it refuses; these two functions only find where a head
ends, and, once llhttp accepted it, cut it into the fields its per-header callbacks would have given,
putting those the proxy forwards unread straight into the head's parts. The
compiled request path uses the C build of both in ``head_scan.pxd``; this module is the pure-Python one,
and the tests hold each to the other and to httptools' callbacks.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ("content_length", "lean_head_end", "read_head", "request_line_version")

_TRANSFER_ENCODING = b"transfer-encoding:"


def lean_head_end(data: bytes, start: int) -> int:
    """Where the head that begins at ``start`` of ``data`` ends (past its blank line), or -1 when the lean
    parser is not to take it: not all of it is here, it begins with an empty line, a CR in it is not
    followed by LF, or it has a Transfer-Encoding field (a chunked body's end can only be found by parsing
    it, and the head after it would be lost to the lean parser)."""
    if data[start : start + 1] in (b"", b"\r", b"\n"):
        return -1
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        return -1
    head = data[start:end]
    if head.count(b"\r") != head.count(b"\r\n"):
        return -1
    for line in head.split(b"\r\n")[1:]:
        if line[: len(_TRANSFER_ENCODING)].lower() == _TRANSFER_ENCODING:
            return -1
    return end + 4


def read_head(data: bytes, start: int, parts: list[bytes], specials: tuple[bytes, ...], request: bool) -> list[Any]:
    """The fields of the head at ``start`` of ``data`` (after any empty lines), which llhttp accepted, as
    its callbacks give them: each value without the whitespace before it (what follows it stays). Those
    the proxy forwards unread (a name of letters, digits and ``-`` not among the lower-case ``specials``)
    go straight onto ``parts`` as name, ": ", value, CRLF; the rest are returned, for the head's own
    classification: ``[target, forwarded count, forwarded size, end, name, value, name, value, ...]``, the
    target that of a ``request`` (else None), ``end`` where the head ends in ``data``."""
    if not 0 <= start <= len(data):
        raise ValueError("start outside the bytes")
    at = start
    while data[at : at + 1] in (b"\r", b"\n"):
        at += 1
    line_end = data.index(b"\r\n", at)
    target = None
    if request:
        words = data[at:line_end].split(b" ")
        target = next(word for word in words[1:] if word)  # llhttp takes more than one space
    end = data.index(b"\r\n\r\n", line_end) + 4
    fields: list[Any] = [target, 0, 0, end]
    for line in data[line_end + 2 : end - 4].split(b"\r\n") if end - 4 > line_end else ():
        name, colon, value = line.partition(b":")
        if not colon:
            raise ValueError("not a head llhttp accepted")
        value = value.lstrip(b" \t")
        if name.replace(b"-", b"").isalnum() and name.lower() not in specials:
            parts += (name, b": ", value, b"\r\n")
            fields[1] += 1
            fields[2] += len(name) + len(value) + 4
        else:
            fields += (name, value)
    return fields


def content_length(value: bytes) -> int:
    """A Content-Length value llhttp accepted (digits, perhaps whitespace after them) as a number; -1 when
    it is more than the compiled build's C integers hold (llhttp takes up to 2**64 - 1), or not that."""
    try:
        length = int(value)
    except ValueError:
        return -1
    return length if 0 <= length <= sys.maxsize and value[:1].isdigit() else -1


def request_line_version(data: bytes, method: bytes, target: bytes) -> int:
    """11 or 10 when ``data`` begins with the request line ``method SP target SP HTTP/1.1 CRLF`` (or 1.0);
    else 0, and the caller asks the parser."""
    if data[: len(method)] != method:
        return 0
    at = len(method) + 1 + len(target)
    line_end = data[at : at + 11]
    return 11 if line_end == b" HTTP/1.1\r\n" else 10 if line_end == b" HTTP/1.0\r\n" else 0
