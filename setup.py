"""Build the compiled Pipe and the compiled request path.

Switches (environment):
  FASTPIPE_NO_EXTENSIONS=1   build a pure-Python package (the twin in ``_pipe_py.py`` serves).
  FASTPIPE_CYTHON_TRACE=1    compile with Cython line tracing, for coverage and profilers (slow).
  CFLAGS                     extra compiler flags, as for any setuptools build.

A compiler error fails the build: a broken extension must never ship quietly as the slow twin.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NO_EXTENSIONS = os.environ.get("FASTPIPE_NO_EXTENSIONS", "") not in ("", "0") or (sys.implementation.name != "cpython")
TRACE = os.environ.get("FASTPIPE_CYTHON_TRACE", "") not in ("", "0")

# Modules of the proxy's request path compiled from their .py (FASTPIPE_NO_EXTENSIONS=1 at run time imports
# the .py instead: fastpipe/_backend.py).
REQUEST_PATH = [
    "fastpipe.gateway.balance",
    "fastpipe.http.deadlines",
    "fastpipe.http.exchange",
    "fastpipe.http.read_gate",
    "fastpipe.http.request_head",
    "fastpipe.http.routing",
    "fastpipe.http.server",
    "fastpipe.http.upstream",
]


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
    # The request path: plain .py modules compiled as they are (Cython's pure-Python mode), their C types
    # and extension types declared in the .pxd beside each. Annotations stay hints: only the .pxd types.
    # -O2 without debug information compiles their 170,000 lines of C in half the time of -O3 -g and runs
    # the same instructions per request within 1% (callgrind).
    request_path = [
        Extension(name, [f"src/{name.replace('.', '/')}.py"], extra_compile_args=["-O2", "-g0"], define_macros=macros)
        for name in REQUEST_PATH
    ]
    print(f"fastpipe: building the compiled Pipe and request path ({'line tracing' if TRACE else 'optimised'})")
    jobs = os.cpu_count() or 1
    return [
        *cythonize([pipe], compiler_directives=directives, annotate=False),
        *cythonize(
            request_path,
            compiler_directives={**directives, "annotation_typing": False},
            annotate=False,
            nthreads=jobs,
        ),
    ]


class ParallelBuildExt(build_ext):
    """Compile the extensions side by side, one per core (setuptools compiles one at a time by default)."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1


setup(ext_modules=extensions(), cmdclass={"build_ext": ParallelBuildExt})
