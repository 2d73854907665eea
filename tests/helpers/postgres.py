"""The tests' PostgreSQL server: ``tools.postgres`` (the benchmarks start theirs with it too)."""

from tools.postgres import POSTGRES_BIN_PATH, PostgresServer, running_server

__all__ = ["POSTGRES_BIN_PATH", "PostgresServer", "running_server"]
