"""The files under deploy/ as far as they can run here: the Dockerfile's stages as plain commands (docker is
not needed), the HAProxy and nginx configurations through their own checkers, the systemd unit through
``systemd-analyze verify``, and the timings that must agree across the Kubernetes manifest and the image."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ._fleet import ENV, free_port, haproxy_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, argument) per Dockerfile instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _dockerfile():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _run(command: str, cwd: Path, venv: Path, timeout: float) -> None:
    env = {key: value for key, value in ENV.items() if key != "FASTPIPE_NO_EXTENSIONS"}  # as in the image
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    result = subprocess.run(["sh", "-c", command], cwd=cwd, env=env, capture_output=True, timeout=timeout)
    assert result.returncode == 0, f"{command!r} failed:\n{result.stdout.decode()}\n{result.stderr.decode()}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dockerfile_stages_run_as_plain_commands(tmp_path: Path) -> None:
    """The build stage's COPY and RUN lines (less apt-get: the compiler is here already) build the wheels;
    the runtime stage's pip line installs them without an index; its ENTRYPOINT and CMD serve; its
    HEALTHCHECK passes while serving; its STOPSIGNAL stops the proxy cleanly."""
    build, runtime = _stages()
    source, wheels = tmp_path / "src", tmp_path / "wheels"
    source.mkdir()
    build_venv, runtime_venv = tmp_path / "build-venv", tmp_path / "runtime-venv"
    for venv in (build_venv, runtime_venv):
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)

    ran = 0
    for instruction, argument in build:
        if instruction == "COPY":
            *sources, target = argument.split()
            destination = source / target
            for name in sources:
                origin = ROOT / name
                if origin.is_dir():
                    shutil.copytree(
                        origin, destination, ignore=shutil.ignore_patterns("*.so", "*.c", "*.egg-info", "__pycache__")
                    )
                else:
                    destination.mkdir(parents=True, exist_ok=True)
                    shutil.copy(origin, destination / origin.name)
        elif instruction == "RUN" and "apt-get" not in argument:
            _run(argument.replace("/wheels", str(wheels)), source, build_venv, timeout=480)
            ran += 1
    assert ran == 1 and any(wheels.glob("fastpipe-*.whl"))

    pip = next(argument for instruction, argument in runtime if instruction == "RUN" and "pip install" in argument)
    _run(pip.split("&&")[0].replace("/wheels", str(wheels)), tmp_path, runtime_venv, timeout=300)
    python = runtime_venv / "bin" / "python"
    check = subprocess.run(
        [str(python), "-c", "import fastpipe; print(fastpipe.EXTENSION)"], capture_output=True, cwd=tmp_path, timeout=60
    )
    assert check.stdout.strip() == b"True", check

    values = {instruction: argument for instruction, argument in runtime}
    entrypoint, command = json.loads(values["ENTRYPOINT"]), json.loads(values["CMD"])
    health = json.loads(values["HEALTHCHECK"].split(" CMD ", 1)[1])
    port = free_port()
    # The image's own command, with a free port on 127.0.0.1 for 0.0.0.0:8080 and no upstream needed.
    argv = [a.replace("0.0.0.0:8080", f"127.0.0.1:{port}") for a in [*entrypoint, *command]]
    argv[argv.index("--upstream") + 1] = f"http://127.0.0.1:{free_port()}"
    argv[0] = str(runtime_venv / "bin" / argv[0])
    proxy = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stderr=subprocess.PIPE)
    try:
        probe = [
            str(python) if health[0] == "python" else health[0],
            *(a.replace(":8080", f":{port}") for a in health[1:]),
        ]
        deadline = time.monotonic() + 20
        while subprocess.run(probe, capture_output=True, timeout=10).returncode != 0:
            assert proxy.poll() is None and time.monotonic() < deadline, "the image's command never became healthy"
            time.sleep(0.1)
        proxy.send_signal(getattr(signal, values["STOPSIGNAL"]))
        assert proxy.wait(30) == 0
        assert subprocess.run(probe, capture_output=True, timeout=10).returncode != 0, "healthy after it stopped"
    finally:
        if proxy.poll() is None:
            proxy.kill()
        proxy.wait(10)
        assert proxy.stderr is not None
        log = proxy.stderr.read().decode()
        proxy.stderr.close()
    assert "health /healthz" in log and "stopped" in log, log


def test_haproxy_configuration_is_valid() -> None:
    result = subprocess.run(
        [haproxy_binary(), "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, result


def test_nginx_stream_configuration_is_valid(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    module = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
    if not (os.access(nginx, os.X_OK) and module.exists()):
        if os.environ.get("CI"):
            pytest.fail("CI must install nginx and libnginx-mod-stream")
        pytest.skip("needs nginx and its stream module (apt-get install nginx libnginx-mod-stream)")
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"load_module {module};\npid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"include {DEPLOY / 'nginx-stream.conf'};\n"
    )
    result = subprocess.run([nginx, "-t", "-c", str(main)], capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result


def test_systemd_unit_verifies_and_outlasts_the_drain(tmp_path: Path) -> None:
    unit = (DEPLOY / "fastpipe-proxy@.service").read_text()
    grace = float(re.search(r"FASTPIPE_GRACE=(\d+)", unit)[1])  # type: ignore[index]
    assert float(re.search(r"^TimeoutStopSec=(\d+)", unit, re.M)[1]) > grace + 5  # type: ignore[index]
    assert re.search(r"^KillMode=mixed$", unit, re.M) and re.search(r"^KillSignal=SIGTERM$", unit, re.M)
    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("systemd-analyze is not installed: the unit's syntax was not verified")
    # An instance of the template, pointing at this checkout's command instead of /opt/fastpipe.
    instance = tmp_path / "fastpipe-proxy@8081.service"
    instance.write_text(unit.replace("/opt/fastpipe/bin/fastpipe", str(Path(sys.executable).parent / "fastpipe")))
    result = subprocess.run([verify, "verify", str(instance)], capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result


def test_kubernetes_timings_agree_with_the_image() -> None:
    manifest = (DEPLOY / "kubernetes.yaml").read_text()
    entrypoint = json.loads(dict(_stages()[-1])["ENTRYPOINT"])
    grace = float(entrypoint[entrypoint.index("--shutdown-grace") + 1])
    health = entrypoint[entrypoint.index("--health-path") + 1]
    pause = float(re.search(r'preStop:\s*\n\s*exec: \{command: \["sleep", "(\d+)"\]\}', manifest)[1])  # type: ignore[index]
    period = float(re.search(r"terminationGracePeriodSeconds: (\d+)", manifest)[1])  # type: ignore[index]
    assert period > pause + grace + 5, "Kubernetes would SIGKILL the proxy before its drain can end"
    assert re.findall(r"httpGet: \{path: (\S+), port: http\}", manifest) == [health, health]
    assert "containerPort: 8080" in manifest and "0.0.0.0:8080" in entrypoint
