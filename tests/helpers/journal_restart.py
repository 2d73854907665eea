"""What ``tests/journal/test_journal_restart.py`` shares with its ``gateway_processes`` fixture
(``tests/journal/conftest.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from tests.helpers.processes import GatewayProcess


class StartGateway(Protocol):
    def __call__(self, config: Path) -> GatewayProcess: ...
