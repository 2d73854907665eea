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
left to finish, because WhatsApp applies it whether or not anyone waits for the answer. That is
why an update is stopped by ``halt`` and never by cancelling the task that runs it: it runs in a
task of its own (``service.operations``), and each stanza is awaited directly, without a task
or a shield of its own, which would cost more than the rest of a fast update.
"""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace

from service import errors
from service.errors import Reason, UpdateFailed
from service.instances import Instance
from service.sessions.base import SessionError, StanzaFate
from service.settings import Field, Settings


class FieldState(enum.Enum):
    STARTED = "started"
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    FAILED = "failed"
    NOT_ATTEMPTED = "not_attempted"
    RESTORE_STARTED = "restore_started"
    RESTORED = "restored"
    RESTORE_FAILED = "restore_failed"
    #: Sent, answer lost: WhatsApp may hold the new value. A re-read may resolve it (a second
    #: event for the field, APPLIED or FAILED); if not, this is the field's outcome.
    UNCONFIRMED = "unconfirmed"


#: The states a field ends an update in (STARTED and RESTORE_STARTED are progress).
FINAL_STATES = frozenset(FieldState) - {FieldState.STARTED, FieldState.RESTORE_STARTED}


class FailurePolicy(enum.Enum):
    """What happens when a field fails: the contract's STOP, or CONTINUE, or ROLLBACK."""

    STOP = "stop"
    CONTINUE = "continue"
    ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class UpdateOptions:
    policy: FailurePolicy = FailurePolicy.STOP
    #: Send every requested field, even one whose cached value already matches.
    force: bool = False
    #: Plan only: no stanza.
    validate_only: bool = False


@dataclass(frozen=True, slots=True)
class Halt:
    """Why no further stanza may start: the caller cancelled, its deadline passed, the gateway is
    stopping... ``why`` is the reason the update ends with, ``text`` what its untried fields say."""

    why: Reason
    text: str


HaltCheck = Callable[[], Halt | None]
DEADLINE_PASSED = Halt(errors.DEADLINE_EXCEEDED, "the deadline passed")
CALLER_CANCELLED = Halt(errors.CANCELLED, "the caller cancelled")
SHUTTING_DOWN = Halt(errors.SHUTTING_DOWN, "the gateway is shutting down")
JOURNAL_FAILED = Halt(errors.JOURNAL_FAILED, "the journal could not record the update")
LEASE_LOST = Halt(errors.LEASE_LOST, "this replica lost the instance's lease")


@dataclass(frozen=True, slots=True)
class PlanStep:
    field: Field
    current: str
    target: str
    force: bool = False

    @property
    def changes(self) -> bool:
        return self.current != self.target

    @property
    def sends(self) -> bool:
        """Whether a stanza goes out for this field."""
        return self.changes or self.force


@dataclass(frozen=True, slots=True)
class Plan:
    """The first event: the requested fields in apply order."""

    steps: tuple[PlanStep, ...]

    @property
    def stanzas(self) -> int:
        """How many stanzas the update will send if nothing fails."""
        return sum(step.sends for step in self.steps)


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


def validate(requested: Mapping[Field, str]) -> Settings:
    """The request as ``Settings``; raises the REST contract's errors for an empty one."""
    if not requested:
        raise errors.no_settings()
    # The transports validate a request before it becomes an operation; the engine, which
    # validates again for its other callers, need not copy it twice.
    return requested if isinstance(requested, Settings) else Settings(requested)


async def read_settings(instance: Instance) -> Settings:
    """The instance's complete settings, from the session (its cache when it has one)."""
    if not instance.serving():
        raise errors.INSTANCE_UNOWNED.error(instance=instance.name)
    if not instance.session.connected:
        raise errors.INSTANCE_NOT_CONNECTED.error(instance=instance.name)
    try:
        return await instance.session.read_settings()
    except SessionError as exc:
        if exc.connection_lost:
            raise errors.INSTANCE_NOT_CONNECTED.error(instance=instance.name) from exc
        raise errors.SETTINGS_UNKNOWN.error(instance=instance.name, detail=exc.reason) from exc


async def update(
    instance: Instance,
    requested: Mapping[Field, str],
    *,
    options: UpdateOptions = UpdateOptions(),
    deadline: float | None = None,
    halt: HaltCheck | None = None,
) -> AsyncGenerator[Event, None]:
    """Applies ``requested`` to ``instance``, yielding a Plan, FieldEvents, then a Snapshot.

    No stanza starts once ``deadline`` (a ``time.monotonic()`` instant) has passed or ``halt``
    answers a reason. Errors before the plan (empty request, not connected, settings unknown) are
    raised before any event.
    """
    wanted = validate(requested)
    should_halt = _halt_check(deadline, halt)
    async with instance.lock:
        current = await read_settings(instance)
        # A field WhatsApp did not report is unknown (""): its stanza is sent.
        steps = (PlanStep(f, current.get(f, ""), v, options.force) for f, v in wanted.items())
        plan = Plan(tuple(steps))
        yield plan
        if options.validate_only:
            yield Snapshot(current, ())
            return
        run = _Run(instance, current)
        async for event in run.apply(plan, options.policy, should_halt):
            yield event
        if run.failures and options.policy is FailurePolicy.ROLLBACK:
            async for event in run.roll_back():
                yield event
        settings = await _read_back(instance, run.latest)
        snapshot = Snapshot(settings, tuple(run.outcomes))
        if run.failures or run.halted:
            snapshot = Snapshot(settings, snapshot.outcomes, _failed(instance, snapshot, run))
        yield snapshot


def _halt_check(deadline: float | None, halt: HaltCheck | None) -> HaltCheck:
    def check() -> Halt | None:
        if halt is not None and (reason := halt()) is not None:
            return reason
        if deadline is not None and time.monotonic() >= deadline:
            return DEADLINE_PASSED
        return None

    return check


class _Run:
    """One update's progress: the outcomes so far, the failures, and what stopped it."""

    def __init__(self, instance: Instance, current: Settings) -> None:
        self.instance = instance
        self.latest = current
        self.outcomes: list[FieldEvent] = []
        self.failures: list[tuple[PlanStep, SessionError]] = []
        self.halted: tuple[PlanStep, Halt] | None = None

    async def apply(
        self, plan: Plan, policy: FailurePolicy, should_halt: HaltCheck
    ) -> AsyncIterator[FieldEvent]:
        stop_reason = ""
        for step in plan.steps:
            if stop_reason:
                outcome = _not_attempted(step, stop_reason)
            elif not step.sends:
                outcome = FieldEvent(step.field, FieldState.UNCHANGED, step.target, step.current)
            elif (halt := should_halt()) is not None:
                self.halted, stop_reason = (step, halt), halt.text
                outcome = _not_attempted(step, stop_reason)
            else:
                yield FieldEvent(step.field, FieldState.STARTED, step.target, step.current)
                outcome, error = await self._send(step.field, step.target, step.current)
                if error is not None and error.unconfirmed:
                    # Told as it happened, then resolved by a re-read when the session can.
                    self.outcomes.append(outcome)
                    yield outcome
                    outcome, error = await self._confirm(outcome, error)
                    if outcome.state is FieldState.UNCONFIRMED:
                        assert error is not None
                        self.failures.append((step, error))
                        if policy is not FailurePolicy.CONTINUE:
                            stop_reason = f"{step.field.spec.rest_name} went unconfirmed"
                        continue
                if error is not None:
                    self.failures.append((step, error))
                    if policy is not FailurePolicy.CONTINUE:
                        stop_reason = f"{step.field.spec.rest_name} failed"
            self.outcomes.append(outcome)
            yield outcome

    async def roll_back(self) -> AsyncIterator[FieldEvent]:
        """Puts each applied field back, latest first. Runs to the end even if the caller left:
        a half-done rollback would be worse than either state."""
        # A field whose stanza went unconfirmed may be live too: it is put back like the others.
        latest = {o.field: o for o in self.outcomes}
        live = (FieldState.APPLIED, FieldState.UNCONFIRMED)
        applied = [o for o in latest.values() if o.state in live]
        applied.sort(key=self.outcomes.index)
        for done in reversed(applied):
            if not done.previous:
                # What it held before is unknown (WhatsApp did not report it): nothing to send.
                outcome = replace(
                    done, state=FieldState.RESTORE_FAILED, elapsed=None,
                    error="not restored: its previous value was unknown",
                )  # fmt: skip
                self.outcomes.append(outcome)
                yield outcome
                continue
            # As every field event: ``value`` is what was requested, ``previous`` what it held
            # before the update, which the restore puts back.
            yield FieldEvent(done.field, FieldState.RESTORE_STARTED, done.value, done.previous)
            sent, _ = await self._send(done.field, done.previous, done.value, restore=True)
            outcome = replace(sent, value=done.value, previous=done.previous)
            self.outcomes.append(outcome)
            yield outcome

    async def _send(
        self, field: Field, value: str, previous: str, *, restore: bool = False
    ) -> tuple[FieldEvent, SessionError | None]:
        ok, failed = (
            (FieldState.RESTORED, FieldState.RESTORE_FAILED)
            if restore
            else (FieldState.APPLIED, FieldState.FAILED)
        )
        started = time.monotonic()
        try:
            answered = await self.instance.session.set_setting(field, value)
        except SessionError as exc:
            # A stanza that could not even be sent has no round trip to report.
            elapsed = None if exc.connection_lost else time.monotonic() - started
            if exc.unconfirmed and not restore:
                failed = FieldState.UNCONFIRMED
            return FieldEvent(field, failed, value, previous, elapsed, exc.reason), exc
        self.latest = answered
        return FieldEvent(field, ok, value, previous, time.monotonic() - started), None

    async def _confirm(
        self, lost: FieldEvent, error: SessionError
    ) -> tuple[FieldEvent, SessionError | None]:
        """The outcome of a stanza whose answer was lost, from a re-read of WhatsApp itself.

        Holding the new value means WhatsApp applied it; holding anything else means it did not
        (the field is then FAILED, and nothing of it is live); no answer leaves it UNCONFIRMED.
        """
        try:
            held = await self.instance.session.confirm(lost.field)
        except SessionError:
            held = None
        if held is None:
            return lost, error
        note = f"{error.reason}; a re-read shows {held}"
        if held == lost.value:
            self.latest = self.latest.with_value(lost.field, held)
            return replace(lost, state=FieldState.APPLIED, error=note), None
        # Not applied after all: nothing of it is live, and sending it again may work.
        refused = SessionError(note, fate=StanzaFate.NOT_SENT)
        return replace(lost, state=FieldState.FAILED, error=note), refused


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


def _failed(instance: Instance, snapshot: Snapshot, run: _Run) -> UpdateFailed:
    """The error an unfinished update ends with: the first failure names it, as in the contract."""
    metadata = {
        "instance": instance.name,
        "applied": _names(snapshot, FieldState.APPLIED),
        "not_attempted": _names(snapshot, FieldState.NOT_ATTEMPTED),
    }
    if not run.failures:
        assert run.halted is not None
        step, halt = run.halted
        metadata["field"] = step.field.value
        return halt.why.failure(snapshot, extra=metadata, field=step.field.spec.rest_name)
    step, error = run.failures[0]
    detail = error.reason
    if len(run.failures) > 1:
        others = ", ".join(s.field.spec.rest_name for s, _ in run.failures[1:])
        detail += f" (also failed: {others})"
    restored, unrestored = (
        _names(snapshot, FieldState.RESTORED),
        [o for o in snapshot.outcomes if o.state is FieldState.RESTORE_FAILED],
    )
    if restored or unrestored:
        metadata["restored"] = restored
        metadata["restore_failed"] = ",".join(o.field.value for o in unrestored)
        if unrestored:
            stuck = ", ".join(f"{o.field.spec.rest_name} still {o.value}" for o in unrestored)
            detail += f"; rollback incomplete: {stuck}"
        else:
            detail += "; rolled back"
    metadata["field"] = step.field.value
    metadata["failed"] = ",".join(s.field.value for s, _ in run.failures)
    unconfirmed = _unresolved(snapshot)
    if unconfirmed:
        metadata["unconfirmed"] = ",".join(f.value for f in unconfirmed)
    if error.unconfirmed:
        detail += " (sent, but the answer was lost: WhatsApp may hold the new value)"
    return _stanza_failure(error).failure(
        snapshot,
        retry_after=error.retry_after,
        extra=metadata,
        field=step.field.spec.rest_name,
        detail=detail,
    )


def _stanza_failure(error: SessionError) -> Reason:
    """The status and reason a failed stanza ends its update with.

    A stanza that never left, or whose answer was lost, is the connection's trouble
    (UNAVAILABLE: retry later); WhatsApp's own rate limit (429) is RESOURCE_EXHAUSTED and its
    server errors (5xx) UNAVAILABLE; any other refusal is INTERNAL, as in the REST contract.
    """
    if error.fate is StanzaFate.NOT_SENT:
        return errors.CONNECTION_LOST
    if error.fate is StanzaFate.UNCONFIRMED:
        return errors.STANZA_UNCONFIRMED
    if error.status == 429:
        return errors.WHATSAPP_RATE_LIMITED
    if error.status is not None and error.status >= 500:
        return errors.WHATSAPP_UNAVAILABLE
    return errors.STANZA_FAILED


def _unresolved(snapshot: Snapshot) -> list[Field]:
    """Fields whose last word is UNCONFIRMED (no re-read or restore settled them)."""
    latest = {o.field: o.state for o in snapshot.outcomes}
    return [f for f, state in latest.items() if state is FieldState.UNCONFIRMED]


def _names(snapshot: Snapshot, state: FieldState) -> str:
    return ",".join(f.value for f in snapshot.fields_in(state))
