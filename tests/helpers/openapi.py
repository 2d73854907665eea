"""What ``tests/rest/test_rest_openapi.py`` shares with its ``base_url`` fixture
(``tests/rest/conftest.py``): the demo gateway's token."""

from __future__ import annotations

TOKEN = "schemathesis-demo-token"
