"""The mark of a forwarded call, as gRPC metadata and as an HTTP header.

Its presence alone stops a call from being forwarded again (no loops between replicas that
disagree about an owner); anyone may send it, and gains nothing by it. What a mark *vouches*
for, the fan-out of a ListInstances that the first replica already counted against the caller's
rate limit, needs more: a mark signed with the deployment's secret (``Marks``), which replicas
share through their database and callers never see.
"""

from __future__ import annotations

import hashlib
import hmac

MARKER = "x-privacy-gateway-forwarded"


class Marks:
    """Makes and checks ``replica_id.signature`` marks with the deployment's ``secret``."""

    def __init__(self, secret: bytes, replica_id: str) -> None:
        self._secret = secret
        self.mine = f"{replica_id}.{self._signature(replica_id)}"

    def _signature(self, replica_id: str) -> str:
        return hmac.new(self._secret, replica_id.encode(), hashlib.sha256).hexdigest()

    def genuine(self, mark: str | None) -> bool:
        """Whether ``mark`` was made by a replica of this deployment (compared in constant
        time)."""
        if not mark or len(mark) > 256:
            return False
        replica_id, _, signature = mark.rpartition(".")
        return bool(replica_id) and hmac.compare_digest(signature, self._signature(replica_id))
