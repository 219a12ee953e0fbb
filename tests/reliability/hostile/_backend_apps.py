"""The app every real back end serves in the differential tests: it says what the server parsed.

Each request is appended to the JSON-lines file named by ``FASTPIPE_BACKEND_LOG`` (method, path, headers as
the server handed them to the app, body size) and echoed back as JSON. ``/status/NNN`` answers NNN at once
without reading the body, as an origin refusing an upload does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

_LOG = os.environ.get("FASTPIPE_BACKEND_LOG", os.devnull)


def _log(entry: dict[str, Any]) -> bytes:
    line = json.dumps(entry)
    with open(_LOG, "a") as log:  # one short append per request: atomic enough for one worker
        log.write(line + "\n")
    return line.encode()


def _status_of(path: str) -> int | None:
    if path.startswith("/status/") and path[8:].isdigit():
        return int(path[8:])
    return None


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    headers = sorted([key, str(value)] for key, value in environ.items() if key.startswith("HTTP_"))
    status = _status_of(path)
    if status is not None:
        _log({"method": environ["REQUEST_METHOD"], "path": path, "headers": headers, "body": None})
        start_response(f"{status} Refused", [("Content-Type", "text/plain"), ("Content-Length", "7")])
        return [b"refused"]
    body = environ["wsgi.input"].read()
    payload = _log({"method": environ["REQUEST_METHOD"], "path": path, "headers": headers, "body": len(body)})
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]


async def asgi_app(
    scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Callable[..., Awaitable[None]]
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    headers = sorted([name.decode("latin-1"), value.decode("latin-1")] for name, value in scope["headers"])
    path = scope["path"]
    status = _status_of(path)
    if status is not None:
        _log({"method": scope["method"], "path": path, "headers": headers, "body": None})
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"7")]})
        await send({"type": "http.response.body", "body": b"refused"})
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    payload = _log({"method": scope["method"], "path": path, "headers": headers, "body": size})
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))],
        }
    )
    await send({"type": "http.response.body", "body": payload})
