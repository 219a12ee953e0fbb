"""The compiled Pipe is really in use: a machine that can build it must not quietly serve the twin."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
import sysconfig

import fastpipe
from fastpipe import _errors, _pipe_py
from fastpipe._backend import NO_EXTENSIONS


def _has_c_compiler() -> bool:
    if shutil.which("cc"):
        return True
    configured = sysconfig.get_config_var("CC") or ""
    return bool(configured.split()) and shutil.which(configured.split()[0]) is not None


def test_compiled_pipe_is_in_use_wherever_a_c_compiler_exists() -> None:
    if NO_EXTENSIONS:
        assert fastpipe.EXTENSION is False
        assert fastpipe.Pipe is _pipe_py.Pipe
    elif _has_c_compiler() and sys.implementation.name == "cpython":
        assert fastpipe.EXTENSION is True, (
            "a C compiler is available but fastpipe serves the pure-Python twin: build the extension "
            "(`python setup.py build_ext --inplace`) or set FASTPIPE_NO_EXTENSIONS=1 on purpose"
        )
    else:
        assert fastpipe.EXTENSION is (fastpipe.Pipe is not _pipe_py.Pipe)


def test_default_mode_exports_the_compiled_types() -> None:
    if NO_EXTENSIONS:
        assert (fastpipe.Pipe, fastpipe.wrap) == (_pipe_py.Pipe, _pipe_py.wrap)
        return
    compiled = importlib.import_module("fastpipe._pipe")
    assert fastpipe.Pipe is compiled.Pipe
    assert fastpipe.wrap is compiled.wrap
    assert fastpipe.EXTENSION is True
    assert compiled.__file__ is not None
    assert compiled.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_both_implementations_share_one_pipe_error() -> None:
    assert fastpipe.PipeError is _errors.PipeError
    assert _pipe_py.PipeError is fastpipe.PipeError
    if not NO_EXTENSIONS:
        compiled = importlib.import_module("fastpipe._pipe")
        assert getattr(compiled, "PipeError", fastpipe.PipeError) is fastpipe.PipeError


def test_no_extensions_switch_selects_the_twin_in_a_fresh_interpreter() -> None:
    script = (
        "import fastpipe, fastpipe._pipe_py as twin; "
        "assert fastpipe.EXTENSION is False; "
        "assert fastpipe.Pipe is twin.Pipe and fastpipe.wrap is twin.wrap; "
        "print('twin')"
    )
    env = {**os.environ, "FASTPIPE_NO_EXTENSIONS": "1"}
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "twin"
