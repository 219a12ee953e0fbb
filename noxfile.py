"""The test matrix: the core of the suite on every supported Python this machine has.

    nox                       # `core` on 3.10, 3.11, 3.12 and 3.13; a missing interpreter is skipped, loudly
    nox -s core-3.12          # one version
    nox -s core-3.12 -- -k keep_alive     # arguments after -- go to pytest
    FASTPIPE_SDIST=dist/fastpipe-0.1.0.tar.gz nox     # install that sdist instead of the checkout

Each session makes a fresh venv with that interpreter, installs the package with its test extra (which
compiles the Pipe and the request path against that interpreter's headers), checks that both loaded
compiled (with warnings as errors), and runs the
core: the Pipe, proxy and adapter tests and the gateway's configuration and routing, less the slow ones
and a few that spend minutes on volume rather than on what differs between versions (see CORE_LEFT_OUT),
with the Pipe and adapter tests on asyncio's loop only. The full suite runs once, on the development
version, through ``make test``.

The checkout is installed in editable mode; with ``FASTPIPE_SDIST`` set, that sdist is installed instead,
so that sessions running side by side (as in CI) never build in the same tree.

Interpreters are looked up on PATH and, where pyenv keeps them, under ``$PYENV_ROOT/versions`` (the newest
patch release of each minor version), so a pyenv shim that would refuse to run does not hide one. Nox never
downloads an interpreter here.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

import nox

PYTHONS = ("3.10", "3.11", "3.12", "3.13")
CORE = (
    "tests/pipe",
    "tests/http",
    "tests/adapters",
    # the gateway's configuration (tomllib, or tomli before 3.11), matching and balancing, and its routes served
    "tests/gateway/test_config.py",
    "tests/gateway/test_toml_lines.py",
    "tests/gateway/test_routes.py",
    "tests/gateway/test_balance.py",
    "tests/gateway/test_routing_proxy.py",
)
# Left out of the core, run by the full suite only: the leak sweep over 100,000 pipes, and the large
# downloads under a gc.collect() per chunk through every ASGI server and client library (each minutes of
# CPU; the hazard they guard against is covered in the core by tests/pipe/test_hazard.py).
CORE_LEFT_OUT = (
    "--deselect=tests/pipe/test_leaks.py",
    "-k",
    "not forced_gc and not after_the_response_was_dropped",
)

nox.options.sessions = ["core"]
nox.options.envdir = "build/nox"  # build/ is ignored by git and removed by `make clean`
nox.options.error_on_missing_interpreters = False
nox.options.download_python = "never"
nox.options.default_venv_backend = "venv"


def _pyenv_interpreters() -> dict[str, Path]:
    """minor version -> the newest ``pythonX.Y`` of that minor version that pyenv installed."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    found: dict[str, tuple[tuple[int, ...], Path]] = {}
    if not root.is_dir():
        return {}
    for entry in root.iterdir():
        match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", entry.name)  # plain CPython releases only
        if match is None:
            continue
        minor = f"{match[1]}.{match[2]}"
        executable = entry / "bin" / f"python{minor}"
        release = tuple(int(part) for part in match.groups())
        if executable.is_file() and (minor not in found or found[minor][0] < release):
            found[minor] = (release, executable)
    return {minor: executable for minor, (_, executable) in found.items()}


def _announce_interpreters() -> None:
    """Put pyenv's interpreters first on PATH and say which supported version will run and which will not."""
    pyenv = _pyenv_interpreters()
    directories = [str(pyenv[version].parent) for version in PYTHONS if version in pyenv]
    os.environ["PATH"] = os.pathsep.join([*directories, os.environ.get("PATH", "")])
    for version in PYTHONS:
        where = pyenv.get(version)
        if where is None:
            found = shutil.which(f"python{version}")
            where = Path(found) if found and "/shims/" not in found else None
        shown = str(where) if where is not None else "NOT FOUND - its session will be reported as skipped"
        print(f"nox matrix: Python {version}: {shown}", file=sys.stderr)


_announce_interpreters()


@nox.session(python=PYTHONS)
def core(session: nox.Session) -> None:
    """The Pipe, proxy and adapter tests (not the slow ones) against the compiled Pipe and the twin."""
    sdist = os.environ.get("FASTPIPE_SDIST")
    if sdist:
        # The hash is part of pip's wheel-cache key: without it, a machine that built an older sdist at the
        # same path would install that older build from its cache.
        path = Path(sdist).resolve()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        session.install(f"fastpipe[test] @ {path.as_uri()}#sha256={digest}")
    else:
        session.install("-e", ".[test]")
    session.run(
        "python",
        "-W",
        "error",
        "-c",
        "import sys, fastpipe, fastpipe.http.server as server, fastpipe._backend as backend; "
        "print('fastpipe: compiled Pipe and request path loaded on', sys.version.split()[0]) "
        "if fastpipe.EXTENSION and backend.is_compiled(server) else sys.exit('fastpipe: NOT compiled')",
    )
    session.run(
        "python",
        "-m",
        "pytest",
        *CORE,
        "-m",
        "not slow",
        *CORE_LEFT_OUT,
        "-q",
        "-p",
        "no:cacheprovider",
        "--durations=5",
        *session.posargs,
        # The Pipe and adapter tests on asyncio's loop only: the full run on the development Python has
        # them on uvloop as well, and twice the minutes here would not fit the CI budget.
        env={"FASTPIPE_TESTS_ONE_LOOP": "1"},
    )
