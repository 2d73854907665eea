"""The REST contract's four examples, sent as gRPC requests, give the contract's results."""

from __future__ import annotations

import pytest

from service.grpc.convert import settings_from_proto, settings_to_proto
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.sessions.simulated import DEFAULT_SETTINGS
from service.settings import Settings
from tests.helpers.harness import Harness
from tests.helpers.seed import EXAMPLES, FULLY_RESTRICTIVE_RESPONSE, settings_from_body


@pytest.mark.parametrize("name", list(EXAMPLES))
async def test_example_applies_exactly_the_fields_sent(gateway: Harness, name: str) -> None:
    requested = settings_from_body(EXAMPLES[name])
    session = gateway.session()

    response = await gateway.update(settings_to_proto(requested))

    expected = Settings({**DEFAULT_SETTINGS, **requested})
    assert settings_from_proto(response.settings) == expected
    assert session.server_settings == expected
    changed = [f for f, v in requested.items() if DEFAULT_SETTINGS[f] != v]
    # One fetch the first time (whatsmeow caches the settings), then one stanza per change.
    assert session.stanzas == 1 + len(changed)


async def test_fully_restrictive_returns_the_contracts_response(gateway: Harness) -> None:
    response = await gateway.update(
        settings_to_proto(settings_from_body(EXAMPLES["fully restrictive"]))
    )

    assert settings_from_proto(response.settings) == settings_from_body(FULLY_RESTRICTIVE_RESPONSE)


@pytest.mark.parametrize("name", list(EXAMPLES))
async def test_identical_repeat_costs_no_stanza(gateway: Harness, name: str) -> None:
    request = settings_to_proto(settings_from_body(EXAMPLES[name]))
    first = await gateway.update(request)
    session = gateway.session()
    stanzas_before = session.stanzas

    repeat = await gateway.update(request)

    assert session.stanzas == stanzas_before
    assert repeat.settings == first.settings
    assert {f.state for f in repeat.fields} == {pb.FIELD_STATE_UNCHANGED}
