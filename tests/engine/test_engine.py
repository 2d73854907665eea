"""The engine's sequencing rules, checked without gRPC on simulated sessions.

An update yields the plan, then each requested field's progress in canonical order (STARTED then
APPLIED or FAILED for a field that changes; UNCHANGED for one that does not; NOT_ATTEMPTED after a
failure), then a snapshot of the settings read back from the session. Errors found before the plan
are raised before any event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import engine, errors
from service.engine import CALLER_CANCELLED, Event, FieldEvent, FieldState, Halt, Plan, Snapshot
from service.errors import Code, GatewayError
from service.instances import Instance
from service.sessions.simulated import (
    DEFAULT_SETTINGS,
    NOT_CONNECTED_REASON,
    SentStanza,
    SimulatedSession,
)
from service.settings import Field, Settings
from tests.helpers.updates import FIVE_CHANGES

REFUSAL = "privacy value not allowed for this account"
FETCH = SentStanza(None, None)


def _instance(session: SimulatedSession) -> Instance:
    return Instance("sales", "acme", session)


async def _run(
    instance: Instance, requested: Mapping[Field, str], deadline: float | None = None
) -> list[Event]:
    return [event async for event in engine.update(instance, requested, deadline=deadline)]


def _progress(events: list[Event]) -> list[tuple[Field, FieldState]]:
    return [(e.field, e.state) for e in events if isinstance(e, FieldEvent)]


def _snapshot(events: list[Event]) -> Snapshot:
    last = events[-1]
    assert isinstance(last, Snapshot)
    return last


def _sets(session: SimulatedSession) -> list[SentStanza]:
    return [s for s in session.sent if s.category is not None]


# -- the event order --------------------------------------------------------------------------


async def test_fields_are_planned_and_applied_in_canonical_order() -> None:
    session = SimulatedSession()
    requested = {Field.GROUP_ADD: "contacts", Field.READ_RECEIPTS: "none", Field.LAST_SEEN: "none"}

    events = await _run(_instance(session), requested)

    plan = events[0]
    assert isinstance(plan, Plan)
    assert [s.field for s in plan.steps] == [Field.LAST_SEEN, Field.READ_RECEIPTS, Field.GROUP_ADD]
    assert [(s.current, s.target) for s in plan.steps] == [
        ("all", "none"),
        ("all", "none"),
        ("all", "contacts"),
    ]
    assert plan.stanzas == 3
    assert _progress(events) == [
        (Field.LAST_SEEN, FieldState.STARTED),
        (Field.LAST_SEEN, FieldState.APPLIED),
        (Field.READ_RECEIPTS, FieldState.STARTED),
        (Field.READ_RECEIPTS, FieldState.APPLIED),
        (Field.GROUP_ADD, FieldState.STARTED),
        (Field.GROUP_ADD, FieldState.APPLIED),
    ]
    assert _sets(session) == [
        SentStanza("last", "none"),
        SentStanza("readreceipts", "none"),
        SentStanza("groupadd", "contacts"),
    ]
    snapshot = _snapshot(events)
    assert snapshot.error is None
    assert snapshot.settings == Settings({**DEFAULT_SETTINGS, **requested})


async def test_unchanged_field_is_one_event_and_no_stanza() -> None:
    session = SimulatedSession()
    requested = {Field.STATUS: "contacts", Field.PROFILE: "none"}  # status already "contacts"

    events = await _run(_instance(session), requested)

    plan = events[0]
    assert isinstance(plan, Plan)
    assert [s.changes for s in plan.steps] == [False, True]
    assert plan.stanzas == 1
    assert _progress(events) == [
        (Field.STATUS, FieldState.UNCHANGED),
        (Field.PROFILE, FieldState.STARTED),
        (Field.PROFILE, FieldState.APPLIED),
    ]
    unchanged = events[1]
    assert isinstance(unchanged, FieldEvent)
    assert unchanged.elapsed is None
    assert session.sent == [FETCH, SentStanza("profile", "none")]


async def test_first_failure_stops_the_update() -> None:
    session = SimulatedSession()
    session.fail_field(Field.PROFILE, REFUSAL)
    requested = {Field.LAST_SEEN: "none", Field.PROFILE: "none", Field.ONLINE: "match_last_seen"}

    events = await _run(_instance(session), requested)

    assert _progress(events) == [
        (Field.LAST_SEEN, FieldState.STARTED),
        (Field.LAST_SEEN, FieldState.APPLIED),
        (Field.PROFILE, FieldState.STARTED),
        (Field.PROFILE, FieldState.FAILED),
        (Field.ONLINE, FieldState.NOT_ATTEMPTED),
    ]
    failed = events[4]
    assert isinstance(failed, FieldEvent)
    assert failed.error == REFUSAL
    assert failed.elapsed is not None
    snapshot = _snapshot(events)
    assert snapshot.settings == DEFAULT_SETTINGS.with_value(Field.LAST_SEEN, "none")
    assert snapshot.error is not None
    assert snapshot.error.code is Code.INTERNAL
    assert snapshot.error.reason == "STANZA_FAILED"
    assert snapshot.error.message == f"failed to update profile privacy: {REFUSAL}"
    # What the transports put in the error's details: the same settings and outcomes.
    assert snapshot.error.snapshot.settings == snapshot.settings
    assert snapshot.error.snapshot.outcomes == snapshot.outcomes
    assert _sets(session) == [SentStanza("last", "none"), SentStanza("profile", "none")]


async def test_passed_deadline_starts_no_stanza() -> None:
    session = SimulatedSession()
    requested = {Field.STATUS: "contacts", Field.PROFILE: "none", Field.ONLINE: "match_last_seen"}

    events = await _run(_instance(session), requested, deadline=time.monotonic() - 1)

    assert _progress(events) == [
        (Field.STATUS, FieldState.UNCHANGED),
        (Field.PROFILE, FieldState.NOT_ATTEMPTED),
        (Field.ONLINE, FieldState.NOT_ATTEMPTED),
    ]
    snapshot = _snapshot(events)
    assert snapshot.error is not None
    assert snapshot.error.code is Code.DEADLINE_EXCEEDED
    assert snapshot.settings == DEFAULT_SETTINGS == session.server_settings
    assert _sets(session) == []


async def test_deadline_passing_mid_update_stops_before_the_next_stanza() -> None:
    session = SimulatedSession(latency=0.1)
    # Fetch at 0 ms, sets at 100 and 200 ms; the next would start at 300 ms.
    events = await _run(_instance(session), FIVE_CHANGES, deadline=time.monotonic() + 0.25)

    snapshot = _snapshot(events)
    states = [o.state for o in snapshot.outcomes]
    applied = states.count(FieldState.APPLIED)
    assert 1 <= applied <= 3
    assert states == [FieldState.APPLIED] * applied + [FieldState.NOT_ATTEMPTED] * (5 - applied)
    assert snapshot.error is not None
    assert snapshot.error.code is Code.DEADLINE_EXCEEDED
    assert snapshot.error.reason == "DEADLINE_EXCEEDED"
    assert len(_sets(session)) == applied
    assert snapshot.settings == session.server_settings


async def test_halted_update_lets_the_stanza_in_flight_finish_and_starts_no_other() -> None:
    session = SimulatedSession(latency=0.05)
    instance = _instance(session)
    halts: list[Halt] = []
    events = []
    async for event in engine.update(instance, FIVE_CHANGES, halt=lambda: next(iter(halts), None)):
        events.append(event)
        if isinstance(event, FieldEvent) and event.state is FieldState.STARTED:
            halts.append(CALLER_CANCELLED)  # the caller leaves while the first stanza is in flight

    snapshot = events[-1]
    assert isinstance(snapshot, Snapshot)
    assert [o.state for o in snapshot.outcomes] == [FieldState.APPLIED] + [
        FieldState.NOT_ATTEMPTED
    ] * 4
    assert snapshot.error is not None
    assert snapshot.error.code is Code.CANCELLED
    assert session.sent == [FETCH, SentStanza("last", "none")]
    assert session.server_settings == DEFAULT_SETTINGS.with_value(Field.LAST_SEEN, "none")
    assert snapshot.settings == session.server_settings
    assert not instance.lock.locked()


async def test_the_instance_is_held_from_plan_to_snapshot() -> None:
    instance = _instance(SimulatedSession())
    updates = engine.update(instance, {Field.LAST_SEEN: "none"})

    assert isinstance(await anext(updates), Plan)
    assert instance.lock.locked()
    rest = [event async for event in updates]
    assert isinstance(rest[-1], Snapshot)
    assert not instance.lock.locked()


# -- errors before the plan -------------------------------------------------------------------


async def test_empty_request_raises_no_settings_before_any_event() -> None:
    session = SimulatedSession()
    updates = engine.update(_instance(session), {})

    with pytest.raises(GatewayError) as raised:
        await anext(updates)

    assert raised.value.code is Code.INVALID_ARGUMENT
    assert raised.value.reason == "NO_SETTINGS"
    assert raised.value.message == errors.NO_SETTINGS.message
    assert session.sent == []


async def test_disconnected_session_raises_not_connected_before_any_event() -> None:
    session = SimulatedSession(connected=False)
    instance = _instance(session)
    updates = engine.update(instance, {Field.LAST_SEEN: "none"})

    with pytest.raises(GatewayError) as raised:
        await anext(updates)

    assert raised.value.code is Code.FAILED_PRECONDITION
    assert raised.value.reason == "INSTANCE_NOT_CONNECTED"
    assert raised.value.message == errors.INSTANCE_NOT_CONNECTED.message
    assert session.sent == []
    assert not instance.lock.locked()


# -- the invariants, over random updates ------------------------------------------------------

_requests = st.fixed_dictionaries({}, optional={f: st.sampled_from(f.spec.values) for f in Field})
_accounts = st.fixed_dictionaries({f: st.sampled_from(f.spec.values) for f in Field}).map(Settings)


@dataclass(frozen=True)
class Step:
    """One update: what it asks for, the field WhatsApp refuses, and when the connection drops."""

    requested: dict[Field, str]
    refused: Field | None
    stanzas_before_drop: int | None


_steps = st.builds(
    Step,
    requested=_requests,
    refused=st.none() | st.sampled_from(Field),
    stanzas_before_drop=st.none() | st.integers(0, 8),
)


def _expected_states(
    plan: Plan, refused: Field | None, budget: int | None
) -> list[tuple[Field, FieldState]]:
    """Each field's final state, from the rules: canonical order, first failure stops."""
    states: list[tuple[Field, FieldState]] = []
    failed = False
    for step in plan.steps:
        if failed:
            state = FieldState.NOT_ATTEMPTED
        elif not step.changes:
            state = FieldState.UNCHANGED
        elif budget == 0 or step.field is refused:
            state, failed = FieldState.FAILED, True
        else:
            state = FieldState.APPLIED
        if budget is not None and step.changes and not failed:
            budget -= 1
        states.append((step.field, state))
    return states


def _check_update(
    step: Step, before: Settings, events: list[Event], session: SimulatedSession, sets: int
) -> None:
    plan, *progress, snapshot = events
    assert isinstance(plan, Plan)
    assert isinstance(snapshot, Snapshot)
    assert all(isinstance(e, FieldEvent) for e in progress)
    field_events = [e for e in progress if isinstance(e, FieldEvent)]
    requested = Settings(step.requested)

    # The plan: every requested field, in canonical order, against the settings before.
    assert [(s.field, s.current, s.target) for s in plan.steps] == [
        (f, before[f], v) for f, v in requested.items()
    ]

    # The snapshot is what WhatsApp holds, and every requested field has exactly one outcome.
    assert snapshot.settings == session.server_settings
    assert [o.field for o in snapshot.outcomes] == list(requested)
    finals = [e for e in field_events if e.state is not FieldState.STARTED]
    assert finals == list(snapshot.outcomes)

    # STARTED comes right before its field's APPLIED or FAILED, and only there.
    for index, event in enumerate(field_events):
        sent_stanza = event.state in (FieldState.APPLIED, FieldState.FAILED)
        if event.state is FieldState.STARTED:
            following = field_events[index + 1]
            assert following.field is event.field
            assert following.state in (FieldState.APPLIED, FieldState.FAILED)
        if sent_stanza:
            assert index > 0
            assert field_events[index - 1] == FieldEvent(
                event.field, FieldState.STARTED, event.value, event.previous
            )
            # A round trip is reported for every stanza WhatsApp answered; a stanza that could
            # not be sent (connection lost) has none.
            answered = event.error != NOT_CONNECTED_REASON
            assert (event.elapsed is not None) is answered
        else:
            assert event.elapsed is None

    states = [o.state for o in snapshot.outcomes]
    applied = snapshot.fields_in(FieldState.APPLIED)
    failed = snapshot.fields_in(FieldState.FAILED)
    assert len(failed) <= 1
    # NOT_ATTEMPTED only after a FAILED, and everything after a FAILED is NOT_ATTEMPTED.
    if failed:
        first_failure = states.index(FieldState.FAILED)
        assert set(states[first_failure + 1 :]) <= {FieldState.NOT_ATTEMPTED}
        assert FieldState.NOT_ATTEMPTED not in states[:first_failure]
    else:
        assert FieldState.NOT_ATTEMPTED not in states
    # UNCHANGED exactly for the fields that already held the value (before any failure).
    for planned, outcome in zip(plan.steps, snapshot.outcomes, strict=True):
        if outcome.state is FieldState.UNCHANGED:
            assert not planned.changes
        if outcome.state in (FieldState.APPLIED, FieldState.FAILED):
            assert planned.changes

    # APPLIED fields hold their target; nothing else changed.
    assert snapshot.settings == Settings({**before, **{f: requested[f] for f in applied}})

    # One stanza per APPLIED field and per FAILED field WhatsApp refused; a field that failed
    # because the connection was gone sent none. No stanza for UNCHANGED fields.
    lost = snapshot.error is not None and snapshot.error.reason == "CONNECTION_LOST"
    stanza_fields = [f for f in requested if f in applied or (f in failed and not lost)]
    assert session.sent[len(session.sent) - sets :] == [
        SentStanza(f.spec.category, requested[f]) for f in stanza_fields
    ]

    # The error names the failure, and only a failure has one.
    if not failed:
        assert snapshot.error is None
        return
    assert snapshot.error is not None
    failure = snapshot.outcomes[states.index(FieldState.FAILED)]
    reason = NOT_CONNECTED_REASON if lost else REFUSAL
    assert failure.error == reason
    assert snapshot.error.message == (
        f"failed to update {failure.field.spec.rest_name} privacy: {reason}"
    )
    assert snapshot.error.reason == ("CONNECTION_LOST" if lost else "STANZA_FAILED")
    assert snapshot.error.metadata["applied"] == ",".join(f.value for f in applied)


async def _run_steps(account: Settings, steps: list[Step]) -> None:
    session = SimulatedSession(account)
    instance = _instance(session)
    fetched = False
    for step in steps:
        session.clear_faults()
        session.reconnect()
        if step.refused is not None:
            session.fail_field(step.refused, REFUSAL)
        if step.stanzas_before_drop is not None:
            session.drop_after(step.stanzas_before_drop)
        before = session.server_settings
        sent_before = len(session.sent)
        budget = step.stanzas_before_drop
        events: list[Event] = []
        refused_with: str | None = None

        try:
            async for event in engine.update(instance, step.requested):
                events.append(event)
        except GatewayError as error:
            refused_with = error.reason

        if refused_with is not None:
            # Only errors found before the plan are raised, and they come before any event.
            assert events == []
            assert session.server_settings == before
            assert len(session.sent) == sent_before
            assert not instance.lock.locked()
            if not step.requested:
                assert refused_with == "NO_SETTINGS"
            else:
                # Only the one-time fetch can meet the dropped connection.
                assert refused_with == "INSTANCE_NOT_CONNECTED"
                assert not fetched
                assert budget == 0
            continue

        assert step.requested, "an empty request must be refused"
        assert not instance.lock.locked()
        # The settings are fetched with one stanza the first time, then served from the cache.
        new_fetches = [s for s in session.sent[sent_before:] if s == FETCH]
        assert len(new_fetches) == (0 if fetched else 1)
        if not fetched and budget is not None:
            budget -= 1
        fetched = True
        plan = events[0]
        assert isinstance(plan, Plan)
        sets = len(session.sent) - sent_before - len(new_fetches)
        _check_update(step, before, events, session, sets)
        outcomes = _snapshot(events).outcomes
        assert [(o.field, o.state) for o in outcomes] == _expected_states(
            plan, step.refused, budget
        )


@settings(max_examples=200, deadline=None)
@given(account=_accounts, steps=st.lists(_steps, min_size=1, max_size=5))
def test_random_updates_keep_the_invariants(account: Settings, steps: list[Step]) -> None:
    asyncio.run(_run_steps(account, steps))
