"""Hostile requests: smuggling attempts and malformed heads, each with what the proxy may answer.

Every case is raw bytes sent on a fresh connection. ``statuses`` is what the proxy may answer (a 4xx;
501 only where RFC 9112 §6.1 asks for it: a transfer coding the server does not implement). ``forwarded``
names the targets the origin may receive from that connection: usually none, and never ``/smuggled``,
which hides in bodies where a parser that disagrees with the proxy about framing would find a request.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("CASES", "HostileCase")

CLIENT_ERRORS = frozenset(range(400, 500))
UNKNOWN_CODING = CLIENT_ERRORS | {501}  # RFC 9112 §6.1: "SHOULD respond with 501 (Not Implemented)"


@dataclass(frozen=True)
class HostileCase:
    name: str
    data: bytes
    statuses: frozenset[int] = CLIENT_ERRORS
    forwarded: frozenset[bytes] = frozenset()
    answered_first: int = 0  # responses that come (from the origin) before the refusal
    may_normalize: bool = False  # RFC 9112 lets a recipient repair this; then a clean request goes upstream
    proxy_bug: str = ""  # a known proxy defect: the case is expected to fail until it is fixed


def _post(headers: bytes, body: bytes = b"", target: bytes = b"/h") -> bytes:
    return b"POST " + target + b" HTTP/1.1\r\nHost: hostile.test\r\n" + headers + b"\r\n" + body


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: hostile.test\r\n\r\n"

CASES = (
    # -- Content-Length and Transfer-Encoding together or disguised ---------------------------------------
    HostileCase("cl-and-te", _post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG")),
    HostileCase(
        "te-and-cl-smuggling-body",
        _post(b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", b"5c\r\n" + SMUGGLED + b"\r\n0\r\n\r\n"),
    ),
    HostileCase("te-xchunked", _post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), UNKNOWN_CODING),
    HostileCase(
        "te-chunked-then-identity", _post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"), UNKNOWN_CODING
    ),
    HostileCase("te-identity", _post(b"Transfer-Encoding: identity\r\nContent-Length: 3\r\n", b"abc"), UNKNOWN_CODING),
    HostileCase(
        "te-two-headers",
        _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        UNKNOWN_CODING,
    ),
    HostileCase(
        "te-two-headers-second-bogus",
        _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n", b"0\r\n\r\n"),
        UNKNOWN_CODING,
    ),
    HostileCase("te-space-before-colon", _post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n")),
    HostileCase("te-vertical-tab", _post(b"Transfer-Encoding:\x0bchunked\r\n", b"0\r\n\r\n"), UNKNOWN_CODING),
    HostileCase("te-in-http10", b"POST /h HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    HostileCase(
        "te-obs-folded",
        _post(b"Transfer-Encoding:\r\n chunked\r\nContent-Length: 3\r\n", b"abc"),
    ),
    # -- Content-Length forms a strict parser refuses ----------------------------------------------------
    HostileCase("cl-duplicate-different", _post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!")),
    HostileCase("cl-duplicate-same", _post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello")),
    HostileCase("cl-list", _post(b"Content-Length: 5, 5\r\n", b"hello")),
    HostileCase("cl-plus-sign", _post(b"Content-Length: +5\r\n", b"hello")),
    HostileCase("cl-minus-sign", _post(b"Content-Length: -5\r\n", b"hello")),
    HostileCase("cl-hex", _post(b"Content-Length: 0x5\r\n", b"hello")),
    HostileCase("cl-two-numbers", _post(b"Content-Length: 5 5\r\n", b"hello")),
    HostileCase("cl-huge", _post(b"Content-Length: 99999999999999999999999999\r\n", b"hello")),
    HostileCase("cl-empty", _post(b"Content-Length: \r\n", b"hello")),
    # -- chunked bodies a strict parser refuses (the head may already be upstream; the body never ends) ----
    HostileCase(
        "chunk-size-overflow",
        _post(b"Transfer-Encoding: chunked\r\n", b"fffffffffffffffff1\r\nx\r\n0\r\n\r\n"),
        forwarded=frozenset({b"/h"}),
    ),
    HostileCase(
        "chunk-size-not-hex",
        _post(b"Transfer-Encoding: chunked\r\n", b"5x\r\nhello\r\n0\r\n\r\n"),
        forwarded=frozenset({b"/h"}),
    ),
    HostileCase(
        "chunk-data-longer-than-size",
        _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello" + SMUGGLED + b"\r\n0\r\n\r\n"),
        forwarded=frozenset({b"/h"}),
    ),
    HostileCase(
        "chunk-size-bare-lf",
        _post(b"Transfer-Encoding: chunked\r\n", b"5\nhello\r\n0\r\n\r\n"),
        forwarded=frozenset({b"/h"}),
    ),
    HostileCase(
        "chunk-extension-bare-lf",
        _post(b"Transfer-Encoding: chunked\r\n", b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
        forwarded=frozenset({b"/h"}),
    ),
    HostileCase(
        "chunk-size-leading-space",
        _post(b"Transfer-Encoding: chunked\r\n", b" 5\r\nhello\r\n0\r\n\r\n"),
        forwarded=frozenset({b"/h"}),
    ),
    # -- line endings, folding, controls -------------------------------------------------------------------
    HostileCase("bare-lf-everywhere", b"GET /h HTTP/1.1\nHost: hostile.test\n\n"),
    HostileCase("bare-lf-in-one-header", b"GET /h HTTP/1.1\r\nHost: hostile.test\nX-A: b\r\n\r\n"),
    HostileCase("bare-cr-in-value", b"GET /h HTTP/1.1\r\nHost: hostile.test\r\nX-A: a\rb\r\n\r\n"),
    HostileCase("obs-fold", b"GET /h HTTP/1.1\r\nHost: hostile.test\r\nX-Long: a\r\n b\r\n\r\n"),
    HostileCase("obs-fold-first-header", b"GET /h HTTP/1.1\r\n Host: hostile.test\r\n\r\n"),
    HostileCase("nul-in-value", b"GET /h HTTP/1.1\r\nHost: hostile.test\r\nX-A: a\x00b\r\n\r\n"),
    HostileCase("control-in-value", b"GET /h HTTP/1.1\r\nHost: hostile.test\r\nX-A: a\x01b\r\n\r\n"),
    HostileCase("del-in-value", b"GET /h HTTP/1.1\r\nHost: hostile.test\r\nX-A: a\x7fb\r\n\r\n"),
    HostileCase("nul-in-name", b"GET /h HTTP/1.1\r\nHost: hostile.test\r\nX\x00A: b\r\n\r\n"),
    HostileCase("space-in-name", b"GET /h HTTP/1.1\r\nHost: hostile.test\r\nX A: b\r\n\r\n"),
    HostileCase("space-before-colon", b"GET /h HTTP/1.1\r\nHost : hostile.test\r\n\r\n"),
    HostileCase("empty-name", b"GET /h HTTP/1.1\r\nHost: hostile.test\r\n: b\r\n\r\n"),
    HostileCase("nul-in-target", b"GET /h\x00x HTTP/1.1\r\nHost: hostile.test\r\n\r\n"),
    HostileCase("high-bytes-in-target", b"GET /h\xff HTTP/1.1\r\nHost: hostile.test\r\n\r\n"),
    # -- request line ------------------------------------------------------------------------------------
    HostileCase("overlong-request-line", b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: hostile.test\r\n\r\n"),
    HostileCase("overlong-header", b"GET /h HTTP/1.1\r\nHost: hostile.test\r\nX-A: " + b"a" * 200_000 + b"\r\n\r\n"),
    HostileCase("too-many-headers", b"GET /h HTTP/1.1\r\nHost: hostile.test\r\n" + b"X-A: b\r\n" * 20_000 + b"\r\n"),
    HostileCase("invalid-method-char", b"G@T /h HTTP/1.1\r\nHost: hostile.test\r\n\r\n"),
    HostileCase("method-with-nul", b"GET\x00 /h HTTP/1.1\r\nHost: hostile.test\r\n\r\n"),
    # RFC 9112 §3: a recipient MAY parse the request line on whitespace boundaries.
    HostileCase("double-space", b"GET  /h HTTP/1.1\r\nHost: hostile.test\r\n\r\n", may_normalize=True),
    HostileCase("tab-separator", b"GET\t/h HTTP/1.1\r\nHost: hostile.test\r\n\r\n"),
    HostileCase(
        "no-version",
        b"GET /h\r\nHost: hostile.test\r\n\r\n",
        CLIENT_ERRORS | {505},
    ),
    HostileCase(
        "version-2",
        b"GET /h HTTP/2.0\r\nHost: hostile.test\r\n\r\n",
        CLIENT_ERRORS | {505},
    ),
    HostileCase("version-garbage", b"GET /h HTTP/x.y\r\nHost: hostile.test\r\n\r\n"),
    # RFC 9112 §3.2.2: a server MUST accept the absolute form; the proxy may answer 400 or forward the
    # origin form, and the origin must then see a strict request for /h only.
    HostileCase("absolute-form", b"GET http://evil.test/h HTTP/1.1\r\nHost: hostile.test\r\n\r\n", may_normalize=True),
    HostileCase("authority-form-get", b"GET hostile.test:80 HTTP/1.1\r\nHost: hostile.test\r\n\r\n"),
    HostileCase(
        "authority-form-connect",
        b"CONNECT hostile.test:443 HTTP/1.1\r\nHost: hostile.test:443\r\n\r\n",
        CLIENT_ERRORS | {501},
    ),
    HostileCase(
        "asterisk-form-get",
        b"GET * HTTP/1.1\r\nHost: hostile.test\r\n\r\n",
    ),
    # -- Host ------------------------------------------------------------------------------------------
    HostileCase("no-host", b"GET /h HTTP/1.1\r\n\r\n"),
    HostileCase("two-hosts", b"GET /h HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"),
    # -- the same in spellings the proxy's table of usual names does not hold (they take the slow path) ---
    HostileCase("two-hosts-other-case", b"GET /h HTTP/1.1\r\nHost: a.test\r\nHOST: b.test\r\n\r\n"),
    HostileCase("cl-and-te-upper-case", _post(b"CONTENT-LENGTH: 6\r\nTRANSFER-ENCODING: chunked\r\n", b"0\r\n\r\nG")),
    HostileCase(
        "connection-names-content-length-mixed-case",
        _post(b"cOnNeCtIoN: keep-alive, CONTENT-length\r\nContent-LENGTH: %d\r\n" % len(SMUGGLED), SMUGGLED),
    ),
    # -- a good request, then a hostile one on the same connection -------------------------------------
    HostileCase(
        "pipelined-good-then-cl-and-te",
        b"GET /first HTTP/1.1\r\nHost: hostile.test\r\n\r\n"
        + _post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG"),
        forwarded=frozenset({b"/first"}),
        answered_first=1,
    ),
    HostileCase(
        "pipelined-good-then-bare-lf",
        b"GET /first HTTP/1.1\r\nHost: hostile.test\r\n\r\nGET /h HTTP/1.1\nHost: hostile.test\n\n",
        forwarded=frozenset({b"/first"}),
        answered_first=1,
    ),
    # -- Connection naming a field every hop needs (RFC 9110 §7.6.1): dropping it would strip framing ---
    HostileCase(
        "connection-names-content-length",
        _post(b"Connection: keep-alive, Content-Length\r\nContent-Length: %d\r\n" % len(SMUGGLED), SMUGGLED),
    ),
    HostileCase(
        "connection-close-names-content-length",
        _post(b"Connection: close, Content-Length\r\nContent-Length: %d\r\n" % len(SMUGGLED), SMUGGLED),
    ),
    HostileCase(
        "connection-names-content-length-http10",
        b"POST /h HTTP/1.0\r\nConnection: keep-alive, content-length\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED)
        + SMUGGLED,
    ),
    HostileCase(
        "connection-names-transfer-encoding",
        _post(b"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED),
    ),
    HostileCase("connection-names-host", b"GET /h HTTP/1.1\r\nHost: hostile.test\r\nConnection: Host\r\n\r\n"),
    HostileCase(
        "connection-names-x-forwarded-for",
        b"GET /h HTTP/1.1\r\nHost: hostile.test\r\nConnection: x-forwarded-for\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
    ),
    HostileCase(
        "connection-names-x-forwarded-proto-second-header",
        b"GET /h HTTP/1.1\r\nHost: hostile.test\r\nConnection: keep-alive\r\nConnection: X-Forwarded-Proto\r\n\r\n",
    ),
    HostileCase("header-count-over-100", b"GET /h HTTP/1.1\r\nHost: hostile.test\r\n" + b"X-A: b\r\n" * 100 + b"\r\n"),
)
