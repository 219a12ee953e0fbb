"""Run the Pipe test suite under valgrind memcheck against the compiled Pipe and judge the report.

    .venv/bin/python tools/memcheck.py                 # tests/pipe, compiled cases only (~3 min)
    .venv/bin/python tools/memcheck.py --self-check    # prove the setup catches a use-after-free and a leak
    .venv/bin/python tools/memcheck.py -- -k refcount  # extra pytest arguments after --
    .venv/bin/python tools/memcheck.py --tests tests/http/test_upstream_faults.py tests/http/test_zero_copy.py
                                                       # the compiled Pipe under the proxy's real traffic

CPython runs with ``PYTHONMALLOC=malloc`` so every object is a malloc block memcheck can see; the only
suppressions are the interpreter's and libc's known noise (``tools/valgrind-python.supp``, none of them
naming the extension). The run fails on any unsuppressed memcheck error (invalid read or write, use of
uninitialised memory, bad free) and on any definitely-lost block, and lists each distinct one with its
stack; it also fails if the tests fail or if the compiled Pipe is not what was tested.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUPPRESSIONS = ROOT / "tools" / "valgrind-python.supp"
EXTENSION_OBJECT = re.compile(r"fastpipe/_pipe[^/]*\.so$")

SELF_CHECK = r"""
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
block = libc.malloc(64)
ctypes.memset(block, 7, 64)
libc.free(block)
ctypes.string_at(block, 8)          # use after free: an invalid read
lost = libc.malloc(4096)            # never freed, pointer dropped: definitely lost
ctypes.memset(lost, 1, 4096)
lost = None
"""


@dataclass
class Finding:
    kind: str
    what: str
    frames: list[str]
    in_extension: bool
    count: int = 1


@dataclass
class Report:
    findings: dict[tuple[str, tuple[str, ...]], Finding] = field(default_factory=dict)
    suppressed: Counter[str] = field(default_factory=Counter)
    processes: int = 0

    @property
    def errors(self) -> int:
        return sum(finding.count for finding in self.findings.values())


def valgrind_command(xml_dir: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=memcheck",
        f"--suppressions={SUPPRESSIONS}",
        "--leak-check=full",
        "--show-leak-kinds=definite",
        "--errors-for-leak-kinds=definite",
        "--num-callers=40",
        "--xml=yes",
        f"--xml-file={xml_dir}/memcheck.%p.xml",
        f"--log-file={xml_dir}/memcheck.%p.log",
    ]


def _frame(frame: ET.Element) -> str:
    function = frame.findtext("fn") or "?"
    obj = frame.findtext("obj") or "?"
    source = frame.findtext("file")
    where = f"{source}:{frame.findtext('line')}" if source else obj.rsplit("/", 1)[-1]
    return f"{function} ({where})"


def parse_reports(xml_dir: Path) -> Report:
    """Every error and suppression count in the XML files one valgrind run wrote (one per process)."""
    report = Report()
    for path in sorted(xml_dir.glob("memcheck.*.xml")):
        text = path.read_text(errors="replace")
        if "<valgrindoutput>" not in text:
            continue
        report.processes += 1
        # Errors found while the process exits may follow the closing tag: read the blocks one by one.
        for block in re.findall(r"<error>.*?</error>", text, re.S):
            error = ET.fromstring(block)
            kind = error.findtext("kind") or "?"
            what = error.findtext("what") or error.findtext("xwhat/text") or ""
            stack = error.find("stack")
            frames = [] if stack is None else [_frame(frame) for frame in stack.iter("frame")]
            objects = [] if stack is None else [frame.findtext("obj") or "" for frame in stack.iter("frame")]
            key = (kind, tuple(frames[:8]))
            if key in report.findings:
                report.findings[key].count += 1
            else:
                in_extension = any(EXTENSION_OBJECT.search(obj) for obj in objects)
                report.findings[key] = Finding(kind, what, frames, in_extension)
        for match in re.finditer(r"<pair>\s*<count>(\d+)</count>\s*<name>(.*?)</name>\s*</pair>", text, re.S):
            report.suppressed[match.group(2)] += int(match.group(1))
    return report


def print_report(report: Report) -> None:
    for finding in sorted(report.findings.values(), key=lambda f: (not f.in_extension, -f.count)):
        place = "IN THE EXTENSION" if finding.in_extension else "outside the extension"
        print(f"\n{finding.kind} x{finding.count} ({place}): {finding.what}")
        for frame in finding.frames[:16]:
            print(f"    {frame}")
    noise = ", ".join(f"{name} x{count}" for name, count in sorted(report.suppressed.items())) or "none"
    print(f"\nmemcheck: {report.processes} process(es), {report.errors} error(s), suppressed noise: {noise}")


def run(command: list[str], env: dict[str, str]) -> int:
    print("+ " + " ".join(command), flush=True)
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONMALLOC"] = "malloc"
    env.pop("FASTPIPE_NO_EXTENSIONS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tools"), env.get("PYTHONPATH", "")]))
    return env


def self_check(python: str, xml_dir: Path) -> int:
    """The same valgrind setup must see a use-after-free and a leak made on purpose."""
    run([*valgrind_command(xml_dir), python, "-c", SELF_CHECK], environment())
    report = parse_reports(xml_dir)
    print_report(report)
    kinds = {finding.kind for finding in report.findings.values()}
    missing = {"InvalidRead", "Leak_DefinitelyLost"} - kinds
    if missing:
        print(f"memcheck self-check FAILED: valgrind did not report {sorted(missing)}")
        return 1
    print("memcheck self-check passed: a use-after-free and a definite leak are both reported")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", nargs="+", default=["tests/pipe"], help="what pytest runs (default: tests/pipe)")
    parser.add_argument("--both", action="store_true", help="also run the pure-Python twin's cases")
    parser.add_argument("--self-check", action="store_true", help="only check that errors would be caught")
    parser.add_argument("--keep", type=Path, help="write valgrind's XML and logs here (default: a temp dir)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    options = parser.parse_args()

    if shutil.which("valgrind") is None:
        print("memcheck: valgrind is not installed (apt-get install valgrind)")
        return 2
    python = sys.executable
    xml_dir = options.keep or Path(tempfile.mkdtemp(prefix="fastpipe-memcheck-"))
    xml_dir.mkdir(parents=True, exist_ok=True)
    for stale in xml_dir.glob("memcheck.*"):
        stale.unlink()
    if options.self_check:
        return self_check(python, xml_dir)

    probe = [python, "-c", "import fastpipe, sys; sys.exit(0 if fastpipe.EXTENSION else 1)"]
    if subprocess.run(probe, cwd=ROOT, env=environment(), check=False).returncode != 0:
        print("memcheck: the compiled Pipe does not load; build it first (make build)")
        return 2

    pytest = [python, "-m", "pytest", *options.tests, "-q", "-p", "no:cacheprovider", "-o", "timeout=1200"]
    if not options.both:
        pytest += ["-p", "memcheck_plugin"]
    tests_status = run([*valgrind_command(xml_dir), *pytest, *options.pytest_args], environment())
    report = parse_reports(xml_dir)
    print_report(report)
    print(f"valgrind output kept in {xml_dir}")
    if report.processes == 0:
        print("memcheck FAILED: valgrind wrote no report")
        return 1
    if tests_status != 0:
        print(f"memcheck FAILED: the tests failed under valgrind (pytest exit status {tests_status})")
        return 1
    if report.errors:
        print(f"memcheck FAILED: {report.errors} error(s) (definite leaks included)")
        return 1
    print("memcheck: clean (no invalid access, no uninitialised use in the extension, no definite leak)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
