"""A real WhatsApp Web session (a linked device) through neonize, which embeds whatsmeow.

One module per concept: ``session`` (the instance's state and supervisor), ``link`` (one
``Neonize`` call), ``pairing``, ``ffi`` (the Go exports and the guard around neonize's maps),
``codec`` (neonize's serialized messages), ``stanza_errors`` (what whatsmeow's error strings
mean), ``threads`` (where blocking calls run) and ``standin`` (a model of neonize and whatsmeow,
built from their source, that tests and benchmarks run against).

Importing this package loads nothing of neonize's Go library; ``ffi.NeonizeFFI`` does, on first
use.
"""
