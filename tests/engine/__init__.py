"""The engine's sequencing rules and the field table, without a server."""
