"""The OpenAPI document the REST surface serves is valid, and the running server keeps to it.

The gateway runs as the real command (``privacy-gateway serve`` on its demo, latency 0, no rate
limit) in a subprocess, so schemathesis' blocking client can call it from the test's thread.
Schemathesis generates requests from the document (schema-valid ones, and invalid ones it expects
to be refused) and checks every response: no server error, a documented status code and content
type, a body matching the documented schema, and a 401 when the token is left off.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.schemas import APIOperation

from tests.helpers.openapi import TOKEN
from tests.helpers.seed import EXAMPLES, FULLY_RESTRICTIVE_RESPONSE

PRIVACY = "/api/profile/privacy/{instance}"
MAX_EXAMPLES = 50


def _operations(schema: Any) -> dict[str, APIOperation]:
    operations = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        operations[f"{operation.method.upper()} {operation.path}"] = operation
    return operations


OPERATION_PATHS = (f"{PRIVACY}/operations", f"{PRIVACY}/operations/{{operationId}}")


# -- the document ----------------------------------------------------------------------------


def test_openapi_json_is_served(base_url: str) -> None:
    response = requests.get(f"{base_url}/openapi.json", timeout=10)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {PRIVACY, *OPERATION_PATHS, "/healthz"}


def test_document_is_a_valid_openapi_3_document(schema: Any) -> None:
    # Raises if the document does not validate against the OpenAPI 3.0 meta-schema.
    schema.validate()

    assert set(_operations(schema)) == {
        f"GET {PRIVACY}",
        f"POST {PRIVACY}",
        *(f"GET {path}" for path in OPERATION_PATHS),
        "GET /healthz",
    }


def test_documented_values_are_the_contracts(schema: Any) -> None:
    request = schema.raw_schema["components"]["schemas"]["UpdateRequest"]["properties"]
    enums = {
        name: prop["enum"]
        for section in request.values()
        for name, prop in section["properties"].items()
    }

    assert enums == {
        "lastSeen": ["all", "contacts", "contact_blacklist", "none"],
        "status": ["all", "contacts", "contact_blacklist", "none"],
        "profile": ["all", "contacts", "contact_blacklist", "none"],
        "online": ["all", "match_last_seen"],
        "readReceipts": ["all", "none"],
        "callAdd": ["all", "known"],
        "groupAdd": ["all", "contacts", "contact_blacklist"],
    }


# -- known requests, checked against the document --------------------------------------------


def _call_and_validate(operation: APIOperation, base_url: str, **case: Any) -> Any:
    made = operation.Case(**case)
    response = made.call(base_url=base_url)
    made.validate_response(response, transport_kwargs={"base_url": base_url})
    return response


def test_seed_examples_conform(schema: Any, base_url: str) -> None:
    update = _operations(schema)[f"POST {PRIVACY}"]
    for body in EXAMPLES.values():
        response = _call_and_validate(
            update,
            base_url,
            path_parameters={"instance": "demo"},
            headers={"token": TOKEN},
            body=body,
            media_type="application/json",
        )
        assert response.status_code == 200, response.text

    # "fully restrictive" sets every field; the other three only repeat some of its values.
    assert response.json()["settings"] == FULLY_RESTRICTIVE_RESPONSE


@pytest.mark.parametrize(
    ("caller", "body", "status"),
    [
        (("demo", TOKEN), {}, 400),
        (("demo", TOKEN), {"visibility": {"lastSeen": "everyone"}}, 400),
        (("demo", None), {"privacy": {"readReceipts": "none"}}, 401),
        (("demo", "wrong"), {"privacy": {"readReceipts": "none"}}, 401),
        (("nope", TOKEN), {"privacy": {"readReceipts": "none"}}, 404),
    ],
    ids=["no-setting", "invalid-value", "no-token", "wrong-token", "unknown-instance"],
)
def test_documented_errors_conform(
    schema: Any,
    base_url: str,
    caller: tuple[str, str | None],
    body: dict[str, Any],
    status: int,
) -> None:
    instance, token = caller
    update = _operations(schema)[f"POST {PRIVACY}"]
    headers = {"token": token} if token is not None else {}

    response = _call_and_validate(
        update,
        base_url,
        path_parameters={"instance": instance},
        headers=headers,
        body=body,
        media_type="application/json",
    )

    assert response.status_code == status, response.text


def test_413_and_415_conform(schema: Any, base_url: str) -> None:
    update = _operations(schema)[f"POST {PRIVACY}"]
    too_large = _call_and_validate(
        update,
        base_url,
        path_parameters={"instance": "demo"},
        headers={"token": TOKEN},
        body={"privacy": {"readReceipts": "none"}, "padding": "x" * 20_000},
        media_type="application/json",
    )
    wrong_type = requests.post(
        f"{base_url}/api/profile/privacy/demo",
        data=b"{}",
        headers={"token": TOKEN, "Content-Type": "text/plain"},
        timeout=10,
    )
    update.Case(path_parameters={"instance": "demo"}, headers={"token": TOKEN}).validate_response(
        wrong_type
    )

    assert too_large.status_code == 413
    assert wrong_type.status_code == 415


def test_get_and_healthz_conform(schema: Any, base_url: str) -> None:
    operations = _operations(schema)

    got = _call_and_validate(
        operations[f"GET {PRIVACY}"],
        base_url,
        path_parameters={"instance": "demo"},
        headers={"token": TOKEN},
    )
    health = _call_and_validate(operations["GET /healthz"], base_url)

    assert got.status_code == 200
    assert health.status_code == 200


# -- generated requests ----------------------------------------------------------------------

#: An instance name: mostly the demo's, sometimes anything (which must get a documented 404).
INSTANCE = st.one_of(st.just("demo"), st.just("demo"), st.text(min_size=1, max_size=20))


@pytest.mark.parametrize(
    ("label", "mode"),
    [
        (f"POST {PRIVACY}", GenerationMode.POSITIVE),
        (f"POST {PRIVACY}", GenerationMode.NEGATIVE),
        (f"GET {PRIVACY}", GenerationMode.POSITIVE),
        ("GET /healthz", GenerationMode.POSITIVE),
    ],
    # Only the POST has anything to make invalid: the token header and the instance are fixed
    # here, and a path parameter of type string has no invalid values.
    ids=["post-positive", "post-negative", "get-positive", "healthz-positive"],
)
def test_generated_requests_conform(
    schema: Any, base_url: str, label: str, mode: GenerationMode
) -> None:
    operation = _operations(schema)[label]
    with_instance = "{instance}" in operation.path
    seen: list[int] = []

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        instance = data.draw(INSTANCE) if with_instance else None
        path_parameters = {"instance": instance} if instance is not None else None
        case = data.draw(
            operation.as_strategy(
                generation_mode=mode,
                path_parameters=path_parameters,
                headers={"token": TOKEN},
            )
        )
        response = case.call(base_url=base_url)
        case.validate_response(
            response, headers={"token": TOKEN}, transport_kwargs={"base_url": base_url}
        )
        seen.append(response.status_code)
        if instance is not None and instance != "demo":
            # Authorization comes before the body is read: any other name is simply not found.
            assert response.status_code == 404, (instance, response.text)
            assert response.json()["success"] is False

    run()

    assert seen
    # The demo cannot fail a stanza, so not even the documented 500 may appear.
    assert all(status < 500 for status in seen), seen
