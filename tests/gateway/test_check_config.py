"""``fastpipe check-config FILE`` as a user runs it: a subprocess, its output and its exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .test_config import FULL

SECRET = "sk-live-do-not-print-4242"


def check_config(path: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastpipe", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **environ},
    )


def test_valid_file_prints_one_line_per_route_and_never_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        FULL
        + '\n[[routes]]\nhost = "*.example.com"\npath_prefix = "/api/"\nupstream = "api"\nstrip_prefix = true\n'
        + 'set_request_headers = { "X-Api-Key" = "${OPENAI_API_KEY}", "X-Team" = "blue" }\n'
    )
    done = check_config(path, OPENAI_API_KEY=SECRET)
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines == [
        "chat: host api.example.com, path_prefix /v1/ -> api (round-robin: http://127.0.0.1:9001, "
        "http://127.0.0.1:9002), set Authorization: Bearer ${OPENAI_API_KEY}, limits upstream_timeout=300, "
        "usage openai (drain 1048576 bytes, 30 s)",
        "*.example.com /api/: host *.example.com, path_prefix /api/ -> api (round-robin: http://127.0.0.1:9001, "
        "http://127.0.0.1:9002), strip_prefix, set X-Api-Key: ${OPENAI_API_KEY}, set X-Team: blue",
    ]


def test_secret_in_a_bad_value_is_not_printed_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(FULL.replace('"http://127.0.0.1:9002"', '"http://${OPENAI_API_KEY}:x"'))
    done = check_config(path, OPENAI_API_KEY=SECRET)
    assert done.returncode == 1
    assert SECRET not in done.stdout + done.stderr
    assert done.stderr.startswith(f"{path}:11: upstreams.api.servers[1]: ")


def test_errors_are_file_line_message_and_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        FULL.replace('upstream = "api"', 'upstream = "apx"').replace("retries = 1", "retries = 1\nretry = 2")
    )
    environ = dict(os.environ)
    environ.pop("OPENAI_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "fastpipe", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=environ,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"{path}:16: upstreams.api.retry: unknown key 'retry' (known: servers, balance, max_fails, fail_timeout, "
        "retries)",
        f"{path}:22: routes[0].upstream: unknown upstream 'apx' (defined: api)",
        f"{path}:24: routes[0].set_request_headers.Authorization: environment variable OPENAI_API_KEY is not set "
        "(referenced as ${OPENAI_API_KEY})",
    ]


def test_the_readme_example_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("### Gateway: routes") :]
    example = section[section.index("```toml\n") + 8 : section.index("```\n", section.index("```toml\n") + 8)]
    path = tmp_path / "gateway.toml"
    path.write_text(example)
    done = check_config(path, OPENAI_API_KEY=SECRET)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("chat: host api.example.com, path_prefix /v1/ -> api")


def test_missing_file(tmp_path: Path) -> None:
    done = check_config(tmp_path / "nope.toml")
    assert done.returncode == 1
    assert done.stderr.startswith(f"{tmp_path / 'nope.toml'}: cannot read the file")
