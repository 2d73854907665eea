"""The REST surface: its contract and examples, what the contract does not document, the
NDJSON stream, and the OpenAPI document against the running server."""
