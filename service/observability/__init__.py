"""What the gateway tells its operators: Prometheus metrics and one log line per call.

- ``metrics``: ``Metrics``, one per gateway in a registry of its own, which ``/metrics`` exposes;
- ``calls``: the per-call record both edges begin and finish (counted, and logged as one line);
- ``logs``: the JSON and text formats of the log lines, and ``configure``.

The edges (``service.grpc.interceptors``, ``service.http.app``) begin and finish calls; the
application layer, the operations and the journal only report what they alone know.
"""

from service.observability.metrics import Metrics

__all__ = ["Metrics"]
