"""The compiled request path: built and in use wherever the Pipe is, its ``.py`` under FASTPIPE_NO_EXTENSIONS,
and a loud warning when a module compiled in place is older than its source."""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import fastpipe
from fastpipe._backend import NO_EXTENSIONS, CompiledModules, is_compiled

SETUP = Path(__file__).resolve().parents[2] / "setup.py"


def request_path() -> list[str]:
    """The modules setup.py compiles from their .py (its REQUEST_PATH)."""
    for node in ast.parse(SETUP.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["REQUEST_PATH"]:
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no REQUEST_PATH")


def test_every_compiled_module_has_its_declarations_beside_it() -> None:
    names = request_path()
    assert "fastpipe.http.server" in names and "fastpipe.http.upstream" in names
    for name in names:
        source = SETUP.parent / "src" / Path(*name.split("."))
        assert source.with_suffix(".py").is_file() and source.with_suffix(".pxd").is_file(), name


@pytest.mark.parametrize("name", request_path())
def test_compiled_wherever_the_pipe_is_and_the_source_under_the_switch(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    if NO_EXTENSIONS:
        assert not is_compiled(module) and module.__file__.endswith(".py")
    else:
        # The Pipe's own test fails where a compiler exists and it did not build; the request path goes with it.
        assert is_compiled(module) is fastpipe.EXTENSION, module.__file__
        if fastpipe.EXTENSION:
            assert module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
            for declared in cdef_classes(name):  # extension types: C fields, no instance dict
                assert "__dict__" not in vars(getattr(module, declared)), declared


@pytest.mark.parametrize("name", request_path())
def test_each_compiled_module_can_be_the_first_one_imported(name: str) -> None:
    """The .pxd files cimport each other's types (a module's load imports the ones it reads); whichever of
    them a program imports first, the others load under it without a cycle."""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {name}"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]


def cdef_classes(name: str) -> list[str]:
    pxd = (SETUP.parent / "src" / Path(*name.split("."))).with_suffix(".pxd").read_text()
    return [line.split()[2].rstrip(":") for line in pxd.splitlines() if line.startswith("cdef class ") and ":" in line]


SWITCHED = textwrap.dedent(
    """
    import asyncio, sys
    import fastpipe._backend as backend
    from fastpipe.http import shutdown_proxy, start_proxy, upstream

    async def origin(reader, writer):
        await reader.readuntil(b"\\r\\n\\r\\n")
        writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\nConnection: close\\r\\n\\r\\nhello")
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(origin, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        proxy = await start_proxy(f"http://127.0.0.1:{port}", host="127.0.0.1", port=0)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.sockets[0].getsockname()[1])
        writer.write(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await shutdown_proxy(proxy, grace=1)
        server.close()
        await server.wait_closed()
        print(upstream.__file__.rsplit("/", 1)[1], backend.is_compiled(upstream), answer.endswith(b"hello"))

    asyncio.run(main())
    """
)


def test_no_extensions_switch_imports_the_source_and_the_proxy_serves() -> None:
    env = {**os.environ, "FASTPIPE_NO_EXTENSIONS": "1"}
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", SWITCHED], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["upstream.py", "False", "True"]


def _fake_build(tmp_path: Path, source_newer: bool, in_place: bool = True) -> Path:
    """A package directory holding ``fake.py`` and a compiled ``fake`` beside it (an empty file: only its
    name and time matter to the finder, which never loads it); ``in_place``: Cython's ``fake.c`` there too."""
    compiled = tmp_path / ("fake" + importlib.machinery.EXTENSION_SUFFIXES[0])
    source = tmp_path / "fake.py"
    compiled.write_bytes(b"")
    source.write_text("")
    if in_place:
        (tmp_path / "fake.c").write_text("")
    now = time.time()
    os.utime(compiled, (now, now))
    os.utime(source, (now + 60, now + 60) if source_newer else (now - 60, now - 60))
    return tmp_path


def test_a_module_compiled_in_place_and_older_than_its_source_warns(tmp_path: Path) -> None:
    package = _fake_build(tmp_path, source_newer=True)
    with pytest.warns(RuntimeWarning, match=r"fake\.cpython.* is older than fake\.py.*make build"):
        spec = CompiledModules(prefer_source=False).find_spec("fastpipe.fake", [str(package)])
    assert spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)


def test_a_fresh_compiled_module_is_imported_compiled_without_a_word(tmp_path: Path) -> None:
    package = _fake_build(tmp_path, source_newer=False)
    spec = CompiledModules(prefer_source=False).find_spec("fastpipe.fake", [str(package)])  # warnings are errors
    assert spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)


def test_an_installed_package_is_not_judged_by_its_unpacking_times(tmp_path: Path) -> None:
    # pip unpacks a wheel's files in name order, so fake.py can be a moment newer than the compiled file.
    package = _fake_build(tmp_path, source_newer=True, in_place=False)
    spec = CompiledModules(prefer_source=False).find_spec("fastpipe.fake", [str(package)])  # warnings are errors
    assert spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)


def test_the_switch_imports_the_source_of_a_compiled_module(tmp_path: Path) -> None:
    package = _fake_build(tmp_path, source_newer=True)
    spec = CompiledModules(prefer_source=True).find_spec("fastpipe.fake", [str(package)])
    assert spec is not None and spec.origin == str(package / "fake.py")
    assert CompiledModules(prefer_source=True).find_spec("other.fake", [str(package)]) is None  # fastpipe's only
