"""The hostile area's fixtures: a gateway on a thread of its own for each module (``hostile``),
a watch on every log record (``logs``), and each test's ``judge`` with its ``Tally``.

Each test's summary line (``tried=N crashes=0 wrong_codes=0 leaks=0 changes=0``) and what was
answered are printed in a "hostile input" section of the terminal summary at the end of the run,
whether or not ``-s`` is given; with ``-s`` each test also prints its own as it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.helpers.hostile import GatewayThread, Judge, LogWatch, Sessions, Tally

_SUMMARY: list[str] = []


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    """The ``gateway`` fixture's configuration (instances sales, support, other), serving both
    edges from a background thread, shared by the module's tests."""
    running = GatewayThread(tmp_path_factory.mktemp("hostile")).start()
    yield running
    running.stop()


@pytest.fixture
def logs() -> Iterator[LogWatch]:
    """Every record, at every level, of every logger, while the test runs."""
    watch = LogWatch()
    root = logging.getLogger()
    level = root.level
    root.addHandler(watch)
    root.setLevel(logging.DEBUG)
    yield watch
    root.removeHandler(watch)
    root.setLevel(level)


@pytest.fixture
def judge(
    request: pytest.FixtureRequest, hostile: GatewayThread, logs: LogWatch
) -> Iterator[Judge]:
    tally = Tally(request.node.name)
    yield Judge(tally, logs, Sessions(hostile.gateway))
    print(f"\n{tally.report()}")
    _SUMMARY.append(tally.report())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _SUMMARY:
        return
    terminalreporter.section("hostile input")
    for report in _SUMMARY:
        terminalreporter.write_line(report)
