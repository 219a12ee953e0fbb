"""The backend selector: compiled by default, the twin on request, loud on a broken build."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# A meta-path hook in a fresh interpreter stands in for the extension being absent or broken.
HOOK = textwrap.dedent(
    """
    import importlib.abc, sys, warnings
    warnings.simplefilter("always")
    MODE = {mode!r}

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != "fastpipe._pipe" or MODE == "intact":
                return None
            if MODE == "absent":
                raise ModuleNotFoundError("No module named 'fastpipe._pipe'", name="fastpipe._pipe")
            raise ImportError("fastpipe/_pipe.so: undefined symbol: PyIter_Send_broken")

    sys.meta_path.insert(0, Finder())
    try:
        import fastpipe
    except ImportError as exc:
        print("IMPORT-ERROR", exc)
    else:
        print("EXTENSION", fastpipe.EXTENSION, type(fastpipe.Pipe).__module__, fastpipe.Pipe.__module__)
    """
)


def run_with(mode: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "FASTPIPE_NO_EXTENSIONS"}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", HOOK.format(mode=mode)],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )


def test_absent_extension_falls_back_to_the_twin_with_a_warning() -> None:
    result = run_with("absent")
    assert "EXTENSION False" in result.stdout
    assert "fastpipe._pipe_py" in result.stdout
    assert "RuntimeWarning" in result.stderr and "not built" in result.stderr


def test_absent_extension_also_runs_the_request_path_from_source() -> None:
    """The compiled request path calls the compiled Pipe in C, so without it the proxy's modules are the
    .py ones too (and they import and serve with the twin)."""
    script = HOOK.format(mode="absent") + textwrap.dedent(
        """
        import asyncio
        from fastpipe._backend import is_compiled
        from fastpipe.http import server, start_proxy, upstream
        print("REQUEST-PATH-COMPILED", is_compiled(server), is_compiled(upstream))

        async def main():
            origin = await asyncio.start_server(answer, "127.0.0.1", 0)
            proxy = await start_proxy("http://127.0.0.1:%d" % origin.sockets[0].getsockname()[1], port=0)
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.sockets[0].getsockname()[1])
            writer.write(b"GET / HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\n\\r\\n")
            print("ANSWER", (await asyncio.wait_for(reader.read(), 10)).split(b"\\r\\n")[0].decode())

        async def answer(reader, writer):
            await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")

        asyncio.run(main())
        """
    )
    environment = {key: value for key, value in os.environ.items() if key != "FASTPIPE_NO_EXTENSIONS"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=environment, check=False
    )
    assert "EXTENSION False" in result.stdout, result.stderr
    assert "REQUEST-PATH-COMPILED False False" in result.stdout, result.stderr
    assert "ANSWER HTTP/1.1 200 OK" in result.stdout, result.stderr


def test_broken_extension_raises_instead_of_falling_back() -> None:
    result = run_with("broken")
    assert "IMPORT-ERROR" in result.stdout
    assert "undefined symbol" in result.stdout


def test_no_extensions_variable_selects_the_twin_without_a_warning() -> None:
    result = run_with("broken", FASTPIPE_NO_EXTENSIONS="1")
    assert "EXTENSION False" in result.stdout and "fastpipe._pipe_py" in result.stdout
    assert "RuntimeWarning" not in result.stderr


@pytest.mark.parametrize("value", ["", "0"])
def test_empty_or_zero_no_extensions_variable_keeps_the_compiled_pipe(value: str) -> None:
    result = run_with("intact", FASTPIPE_NO_EXTENSIONS=value)
    assert result.stdout.split() == ["EXTENSION", "True", "builtins", "fastpipe._pipe"], result.stderr
