"""``fastpipe proxy --config FILE`` as a subprocess: the file serves, flags given override it, flags not given
never do, and a bad file stops the start with FILE:LINE."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from ._gateway_support import NamedOrigin, closed_port, origins

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def _config(api: NamedOrigin, port: int, timeout: float) -> str:
    return f"""
[server]
listen = "127.0.0.1:{port}"

[limits]
upstream_timeout = {timeout}

[upstreams.api]
servers = ["{api.url}"]

[[routes]]
name = "api"
path_prefix = "/"
upstream = "api"
"""


@asynccontextmanager
async def _proxy(*args: str) -> AsyncIterator[int]:
    process = subprocess.Popen([sys.executable, "-m", "fastpipe", "proxy", *args], stderr=subprocess.PIPE, env=ENV)
    assert process.stderr is not None
    loop = asyncio.get_running_loop()
    try:
        line = await asyncio.wait_for(loop.run_in_executor(None, process.stderr.readline), 20)
        match = LISTENING.search(line)
        assert match is not None, f"the proxy did not start: {line!r}"
        yield int(match.group(1))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await loop.run_in_executor(None, process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stderr.close()


async def test_the_file_serves_on_its_listen_address(tmp_path: Path) -> None:
    async with origins("api") as (api,):
        port = closed_port()
        path = _write(tmp_path, _config(api, port, 5))
        async with _proxy("--config", str(path)) as bound:
            assert bound == port
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://127.0.0.1:{port}/hello")
            assert response.json()["server"] == "api" and response.json()["path"] == "/hello"


async def test_a_flag_given_overrides_the_file_and_a_flag_not_given_does_not(tmp_path: Path) -> None:
    async with origins("api") as (api,):
        path = _write(tmp_path, _config(api, closed_port(), 0.3))
        async with httpx.AsyncClient() as client:
            # --listen given: it wins over [server] listen; the file's 0.3 s upstream_timeout holds
            async with _proxy("--config", str(path), "--listen", "127.0.0.1:0") as port:
                response = await client.get(f"http://127.0.0.1:{port}/slow?seconds=0.8")
                assert response.status_code == 504
            # --upstream-timeout given: it wins over [limits]
            async with _proxy("--config", str(path), "--listen", "127.0.0.1:0", "--upstream-timeout", "5") as port:
                response = await client.get(f"http://127.0.0.1:{port}/slow?seconds=0.8")
                assert response.status_code == 200


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastpipe", "proxy", *args], capture_output=True, text=True, env=ENV, timeout=30
    )


def test_a_bad_file_stops_the_start_with_file_and_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[upstreams.api]\nservers = ["http://127.0.0.1:9"]\n\n[[routes]]\nupstream = "nope"\nretries = 3\n',
    )
    result = _run("--config", str(path))
    assert result.returncode == 2
    assert f"{path}:5: routes[0].upstream: unknown upstream 'nope'" in result.stderr
    assert f"{path}:6: routes[0].retries: unknown key" in result.stderr


def test_a_missing_environment_variable_is_an_error_at_start(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[upstreams.api]\nservers = ["http://127.0.0.1:9"]\n\n[[routes]]\nupstream = "api"\n'
        'set_request_headers = { Authorization = "Bearer ${FASTPIPE_SURELY_UNSET_KEY}" }\n',
    )
    result = _run("--config", str(path))
    assert result.returncode == 2 and "FASTPIPE_SURELY_UNSET_KEY" in result.stderr


def test_upstream_and_config_together_or_neither_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, '[upstreams.api]\nservers = ["http://127.0.0.1:9"]\n\n[[routes]]\nupstream = "api"\n')
    both = _run("--config", str(path), "--upstream", "http://127.0.0.1:9")
    neither = _run()
    missing = _run("--config", str(tmp_path / "absent.toml"))
    for result in (both, neither):
        assert result.returncode == 2 and "--upstream URL (one route) or --config FILE" in result.stderr
    assert missing.returncode == 2 and "absent.toml" in missing.stderr
