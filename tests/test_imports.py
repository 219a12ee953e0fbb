"""What ``import fastpipe`` loads: the Pipe and the adapters, not the proxy (and so not httptools)."""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys; {code}; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return set(result.stdout.split())


def test_import_fastpipe_leaves_the_proxy_and_httptools_unloaded() -> None:
    loaded = _loaded_after("import fastpipe; fastpipe.Pipe, fastpipe.tee, fastpipe.from_httpx")
    assert "httptools" not in loaded and "fastpipe.http" not in loaded
    assert "fastpipe.demo" not in loaded and "fastpipe._origin" not in loaded


def test_the_proxy_names_load_on_first_use() -> None:
    loaded = _loaded_after("import fastpipe; fastpipe.start_proxy, fastpipe.http.Proxy, fastpipe.Limits()")
    assert {"httptools", "fastpipe.http", "fastpipe.http.proxy"} <= loaded


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import fastpipe; fastpipe.no_such_name"], capture_output=True, text=True, timeout=60
    )
    assert (
        result.returncode == 1 and "AttributeError: module 'fastpipe' has no attribute 'no_such_name'" in result.stderr
    )
