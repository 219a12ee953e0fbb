"""The ``fastpipe`` command (also ``python -m fastpipe``).

fastpipe proxy --upstream http://HOST:PORT --listen HOST:PORT [--workers N] [--health-path /healthz]
               [--shutdown-grace SECONDS] [--access-log] [--stock-loop]
fastpipe proxy --config gateway.toml [flags that override the file]
fastpipe check-config gateway.toml
fastpipe demo [hazard|proxy|all]        (default: all)

Flags that are given override the configuration file; flags not given never do (their defaults are the
file's, then fastpipe's own).

The proxy logs to stderr when it listens, when a stop signal (SIGTERM, SIGINT) starts its graceful drain,
while the drain goes on (once a second), and how it ended: every exchange finished, or those still in
flight at the grace deadline were cut.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ._loop import run

__all__ = ("main",)


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT, got {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def _health_path(text: str) -> str:
    if not text.startswith("/") or "?" in text or not text.isascii() or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"--health-path wants an absolute path like /healthz, got {text!r}")
    return text


def _optional_size(text: str) -> int | None:
    return None if text.lower() in ("none", "0", "") else int(text)


def _proxy_parser(subparsers: Any) -> None:
    from .http.limits import Limits

    defaults = Limits()
    parser = subparsers.add_parser("proxy", help="run the reverse proxy", description="Run the HTTP/1.1 reverse proxy.")
    parser.add_argument("--upstream", help="http://HOST:PORT or https://HOST:PORT of the origin (one route)")
    parser.add_argument("--config", metavar="FILE", help="a gateway configuration (TOML): routes, upstream groups")
    parser.add_argument(
        "--listen", type=_listen_address, help="HOST:PORT (default: the file's [server] listen, else 127.0.0.1:8080)"
    )
    parser.add_argument("--workers", type=int, help="processes sharing the port (SO_REUSEPORT; default 1)")
    parser.add_argument(
        "--metrics", type=_listen_address, metavar="HOST:PORT", help="serve Prometheus metrics at /metrics there"
    )
    parser.add_argument(
        "--health-path",
        type=_health_path,
        metavar="PATH",
        help="answer GET/HEAD of PATH (e.g. /healthz) without going upstream: 200 while serving, 503 while draining",
    )
    parser.add_argument("--access-log", action="store_true", default=None, help="one line per exchange on stderr")
    parser.add_argument("--stock-loop", action="store_true", help="use asyncio's own loop instead of uvloop")
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    tls = parser.add_argument_group("TLS (see fastpipe.start_proxy)")
    tls.add_argument("--certfile", metavar="FILE", help="serve clients over HTTPS with this certificate (PEM)")
    tls.add_argument("--keyfile", metavar="FILE", help="the private key of --certfile (if not in the same file)")
    tls.add_argument("--upstream-ca", metavar="FILE", help="trust this PEM bundle for an https:// upstream")
    tls.add_argument("--upstream-insecure", action="store_true", help="do not verify the upstream's certificate")
    tls.add_argument("--upstream-cert", metavar="FILE", help="client certificate for mutual TLS to the upstream")
    tls.add_argument("--upstream-key", metavar="FILE", help="the private key of --upstream-cert")
    tls.add_argument("--upstream-sni", metavar="NAME", help="the name sent as SNI and verified (default: its host)")
    limits = parser.add_argument_group("limits (see fastpipe.http.Limits)")
    timeouts = ("connect_timeout", "upstream_timeout", "header_timeout", "idle_timeout", "tunnel_idle_timeout")
    for name in (*timeouts, "shutdown_grace"):
        limits.add_argument(
            f"--{name.replace('_', '-')}",
            type=float,
            metavar="SECONDS",
            help=f"default {getattr(defaults, name):g}",
        )
    for name in ("max_header_size", "max_header_count", "pool_size", "write_high_water", "write_low_water"):
        limits.add_argument(
            f"--{name.replace('_', '-')}", type=int, metavar="N", help=f"default {getattr(defaults, name)}"
        )
    limits.add_argument(
        "--max-body-size",
        type=_optional_size,
        default=argparse.SUPPRESS,
        metavar="BYTES",
        help=f"default {defaults.max_body_size} (none: no limit)",
    )
    limits.add_argument(
        "--rewrite-host", action="store_true", default=None, help="send the upstream's host:port as Host"
    )
    limits.add_argument(
        "--underscores-in-headers",
        action="store_true",
        default=None,
        help="forward request headers with '_' in their names (dropped by default, as nginx does)",
    )
    limits.add_argument(
        "--abort-on-client-eof",
        action="store_true",
        default=None,
        help="a client's FIN mid-response ends the exchange (as nginx)",
    )
    limits.add_argument(
        "--copy-bodies", action="store_true", default=None, help="forward parser copies instead of socket bytes"
    )


_LIMIT_FLAGS = (
    "connect_timeout",
    "upstream_timeout",
    "header_timeout",
    "idle_timeout",
    "tunnel_idle_timeout",
    "shutdown_grace",
    "max_header_size",
    "max_header_count",
    "underscores_in_headers",
    "pool_size",
    "write_high_water",
    "write_low_water",
    "rewrite_host",
    "abort_on_client_eof",
)


def _limit_options(args: argparse.Namespace) -> dict[str, Any]:
    """The limits given on the command line, and only those: a flag not given leaves the file's value."""
    given = {name: getattr(args, name) for name in _LIMIT_FLAGS if getattr(args, name) is not None}
    if hasattr(args, "max_body_size"):
        given["max_body_size"] = args.max_body_size
    if args.copy_bodies:
        given["zero_copy"] = False
    return given


class _Settings:
    """The proxy's settings with flags over the file over the defaults, resolved once."""

    def __init__(self, args: argparse.Namespace) -> None:
        from .gateway.config import ListenAddress, load_config
        from .http.limits import Limits

        self.config = None if args.config is None else load_config(args.config)
        server = self.config.server if self.config is not None else None
        self.limits = _limit_options(args)
        file_limits = self.config.limits if self.config is not None else {}
        self.grace: float = self.limits.get(
            "shutdown_grace", file_limits.get("shutdown_grace", Limits().shutdown_grace)
        )
        if args.listen is not None:
            self.listen = [ListenAddress(*args.listen)]
        elif server is not None:
            self.listen = list(server.listen)
        else:
            self.listen = [ListenAddress("127.0.0.1", 8080)]
        self.workers: int = args.workers if args.workers is not None else server.workers if server else 1
        self.access_log: bool = bool(args.access_log if args.access_log is not None else server and server.access_log)
        self.metrics = ListenAddress(*args.metrics) if args.metrics is not None else server.metrics if server else None
        self.upstream: str | None = args.upstream
        self.shown_target = args.upstream if args.upstream is not None else f"the routes of {args.config}"


def _say(text: str) -> None:
    from .http.workers import say

    say("fastpipe", text)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


async def _serve(args: argparse.Namespace, settings: _Settings) -> int:
    from .http.proxy import start_proxy

    listen = settings.listen[0] if len(settings.listen) == 1 else None
    server = await start_proxy(
        settings.upstream,
        config=settings.config,
        host=None if listen is None else listen.host,
        port=None if listen is None else listen.port,
        metrics_listen=settings.metrics,
        access_log=settings.access_log,
        reuse_port=args.reuse_port,
        health_path=args.health_path,
        certfile=args.certfile,
        keyfile=args.keyfile,
        upstream_ca=args.upstream_ca,
        upstream_insecure=args.upstream_insecure,
        upstream_cert=args.upstream_cert,
        upstream_key=args.upstream_key,
        upstream_sni=args.upstream_sni,
        **settings.limits,
    )
    from .http.proxy import proxy_of

    health = f", health {args.health_path}" if args.health_path else ""
    scheme = "https" if args.certfile else "http"
    for listening in proxy_of(server).servers:
        bound = listening.sockets[0].getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        _say(
            f"proxy listening on {scheme}://{shown}:{bound[1]} -> {settings.shown_target}"
            f" (grace {settings.grace:g} s{health})"
        )
    served_metrics = proxy_of(server).metrics_server
    if served_metrics is not None:
        _say(f"metrics on {served_metrics.url}")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        # A stop signal can arrive twice: systemd's default KillMode and a terminal's Ctrl-C signal every
        # process of the group, and the --workers supervisor forwards the one it got. The first one starts
        # the drain; a later one must not cut it short (the grace bounds it; SIGKILL stops at once).
        if stop.is_set():
            _say(f"{sig.name} again: already shutting down (grace {settings.grace:g} s; SIGKILL stops at once)")
            return
        received.append(sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await stop.wait()
        await _drain(server, settings.grace, received[0].name)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)  # a late duplicate must not turn a clean exit into a kill
    return 0


async def _drain(server: asyncio.Server, grace: float, cause: str) -> None:
    """Graceful shutdown with a log line at each stage: start, progress once a second, and how it ended."""
    from .http.proxy import proxy_of, shutdown_proxy

    proxy = proxy_of(server)
    busy = sum(1 for connection in proxy.connections if connection.busy)
    idle = len(proxy.connections) - busy
    _say(
        f"{cause}: shutting down: stopped accepting; draining {_count(busy, 'connection')} with an exchange in "
        f"flight, closing {idle} idle; grace {grace:g} s"
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    shutdown = asyncio.ensure_future(shutdown_proxy(server, grace))
    left = busy  # connections still open the last time we looked before the grace deadline
    report = started + 1.0
    while not shutdown.done():
        await asyncio.wait({shutdown}, timeout=0.05)
        now = loop.time()
        if now - started < grace:
            left = len(proxy.connections)
            if now >= report and left:
                _say(
                    f"draining: {_count(left, 'connection')} still in flight after {now - started:.0f} s of {grace:g} s"
                )
                report += 1.0
    await shutdown
    elapsed = loop.time() - started
    if elapsed < grace or not left:
        _say(f"drained: every exchange in flight finished ({elapsed:.2f} s); stopped")
    else:
        _say(f"grace deadline: cut {_count(left, 'connection')} still in flight after {grace:g} s; stopped")


def _proxy(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .gateway.config import ConfigError

    if (args.upstream is None) == (args.config is None):
        print("fastpipe proxy: give --upstream URL (one route) or --config FILE (routes), one of them", file=sys.stderr)
        return 2
    try:
        settings = _Settings(args)
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 2
    except OSError as error:
        print(f"fastpipe proxy: cannot read {args.config}: {error.strerror or error}", file=sys.stderr)
        return 2
    if settings.workers < 1:
        print("fastpipe: --workers must be at least 1", file=sys.stderr)
        return 2
    if settings.workers > 1 and len(settings.listen) > 1:
        print("fastpipe: --workers needs one listen address ([server] listen has several)", file=sys.stderr)
        return 2
    if settings.access_log:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access = logging.getLogger("fastpipe.access")
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    if settings.workers > 1:
        from .http.workers import run_supervisor

        worker_argv = _without_options(argv, {"--workers", "--listen"})
        listen = settings.listen[0]
        return run_supervisor(
            worker_argv, settings.workers, listen.host, listen.port, settings.grace, metrics=settings.metrics
        )
    return run(lambda: _serve(args, settings), stock_loop=args.stock_loop)


def _without_options(argv: Sequence[str], names: set[str]) -> list[str]:
    """``argv`` after the subcommand, less the named options and their values."""
    kept: list[str] = []
    skip = False
    for item in argv[1:]:
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name in names:
            skip = "=" not in item
            continue
        kept.append(item)
    return kept


def _demo(args: argparse.Namespace) -> int:
    if args.which == "all" and args.rest:
        print("fastpipe: demo options go with one demo: fastpipe demo hazard|proxy [options]", file=sys.stderr)
        return 2
    status = 0
    if args.which in ("hazard", "all"):
        from .demo import hazard

        status |= hazard.main(args.rest)
    if args.which in ("proxy", "all"):
        from .demo import proxy

        status |= proxy.main(args.rest)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="fastpipe", description="fastpipe: stream bodies without losing their owner.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _proxy_parser(subparsers)
    demo = subparsers.add_parser("demo", help="run the built-in demos", description="Run the built-in demos.")
    demo.add_argument("which", nargs="?", choices=("hazard", "proxy", "all"), default="all")
    demo.add_argument("rest", nargs=argparse.REMAINDER, help="options passed on to the demo")
    check = subparsers.add_parser("check-config", help="check a gateway configuration file (print its routes)")
    check.add_argument("file", metavar="FILE", help="the TOML file; problems are printed as FILE:LINE: message")
    args = parser.parse_args(argv)
    if args.command == "proxy":
        return _proxy(args, argv)
    if args.command == "check-config":
        from .gateway.check import check_config_main

        return check_config_main([args.file])
    return _demo(args)


if __name__ == "__main__":
    sys.exit(main())
