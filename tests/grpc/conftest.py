"""The grpc area's fixtures: the gateway with both kinds of instance that InstanceService is
checked on (the WhatsApp ones on the stand-in)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.harness import ACME_TOKEN, GLOBEX_TOKEN
from tests.helpers.instances import INSTANCES
from tests.helpers.whatsapp_harness import (
    CONNECTED,
    NOT_PAIRED,
    WaGateway,
    paired,
    whatsapp_gateways,
)


@pytest.fixture
async def mixed(tmp_path: Path) -> AsyncIterator[WaGateway]:
    """The gateway, with every WhatsApp instance settled (linked ones CONNECTED, ``new`` not)."""
    ffi = paired("wa", "globex-wa", latency=0.0)
    async with whatsapp_gateways(tmp_path) as start:
        running = await start(ffi, instances=INSTANCES)
        await running.wait_state("wa", CONNECTED)
        await running.wait_state("new", NOT_PAIRED)
        running.token = GLOBEX_TOKEN
        await running.wait_state("globex-wa", CONNECTED)
        running.token = ACME_TOKEN
        yield running
