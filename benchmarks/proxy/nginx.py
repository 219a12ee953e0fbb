"""nginx, configured from scratch in a temporary directory: as the static origin and as the reference proxy.

Both run one worker with keep-alive that never expires during a run; nothing is logged per request. The proxy
follows the issue's reference setup: ``proxy_pass`` to an upstream block with keep-alive connections, HTTP/1.1
upstream, ``proxy_buffering off`` with 64 KiB buffers, so bodies stream instead of spooling. Three variants:

* ``http``: the plaintext upstream;
* ``tls``: the same over TLS (``proxy_pass https://``): the origin's certificate verified against the run's CA,
  its name sent as SNI and verified (``proxy_ssl_name``), sessions reused, upstream keep-alive as before;
* ``ws``: WebSocket proxying as nginx documents it (``Upgrade``/``Connection: upgrade`` set towards the origin).

The static origin serves the same files over TLS on a second port when the run has TLS cells.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

from .processes import Managed, spawn
from .tls import TlsFiles

WORKER_CONNECTIONS = 65536

COMMON = """\
{user}worker_processes 1;
worker_rlimit_nofile {rlimit};
pid {root}/nginx.pid;
error_log {root}/error.log warn;
daemon off;
events {{
    worker_connections {connections};
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {root}/tmp_body;
    proxy_temp_path {root}/tmp_proxy;
    fastcgi_temp_path {root}/tmp_fastcgi;
    uwsgi_temp_path {root}/tmp_uwsgi;
    scgi_temp_path {root}/tmp_scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server_tokens off;
{body}
}}
"""

ORIGIN = """\
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    server {{
        listen {host}:{port} backlog=4096;
        root {docroot};
        location / {{ }}
    }}
"""

ORIGIN_TLS = """\
    server {{
        listen {host}:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {docroot};
        location / {{ }}
    }}
"""

PROXY = """\
    upstream origin {{
        server {upstream};
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_read_timeout 600s;
        }}
    }}
"""

PROXY_TLS = """\
    upstream origin {{
        server {upstream};
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass https://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 2;
            proxy_ssl_server_name on;
            proxy_ssl_name {name};
            proxy_ssl_session_reuse on;
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_read_timeout 600s;
        }}
    }}
"""

PROXY_WS = """\
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
        }}
    }}
"""


def binary() -> str | None:
    return shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)), None
    )


@cache
def version() -> str:
    path = binary()
    if path is None:
        return "absent"
    out = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)
    match = re.search(r"nginx/(\S+)", out.stderr + out.stdout)
    return match.group(1) if match else "unknown"


def write_config(root: Path, body: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config = COMMON.format(
        user="user root;\n" if os.geteuid() == 0 else "",
        rlimit=2 * WORKER_CONNECTIONS,
        root=root,
        connections=WORKER_CONNECTIONS,
        body=body,
    )
    path = root / "nginx.conf"
    path.write_text(config)
    return path


def start(name: str, root: Path, body: str, *, log_dir: Path, cpus: frozenset[int] | None) -> Managed:
    path = binary()
    if path is None:
        raise RuntimeError("nginx is not installed")
    config = write_config(root, body)
    return spawn(
        name, [path, "-p", str(root), "-c", str(config), "-e", str(root / "error.log")], log_dir=log_dir, cpus=cpus
    )


def start_origin(
    root: Path,
    docroot: Path,
    host: str,
    port: int,
    *,
    log_dir: Path,
    cpus: frozenset[int] | None,
    tls_port: int | None = None,
    tls: TlsFiles | None = None,
) -> Managed:
    body = ORIGIN.format(host=host, port=port, docroot=docroot)
    if tls is not None and tls_port is not None:
        body += ORIGIN_TLS.format(host=host, port=tls_port, docroot=docroot, cert=tls.cert, key=tls.key)
    return start("nginx-origin", root, body, log_dir=log_dir, cpus=cpus)


def start_proxy(
    root: Path,
    upstream: str,
    host: str,
    port: int,
    *,
    log_dir: Path,
    cpus: frozenset[int] | None,
    variant: str = "http",
    tls: TlsFiles | None = None,
) -> Managed:
    """nginx as the reference proxy in front of ``upstream`` (HOST:PORT); ``variant`` is http, tls or ws."""
    if variant == "tls":
        assert tls is not None
        body = PROXY_TLS.format(upstream=upstream, host=host, port=port, ca=tls.ca, name=tls.name)
    elif variant == "ws":
        body = PROXY_WS.format(upstream=upstream, host=host, port=port)
    else:
        body = PROXY.format(upstream=upstream, host=host, port=port)
    return start("nginx-proxy", root, body, log_dir=log_dir, cpus=cpus)
