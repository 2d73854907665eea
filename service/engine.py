"""Plans an update and applies it field by field, as a stream of events.

This is the only place that knows how an update is sequenced; the gRPC stream forwards its events,
and the unary call collects them. It knows nothing of gRPC or HTTP.

The rules, from the REST contract this gateway starts from:
- fields are applied one stanza each, in the canonical order of ``service.settings.FIELDS``;
- a field that already holds the requested value is UNCHANGED and costs no stanza;
- the first failure stops the update: later fields are NOT_ATTEMPTED, earlier ones stay applied;
- the settings are read back at the end, after a failure too, and are the last event.
Updates to one instance hold its lock from plan to snapshot, so they never interleave. A caller
that goes away, or a deadline that passes, starts no further stanza; a stanza already in flight is
left to finish, because WhatsApp applies it whether or not anyone waits for the answer.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from service import errors
from service.errors import Code, GatewayError
from service.instances import Instance
from service.sessions.base import SessionError
from service.settings import Field, Settings


class FieldState(enum.Enum):
    STARTED = "started"
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    FAILED = "failed"
    NOT_ATTEMPTED = "not_attempted"


@dataclass(frozen=True, slots=True)
class PlanStep:
    field: Field
    current: str
    target: str

    @property
    def changes(self) -> bool:
        return self.current != self.target


@dataclass(frozen=True, slots=True)
class Plan:
    """The first event: the requested fields in apply order."""

    steps: tuple[PlanStep, ...]

    @property
    def stanzas(self) -> int:
        """How many stanzas the update will send if nothing fails."""
        return sum(step.changes for step in self.steps)


@dataclass(frozen=True, slots=True)
class FieldEvent:
    """A field changed state. ``elapsed`` is the stanza's round trip, in seconds."""

    field: Field
    state: FieldState
    value: str
    previous: str
    elapsed: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The last event: the settings read back, each field's outcome, and the failure if any."""

    settings: Settings
    outcomes: tuple[FieldEvent, ...]
    error: UpdateFailed | None = None

    def fields_in(self, state: FieldState) -> tuple[Field, ...]:
        return tuple(o.field for o in self.outcomes if o.state is state)


Event = Plan | FieldEvent | Snapshot


class UpdateFailed(GatewayError):
    """An update stopped part-way; ``snapshot`` says what was applied and what the settings are."""

    snapshot: Snapshot


def validate(requested: Mapping[Field, str]) -> Settings:
    """The request as ``Settings``; raises the REST contract's errors for an empty one."""
    if not requested:
        raise errors.no_settings()
    return Settings(requested)


async def read_settings(instance: Instance) -> Settings:
    """The instance's complete settings, from the session (its cache when it has one)."""
    if not instance.session.connected:
        raise errors.not_connected(instance.name)
    try:
        return await instance.session.read_settings()
    except SessionError as exc:
        if exc.connection_lost:
            raise errors.not_connected(instance.name) from exc
        raise errors.settings_unknown(instance.name, exc.reason) from exc


async def update(
    instance: Instance,
    requested: Mapping[Field, str],
    *,
    deadline: float | None = None,
) -> AsyncIterator[Event]:
    """Applies ``requested`` to ``instance``, yielding a Plan, FieldEvents, then a Snapshot.

    ``deadline`` is a ``time.monotonic()`` instant after which no stanza is started. Errors before
    the plan (empty request, not connected, settings unknown) are raised before any event.
    """
    wanted = validate(requested)
    async with instance.lock:
        current = await read_settings(instance)
        plan = Plan(tuple(PlanStep(f, current[f], v) for f, v in wanted.items()))
        yield plan
        outcomes: list[FieldEvent] = []
        failure: tuple[PlanStep, SessionError | None] | None = None
        stop_reason = ""
        for step in plan.steps:
            if failure is not None:
                outcome = _not_attempted(step, stop_reason)
            elif not step.changes:
                outcome = FieldEvent(step.field, FieldState.UNCHANGED, step.target, step.current)
            elif deadline is not None and time.monotonic() >= deadline:
                failure, stop_reason = (step, None), "the deadline passed"
                outcome = _not_attempted(step, stop_reason)
            else:
                yield FieldEvent(step.field, FieldState.STARTED, step.target, step.current)
                outcome, error, answered = await _apply(instance, step)
                current = answered or current
                if error is not None:
                    failure, stop_reason = (step, error), f"{step.field.spec.rest_name} failed"
            outcomes.append(outcome)
            yield outcome
        settings = await _read_back(instance, current)
        snapshot = Snapshot(settings, tuple(outcomes))
        if failure is not None:
            snapshot = Snapshot(settings, snapshot.outcomes, _failed(instance, snapshot, *failure))
        yield snapshot


async def _apply(
    instance: Instance, step: PlanStep
) -> tuple[FieldEvent, SessionError | None, Settings | None]:
    """Sends one stanza: its outcome, the error if any, and the settings WhatsApp answered."""
    started = time.monotonic()
    stanza = asyncio.ensure_future(instance.session.set_setting(step.field, step.target))
    try:
        answered = await asyncio.shield(stanza)
    except asyncio.CancelledError:
        # The caller went away: let the stanza in flight finish (WhatsApp applies it anyway), so
        # the session's state is settled before the next update takes the lock.
        await asyncio.wait([stanza])
        raise
    except SessionError as exc:
        # A stanza that could not even be sent has no round trip to report.
        elapsed = None if exc.connection_lost else time.monotonic() - started
        failed = FieldEvent(
            step.field, FieldState.FAILED, step.target, step.current, elapsed, exc.reason
        )
        return failed, exc, None
    elapsed = time.monotonic() - started
    applied = FieldEvent(step.field, FieldState.APPLIED, step.target, step.current, elapsed)
    return applied, None, answered


async def _read_back(instance: Instance, last_answer: Settings) -> Settings:
    """The settings after an update: the session's, or else the last ones WhatsApp answered.

    whatsmeow serves this from its cache, so it normally costs nothing and cannot fail; should a
    session lose its cache with its connection, the settings returned by the last stanza that
    succeeded (or read before the first) are still what WhatsApp confirmed.
    """
    try:
        return await instance.session.read_settings()
    except SessionError:
        return last_answer


def _not_attempted(step: PlanStep, reason: str) -> FieldEvent:
    return FieldEvent(
        step.field,
        FieldState.NOT_ATTEMPTED,
        step.target,
        step.current,
        error=f"not attempted: {reason}",
    )


def _failed(
    instance: Instance, snapshot: Snapshot, step: PlanStep, error: SessionError | None
) -> UpdateFailed:
    name = step.field.spec.rest_name
    metadata = {
        "instance": instance.name,
        "field": step.field.value,
        "applied": ",".join(f.value for f in snapshot.fields_in(FieldState.APPLIED)),
        "not_attempted": ",".join(f.value for f in snapshot.fields_in(FieldState.NOT_ATTEMPTED)),
    }
    if error is None:
        failed = UpdateFailed(
            Code.DEADLINE_EXCEEDED,
            f"deadline exceeded before updating {name} privacy",
            "DEADLINE_EXCEEDED",
            metadata,
        )
    elif error.connection_lost:
        failed = UpdateFailed(
            Code.UNAVAILABLE,
            f"failed to update {name} privacy: {error.reason}",
            "CONNECTION_LOST",
            metadata,
        )
    else:
        failed = UpdateFailed(
            Code.INTERNAL,
            f"failed to update {name} privacy: {error.reason}",
            "STANZA_FAILED",
            metadata,
        )
    failed.snapshot = snapshot
    return failed
