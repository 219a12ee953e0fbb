"""Fixtures for the deployment tests, and a summary of their counts at the end of the run (also without -s)."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from ._fleet import Fleet

SUMMARY: list[str] = []  # lines the tests add; printed in the terminal summary so they reach the CI log


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """The processes a test starts; all are killed afterwards, and their output is shown if the test failed."""
    started = Fleet(tmp_path)
    try:
        yield started
    finally:
        started.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    fleet = getattr(item, "funcargs", {}).get("fleet")
    if report.failed and isinstance(fleet, Fleet):
        report.sections.append(("process output", fleet.logs()))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUMMARY:
        terminalreporter.section("deployment counts")
        for line in SUMMARY:
            terminalreporter.write_line(line)
