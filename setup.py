"""Build the compiled Pipe.

Switches (environment):
  FASTPIPE_NO_EXTENSIONS=1   build a pure-Python package (the twin in ``_pipe_py.py`` serves).
  FASTPIPE_CYTHON_TRACE=1    compile with Cython line tracing, for coverage and profilers (slow).
  CFLAGS                     extra compiler flags, as for any setuptools build.

A compiler error fails the build: a broken extension must never ship quietly as the slow twin.
"""

import os
import sys

from setuptools import Extension, setup

NO_EXTENSIONS = os.environ.get("FASTPIPE_NO_EXTENSIONS", "") not in ("", "0") or (sys.implementation.name != "cpython")
TRACE = os.environ.get("FASTPIPE_CYTHON_TRACE", "") not in ("", "0")


def extensions():
    if NO_EXTENSIONS:
        print("fastpipe: FASTPIPE_NO_EXTENSIONS set, building the pure-Python package")
        return []
    from Cython.Build import cythonize

    directives = {
        # Chosen on purpose; see the header of _pipe.pyx for the per-file ones.
        "language_level": "3",
        "embedsignature": True,
        "embedsignature.format": "clinic",  # a __text_signature__ that inspect and stubtest read
        "linetrace": TRACE,
        "profile": False,
    }
    macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")] if TRACE else []
    pipe = Extension(
        "fastpipe._pipe",
        ["src/fastpipe/_pipe.pyx"],
        depends=["src/fastpipe/_pipe_helpers.h"],  # shipped in the sdist as package data (pyproject.toml)
        extra_compile_args=["-O3"],
        define_macros=macros,
    )
    print(f"fastpipe: building the compiled Pipe ({'line tracing' if TRACE else 'optimised'})")
    return cythonize([pipe], compiler_directives=directives, annotate=False)


setup(ext_modules=extensions())
