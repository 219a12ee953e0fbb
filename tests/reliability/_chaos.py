"""The seeded fault schedule and its verdict: one seed → one scenario (origin plan + client plan) → judged.

A scenario is drawn from ``random.Random(seed)`` only, so a seed replays the same faults at the same
offsets with the same bytes. The verdict states the issue's invariants for one exchange:

* the client gets the origin's exact status and body (sha256), or a visibly incomplete message (the
  connection ended before the framing did), or an error status the proxy made itself — never a complete
  message with a wrong or short body, and never silence on an open connection;
* the origin reads a complete request only with the exact body the client sent, and a request with a
  body never twice;
* where the faults leave no choice, the outcome is the one expected (502 for a broken head, 504 past the
  upstream timeout, 408 past the header timeout, the exact bytes when nobody misbehaves).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from . import _client as c
from . import _origin as o
from ._client import ClientOutcome, ClientPlan
from ._origin import ChaosOrigin, OriginPlan

__all__ = ("TIMEOUTS", "Scenario", "judge", "scenario_for")

# The proxy's limits during chaos runs: short, so stalls past them cost little time.
# idle_timeout is also the proxy's limit between two reads of a request body (and of a parked response).
TIMEOUTS = {"header_timeout": 0.5, "upstream_timeout": 0.6, "connect_timeout": 1.0, "idle_timeout": 1.0}
# A stall "past a timeout" lasts this long: past the longer timeout, plus the sweep's lateness (a quarter of
# the shorter one), plus slack for a loaded machine.
STALL = 1.0

# Statuses the proxy answers on its own behalf (origin plans never use them).
PROXY_STATUSES = frozenset({400, 408, 413, 431, 501, 502, 503, 504})

_ORIGIN_WEIGHTS = {
    o.NONE: 30,
    o.RST_BEFORE_HEAD: 4,
    o.FIN_BEFORE_HEAD: 4,
    o.RST_MID_HEAD: 4,
    o.FIN_MID_HEAD: 3,
    o.RST_MID_BODY: 6,
    o.FIN_MID_BODY: 6,
    o.STALL_BEFORE_HEAD: 3,
    o.STALL_MID_BODY: 3,
    o.BAD_CHUNK_SIZE: 5,
    o.EXTRA_AFTER_BODY: 5,
    o.BAD_STATUS_LINE: 2,
    o.HUGE_HEAD: 2,
    o.EARLY_RESPONSE: 3,
    o.EARLY_RESPONSE_DRAIN: 3,
}
_CLIENT_WEIGHTS = {
    c.NONE: 40,
    c.RST_BEFORE_HEAD: 2,
    c.RST_MID_HEAD: 3,
    c.FIN_MID_HEAD: 2,
    c.STALL_MID_HEAD: 2,
    c.RST_MID_BODY: 4,
    c.STALL_MID_BODY: 2,
    c.RST_MID_RESPONSE: 6,
    c.SLOW_READ: 5,
    c.HALF_CLOSE: 2,
}
# Faults that make another fault moot (the exchange ends before it): at most one of them per scenario.
_CLIENT_EARLY = (c.RST_BEFORE_HEAD, c.RST_MID_HEAD, c.FIN_MID_HEAD, c.STALL_MID_HEAD)


@dataclass
class Scenario:
    seed: int
    origin: OriginPlan
    client: ClientPlan
    notes: list[str] = field(default_factory=list)

    @property
    def target(self) -> bytes:
        return self.client.target

    def describe(self) -> str:
        plan, client = self.origin, self.client
        return (
            f"seed {self.seed}: client {client.method.decode()} {client.version.decode()} "
            f"body={len(client.body)}B/{client.framing} fault={client.fault!r}@{client.fault_at} | origin "
            f"{plan.status} body={len(plan.body)}B/{plan.framing} fault={plan.fault!r}@{plan.fault_at}"
            f"{' drip' if plan.delay else ''}{' trailers' if plan.trailers else ''}"
            f"{' 100-continue' if plan.interim else ''}"
        )


def _weighted(rng: random.Random, weights: dict[str, int]) -> str:
    names = list(weights)
    return rng.choices(names, [weights[name] for name in names])[0]


def _size(rng: random.Random) -> int:
    kind = rng.random()
    if kind < 0.15:
        return 0
    if kind < 0.25:
        return rng.randint(1, 16)
    if kind < 0.65:
        return rng.randint(17, 4096)
    if kind < 0.92:
        return rng.randint(4097, 200_000)
    return rng.randint(200_001, 1_500_000)  # larger than every buffer and high-water mark on the way


def _bounded_writes(size: int, pieces: tuple[int, ...]) -> tuple[int, ...]:
    """Write sizes that split ``size`` bytes into at most a few thousand writes: tiny pieces of a large body
    would hold the loop every chaos peer shares (and make every timer in the batch late)."""
    if size * len(pieces) / sum(pieces) <= 3000:
        return pieces
    return tuple(max(piece, 8192) for piece in pieces)


def scenario_for(seed: int) -> Scenario:
    rng = random.Random(seed)
    target = b"/chaos/%d" % seed
    origin_fault = _weighted(rng, _ORIGIN_WEIGHTS)
    client_fault = _weighted(rng, _CLIENT_WEIGHTS)

    method = rng.choice((b"GET", b"GET", b"POST", b"POST", b"PUT", b"HEAD", b"DELETE"))
    version = b"HTTP/1.0" if rng.random() < 0.1 else b"HTTP/1.1"
    request_framing = "none"
    request_body = b""
    if method in (b"POST", b"PUT") or client_fault in (c.RST_MID_BODY, c.STALL_MID_BODY):
        if method in (b"GET", b"HEAD", b"DELETE"):
            method = b"POST"
        request_body = rng.randbytes(max(1, _size(rng)))
        request_framing = "chunked" if version == b"HTTP/1.1" and rng.random() < 0.4 else "length"

    status = rng.choice((200, 200, 200, 201, 203, 404, 410, 500))
    framing = rng.choice(("length", "length", "chunked", "chunked", "close"))
    if origin_fault == o.BAD_CHUNK_SIZE:
        framing = "chunked"
    size = _size(rng)
    if origin_fault in (o.RST_MID_BODY, o.FIN_MID_BODY, o.STALL_MID_BODY, o.BAD_CHUNK_SIZE):
        size = max(size, 2)
    body = rng.randbytes(size)
    if size >= 200_001 and framing == "chunked" and rng.random() < 0.5:
        chunk_sizes: tuple[int, ...] = (size,)  # one oversized chunk
    else:
        chunk_sizes = tuple(rng.choice((1, 7, 100, 1000, 4096, 65536, 300_000)) for _ in range(rng.randint(1, 4)))
    if size > 65536:
        # Every chaos peer shares the test's one loop: a large body in tiny chunks would hold the loop for
        # a second (building and checking a million chunks) and make every timer in the batch late.
        chunk_sizes = tuple(max(1000, chunk) for chunk in chunk_sizes)
    drip = size <= 64 and rng.random() < 0.3 and origin_fault != o.HUGE_HEAD
    pieces = _bounded_writes(size, tuple(rng.choice((1, 13, 512, 8192, 70_000, 1 << 20)) for _ in range(3)))
    slow = not drip and rng.random() < 0.1 and (size + 300) / min(pieces) < 400  # paced, at most ~0.2 s
    plan = OriginPlan(
        status=status,
        body=body,
        framing=framing,
        chunk_sizes=chunk_sizes,
        trailers=framing == "chunked" and rng.random() < 0.3,
        interim=rng.random() < 0.08,
        pieces=(1,) if drip else pieces,
        delay=0.002 if drip else (0.0005 if slow else 0.0),
        fault=origin_fault,
        fault_at=rng.randint(1, 1 << 30),
        stall=STALL,
    )
    # Offsets are drawn large and folded into the message they cut.
    if origin_fault in (o.RST_MID_HEAD, o.FIN_MID_HEAD):
        plan.fault_at = 1 + plan.fault_at % 40
    elif origin_fault in (o.RST_MID_BODY, o.FIN_MID_BODY, o.STALL_MID_BODY):
        plan.fault_at = 1 + plan.fault_at % (len(plan.body_wire()) - 1)

    if client_fault in _CLIENT_EARLY and origin_fault != o.NONE and rng.random() < 0.5:
        client_fault = c.NONE
    client_drip = rng.random() < 0.05 and len(request_body) < 64  # a large body byte by byte holds the loop
    client = ClientPlan(
        target=target,
        method=method,
        version=version,
        body=request_body,
        framing=request_framing,
        chunk_size=rng.choice((1, 100, 4096, 65536)),
        pieces=(1,)
        if client_drip
        else _bounded_writes(len(request_body), tuple(rng.choice((1, 50, 1460, 65536, 1 << 20)) for _ in range(3))),
        delay=0.001 if client_drip else 0.0,
        fault=client_fault,
        fault_at=rng.randint(0, 1 << 30),
        stall=2 * STALL if client_fault == c.STALL_MID_BODY else STALL,  # past the body's idle timeout
        patience=4.0 + (STALL if origin_fault in (o.STALL_BEFORE_HEAD, o.STALL_MID_BODY) else 0.0),
    )
    if client.chunk_size == 1 and len(request_body) > 4096:
        client.chunk_size = 100  # a 1-byte chunk per byte of a large body costs the timeout's worth of CPU
    if client_fault == c.RST_MID_RESPONSE:
        client.fault_at = rng.randint(1, 200 + len(body))
    return Scenario(seed, plan, client)


# -- the verdict ---------------------------------------------------------------------------------------


def _proxy_made(outcome: ClientOutcome, origin_status: int) -> bool:
    response = outcome.response
    return response is not None and response.status in PROXY_STATUSES and response.status != origin_status


def _expected_body(scenario: Scenario) -> bytes:
    plan, client = scenario.origin, scenario.client
    if client.method == b"HEAD" or plan.status in (204, 304):
        return b""
    if plan.framing == "close":
        # A close is the legitimate end of a close-delimited body: what came before it is the body.
        if plan.fault == o.FIN_MID_BODY:
            return plan.body[: plan.fault_at]
        if plan.fault == o.EXTRA_AFTER_BODY:
            return plan.body + o.SMUGGLED_RESPONSE
    return plan.body


def _allowed(scenario: Scenario) -> tuple[bool, bool, frozenset[int] | None, bool]:
    """(exact allowed, incomplete allowed, proxy statuses allowed (None: any), hang allowed)."""
    plan, client = scenario.origin, scenario.client
    benign_client = client.fault in (c.NONE, c.SLOW_READ)
    if client.fault == c.STALL_MID_HEAD:
        return False, True, frozenset({408}), False
    http10_chunked = client.version == b"HTTP/1.0" and plan.framing == "chunked" and client.method != b"HEAD"
    if client.fault == c.STALL_MID_BODY and client.body and plan.fault == o.NONE:
        # An upload paused past the idle timeout between body reads: cut with a 408, the origin left waiting.
        return False, False, frozenset({408} | ({502} if http10_chunked else set())), False
    if not benign_client:
        return True, True, None, False
    fault = plan.fault
    if fault in (o.RST_BEFORE_HEAD, o.FIN_BEFORE_HEAD, o.RST_MID_HEAD, o.FIN_MID_HEAD, o.BAD_STATUS_LINE, o.HUGE_HEAD):
        return False, False, frozenset({502}), False
    if fault == o.STALL_BEFORE_HEAD:
        return False, False, frozenset({504}), False
    if fault in (o.RST_MID_BODY, o.BAD_CHUNK_SIZE) or (fault == o.FIN_MID_BODY and plan.framing != "close"):
        if client.method == b"HEAD" or plan.status in (204, 304):
            return True, False, frozenset({502}), False  # no body to cut
        return False, True, frozenset({502}), False
    if fault == o.EXTRA_AFTER_BODY and (plan.framing == "chunked" or client.method == b"HEAD"):
        # Where the parser cannot tell where the message ended, the proxy may refuse the response (a
        # 502, or a visible cut once the head is out).
        return True, client.method != b"HEAD", frozenset({502}), False
    if fault == o.EARLY_RESPONSE:
        return True, True, frozenset({502}), False
    if http10_chunked:
        # This proxy does not de-chunk for HTTP/1.0 clients: it refuses such responses with a 502.
        return True, False, frozenset({502}), False
    return True, False, frozenset(), False


def judge(scenario: Scenario, outcome: ClientOutcome, origin: ChaosOrigin) -> list[str]:
    """Every broken invariant of one exchange, as sentences (empty: it held)."""
    problems = []
    plan, client = scenario.origin, scenario.client
    exact_ok, incomplete_ok, statuses, hang_ok = _allowed(scenario)
    response = outcome.response
    if outcome.malformed is not None:
        problems.append(f"the client got bytes a strict reader refuses: {outcome.malformed}")
    elif outcome.ending == "self":
        pass  # the client walked away on purpose; only the upstream side and the proxy's health are judged
    elif response is not None:
        if _proxy_made(outcome, plan.status):
            if statuses is not None and response.status not in statuses:
                detail = response.body.strip()[:120].decode("latin-1")
                problems.append(
                    f"proxy answered {response.status} ({detail}); expected one of {sorted(statuses)} or else"
                )
        else:
            expected = _expected_body(scenario)
            if response.status != plan.status or response.body != expected:
                problems.append(
                    f"a complete but wrong response: status {response.status} (origin {plan.status}), body "
                    f"{len(response.body)}B sha {hashlib.sha256(response.body).hexdigest()[:12]} "
                    f"(origin {len(expected)}B sha {hashlib.sha256(expected).hexdigest()[:12]})"
                )
            elif not exact_ok:
                problems.append(f"got the exact response where the faults allow none ({response.status})")
    elif outcome.ending == "open":
        if not hang_ok:
            problems.append(f"no response and the connection still open after {outcome.elapsed:.2f}s (a hang)")
    elif not incomplete_ok:
        problems.append(
            f"visibly incomplete ({outcome.ending} after {len(outcome.received)}B) where a "
            f"{'complete response' if exact_ok else f'proxy error status {sorted(statuses or ())}'} was due: "
            f"{outcome.received[:120]!r}"
        )

    # The upstream side: complete requests carry exactly the client's body; bodies are never replayed.
    sent = hashlib.sha256(client.body).hexdigest()
    seen = origin.requests.get(client.target, [])
    for request in seen:
        if request.body_complete and request.body_sha256 != sent:
            problems.append(
                f"the origin read a complete request with a different body ({request.body_size}B, client sent "
                f"{len(client.body)}B)"
            )
    if client.body and len(seen) > 1:
        problems.append(f"a request with a body reached the origin {len(seen)} times")
    if len(seen) > 2:
        problems.append(f"the request reached the origin {len(seen)} times")
    return problems
