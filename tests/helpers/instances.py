"""The gateway ``tests/grpc/test_instances.py`` runs on (its ``mixed`` fixture, in
``tests/grpc/conftest.py``): both kinds of instance, of both accounts."""

from __future__ import annotations

from typing import Any

from service.auth import hash_token
from tests.helpers.harness import SALES_TOKEN
from tests.helpers.whatsapp_harness import whatsapp_instance

WA_TOKEN = "wa-instance-token"

INSTANCES: list[dict[str, Any]] = [
    {"name": "sales", "account": "acme", "token_sha256": hash_token(SALES_TOKEN)},
    {"name": "support", "account": "acme"},
    whatsapp_instance("wa", token_sha256=hash_token(WA_TOKEN)),
    whatsapp_instance("new"),
    {"name": "other", "account": "globex"},
    whatsapp_instance("globex-wa", account="globex"),
]
