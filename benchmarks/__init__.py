"""The gateway's benchmark suite: ``python -m benchmarks`` (``--help`` for its options).

Every server under test runs as a process of its own on loopback and is driven by a client
process of its own (``benchmarks.client``), except the stanza count, which reads the simulated
session's own counter in-process. See ``docs/benchmarks.md`` for the latest table.
"""
