"""Forwarding: a replica serves any instance by relaying the call to the instance's owner.

Admission decides (``Gateway.admit_to``: a ``Forward`` instead of a ``Caller``); each edge relays
in its own protocol, so that what the caller gets back is what the owner answered:

- ``grpc``: ``GrpcForwarder``, one cached channel per peer, messages relayed as bytes, status,
  details and trailing metadata (rich status included) as the owner sent them;
- ``http``: ``HttpForwarder``, an aiohttp client that relays status, headers and body, an
  NDJSON stream chunk by chunk.

Both mark what they send with ``MARKER`` (this replica's id): a replica receiving a marked call
for an instance it does not hold answers INSTANCE_UNOWNED rather than forward it again. The
marker only ever prevents forwarding; the owner authenticates and rate-limits the call as any.

Wiring: a ``Gateway`` with ``ownership`` forwards by itself; ``bind_server`` and ``HttpServer``
make (and close, when they stop) the forwarder they need unless one is passed in
(``forwarder=``), e.g. a ``GrpcForwarder`` with TLS credentials for the peers' ports.
"""

from service.cluster.forwarding.marker import MARKER

__all__ = ["MARKER"]
