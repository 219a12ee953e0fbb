#!/bin/sh
# Build the wheels the proxy needs into OUTPUT_DIR: fastpipe's own, with the Pipe compiled for this python3,
# and those of its dependencies, so that installing them needs neither a compiler nor an index.
# The build stage of deploy/Dockerfile runs it; a test runs it too, as a plain script, where docker is absent.
# Needs python3 with pip, a C compiler and the Python headers. Run it from the source tree's root:
#   sh deploy/build-wheel.sh /tmp/wheels
set -eu
out=${1:?usage: sh deploy/build-wheel.sh OUTPUT_DIR}
python3 -m pip wheel --wheel-dir "$out" .
# A wheel without the compiled Pipe would serve with the slow twin: refuse it here, not in production.
python3 - "$out" <<'CHECK'
import glob
import sys
import zipfile

wheels = glob.glob(f"{sys.argv[1]}/fastpipe-*.whl")
if len(wheels) != 1:
    sys.exit(f"expected one fastpipe wheel in {sys.argv[1]}, found {wheels}")
names = zipfile.ZipFile(wheels[0]).namelist()
if not any(name.startswith("fastpipe/_pipe.") and name.endswith(".so") for name in names):
    sys.exit(f"{wheels[0]} lacks the compiled Pipe")
print(f"built {wheels[0]} with the compiled Pipe")
CHECK
