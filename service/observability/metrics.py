"""The gateway's Prometheus metrics: one ``Metrics`` per gateway, in a registry of its own.

Not prometheus-client's global registry: two gateways in one process (the tests start many)
would share, and collide on, its names. Every name starts with ``privacy_gateway_``:

- ``calls_total{method,code}``: calls by method (the gRPC full method, or REST's
  ``METHOD /route-template``) and status code (the gRPC code's name on both edges);
- ``updates_total{outcome}``: journaled updates by how they ended (``OperationState``; those a
  killed predecessor left running count as INTERRUPTED when the journal opens);
- ``stanzas_total{field,result}``: each field's final events (``FieldState``, lower case);
- ``stanza_seconds{field}``: the round trip of each stanza that was answered or timed out;
- ``instances{state}``: instances by session state, read at scrape time;
- ``rate_limited_total``: calls refused by the per-token rate limit;
- ``journal_commit_seconds{thread}``: each group commit of the journal, on the ``loop`` or the
  ``writer`` thread;
- replicas only: ``leases_held`` (the instances this replica serves, read at scrape time) and
  ``lease_events_total{event}``: leases ``acquired``, ``handed_off`` to a replica that joined,
  ``released`` at shutdown, ``lost`` (taken by another replica after this one could not renew:
  the one an operator watches), ``untrusted`` (not renewed in time: stopped by the watchdog).

The update path is hot (``python -m benchmarks``): every labelled child it touches is resolved
once, here, and looked up in plain dicts, so an event costs a dict lookup and an increment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric

from service.engine import FINAL_STATES, Event, FieldEvent, FieldState, Snapshot
from service.instances import Instance
from service.operations.record import OperationState
from service.sessions.base import SessionState
from service.settings import Field

PREFIX = "privacy_gateway_"
#: WhatsApp answers a stanza in tens to hundreds of milliseconds; ``stanza_timeout_seconds``
#: (30 s by default) bounds the slowest.
STANZA_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: A group commit takes well under a millisecond without ``journal_fsync``, a disk flush with it.
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: How an update can end (RUNNING is not an end).
OUTCOMES = tuple(state for state in OperationState if state is not OperationState.RUNNING)
#: A field's final states, in ``FieldState``'s order.
FINAL_ORDER = tuple(state for state in FieldState if state in FINAL_STATES)


class Metrics:
    """The metrics of one gateway; ``registry`` is what ``/metrics`` exposes."""

    def __init__(self, instances: Iterable[Instance] = ()) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        # The process's own figures (process_open_fds among them): neonize leaves one session
        # store open per connection it makes (goneonize/main.go:58-64, 623), which an operator
        # can only watch, not prevent.
        ProcessCollector(registry=registry)
        self._calls = Counter(
            PREFIX + "calls",
            "Calls to the gateway's API, by method and status code.",
            ("method", "code"),
            registry=registry,
        )
        updates = Counter(
            PREFIX + "updates",
            "Journaled updates, by how they ended.",
            ("outcome",),
            registry=registry,
        )
        stanzas = Counter(
            PREFIX + "stanzas",
            "Each field's final outcome in an update, by field and result.",
            ("field", "result"),
            registry=registry,
        )
        stanza_seconds = Histogram(
            PREFIX + "stanza_seconds",
            "Round trip of each stanza sent to WhatsApp, by field.",
            ("field",),
            buckets=STANZA_BUCKETS,
            registry=registry,
        )
        self._rate_limited = Counter(
            PREFIX + "rate_limited",
            "Calls refused by the per-token rate limit.",
            registry=registry,
        )
        commits = Histogram(
            PREFIX + "journal_commit_seconds",
            "Duration of each group commit of the operation journal, by the thread it ran on.",
            ("thread",),
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        registry.register(InstanceStates(instances))
        self._lease_events = Counter(
            PREFIX + "lease_events",
            "Changes of this replica's instance leases, by event (replicas only).",
            ("event",),
            registry=registry,
        )
        self._leases_held = LeasesHeld()
        registry.register(self._leases_held)
        # Resolved once: the update path only looks children up.
        self._call_children: dict[str, dict[str, Counter]] = {}
        self._outcomes: dict[OperationState, Counter] = {
            state: updates.labels(state.value) for state in OUTCOMES
        }
        self._stanzas = {
            field: {state: stanzas.labels(field.value, state.value) for state in FINAL_ORDER}
            for field in Field
        }
        self._stanza_seconds = {field: stanza_seconds.labels(field.value) for field in Field}
        #: ``seconds -> None`` for the journal (``Journal.commit_timers``).
        self.commit_on_loop = commits.labels("loop").observe
        self.commit_on_writer = commits.labels("writer").observe

    def call(self, method: str, code: str) -> None:
        """One call ended with ``code``."""
        by_code = self._call_children.get(method)
        if by_code is None:
            by_code = self._call_children[method] = {}
        child = by_code.get(code)
        if child is None:
            child = by_code[code] = self._calls.labels(method, code)
        child.inc()

    def rate_limited(self) -> None:
        self._rate_limited.inc()

    def lease_event(self, event: str, count: int = 1) -> None:
        """``count`` leases changed so (``acquired``, ``lost``...: see the module's list)."""
        self._lease_events.labels(event).inc(count)

    def count_leases(self, held: Callable[[], int]) -> None:
        """From now on ``leases_held`` reports ``held()`` (a replica, once it has joined)."""
        self._leases_held.held = held

    def journaled(self, event: Event) -> None:
        """An update's event that the journal records: a field's outcome, or the end."""
        if type(event) is FieldEvent:
            self._stanzas[event.field][event.state].inc()
            if event.elapsed is not None:
                self._stanza_seconds[event.field].observe(event.elapsed)
        elif type(event) is Snapshot:
            error = event.error
            self.update_ended(OperationState.ended_by(error.code if error is not None else None))

    def update_ended(self, outcome: OperationState, count: int = 1) -> None:
        """``count`` updates ended so (INTERRUPTED: found so by the next start)."""
        self._outcomes[outcome].inc(count)


class InstanceStates:
    """``privacy_gateway_instances{state}``: the sessions' states, read when scraped.

    Every state is reported, zeros too, so that a series does not vanish when its last
    instance leaves it. Instance names are never exposed: only counts.
    """

    NAME = PREFIX + "instances"
    HELP = "Instances by the state of their WhatsApp session."

    def __init__(self, instances: Iterable[Instance]) -> None:
        self._instances = tuple(instances)

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=("state",))]

    def collect(self) -> Iterable[Metric]:
        counts = dict.fromkeys(SessionState, 0)
        for instance in self._instances:
            # A replica counts only what it serves: summed over replicas, each instance once.
            if instance.serving():
                counts[instance.session.status().state] += 1
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=("state",))
        for state, count in counts.items():
            family.add_metric((state.value,), count)
        return [family]


class LeasesHeld:
    """``privacy_gateway_leases_held``: the instances this replica serves, read when scraped;
    absent for a gateway that runs as one process."""

    NAME = PREFIX + "leases_held"
    HELP = "Instance leases this replica holds (replicas only)."

    def __init__(self) -> None:
        self.held: Callable[[], int] | None = None

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.NAME, self.HELP)]

    def collect(self) -> Iterable[Metric]:
        if self.held is None:
            return []
        return [GaugeMetricFamily(self.NAME, self.HELP, value=self.held())]
