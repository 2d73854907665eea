"""The application layer: one API under gRPC and REST.

An edge admits a caller (``Gateway.admit``: token, rate limit), then calls a ``Caller`` method:
read settings, start an update (an ``UpdateHandle`` that follows events, waits for the outcome
and is told when its caller leaves), read or list operations, list instances, pair, watch.
The contract's rules for what a caller sends live in ``rules``; the errors in ``service.errors``.
Edges keep only parsing their wire and rendering the answer.
"""

from service.gateway.caller import Caller, Page
from service.gateway.listing import AskPeer, ListedInstance
from service.gateway.rules import GRPC, REST, WireNames
from service.gateway.running import Forward, Gateway
from service.gateway.updates import UpdateHandle, UpdateInput

__all__ = [
    "GRPC",
    "REST",
    "AskPeer",
    "Caller",
    "Forward",
    "Gateway",
    "ListedInstance",
    "Page",
    "UpdateHandle",
    "UpdateInput",
    "WireNames",
]
