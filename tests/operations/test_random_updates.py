"""The property: over random accounts, updates, faults and policies, the stream, the snapshot,
the journal and "WhatsApp" (the simulated session) agree.

Run on ``Operations`` directly, without gRPC: every update's final events are what the snapshot
lists, what the journal recorded, and what WhatsApp holds.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from service.engine import (
    FINAL_STATES,
    FailurePolicy,
    FieldEvent,
    FieldState,
    Plan,
    Snapshot,
    UpdateOptions,
)
from service.errors import GatewayError
from service.instances import Instance
from service.journal.sqlite import sqlite_journal
from service.operations import Operations, UpdateRequest
from service.sessions.simulated import SimulatedSession
from service.settings import Field, Settings
from tests.helpers.operations import REFUSAL


@dataclass(frozen=True)
class Step:
    requested: dict[Field, str]
    refused: frozenset[Field]
    stanzas_before_drop: int | None
    policy: FailurePolicy
    force: bool


_values = {f: st.sampled_from(f.spec.values) for f in Field}
_accounts = st.fixed_dictionaries(_values).map(Settings)
_steps = st.builds(
    Step,
    requested=st.sets(st.sampled_from(list(Field)), min_size=1).flatmap(
        lambda fields: st.fixed_dictionaries({f: _values[f] for f in fields})
    ),
    refused=st.frozensets(st.sampled_from(list(Field)), max_size=3),
    stanzas_before_drop=st.none() | st.integers(0, 5),
    policy=st.sampled_from(list(FailurePolicy)),
    force=st.booleans(),
)


def _check_policy(step: Step, finals: list[FieldEvent], before: Settings) -> None:
    """The outcomes follow the policy."""
    firsts = [e for e in finals if e.state not in (FieldState.RESTORED, FieldState.RESTORE_FAILED)]
    restores = finals[len(firsts) :]
    assert [e.field for e in firsts] == list(Settings(step.requested))
    failed = [i for i, e in enumerate(firsts) if e.state is FieldState.FAILED]
    if step.policy is FailurePolicy.CONTINUE or not failed:
        assert all(e.state is not FieldState.NOT_ATTEMPTED for e in firsts)
    else:
        assert len(failed) == 1
        after = firsts[failed[0] + 1 :]
        assert all(e.state is FieldState.NOT_ATTEMPTED for e in after)
    if step.policy is FailurePolicy.ROLLBACK and failed:
        applied = [e.field for e in firsts if e.state is FieldState.APPLIED]
        assert [e.field for e in restores] == list(reversed(applied))
    else:
        assert restores == []
    for event in firsts:
        if event.state is FieldState.UNCHANGED:
            assert not step.force
            assert before[event.field] == event.value


async def _run_step(operations: Operations, instance: Instance, step: Step) -> None:
    """Runs one update with the step's faults and checks every invariant."""
    session = instance.session
    assert isinstance(session, SimulatedSession)
    session.clear_faults()
    session.reconnect()
    for field in step.refused:
        session.fail_field(field, REFUSAL)
    if step.stanzas_before_drop is not None:
        session.drop_after(step.stanzas_before_drop)
    before = session.server_settings
    journaled = len((await operations.list(instance, 100, ""))[0])
    request = UpdateRequest(
        step.requested, UpdateOptions(step.policy, step.force), None, "account:acme#test"
    )
    operation = await operations.start(instance, request, None)
    events: list[Any] = []
    raised: GatewayError | None = None
    try:
        async for event in operation.follow():
            events.append(event)
    except GatewayError as error:
        raised = error
    rows, _ = await operations.list(instance, 100, "")

    if not events:
        # Refused before the plan (the connection dropped at the one-time fetch): nothing sent,
        # nothing journaled.
        assert raised is not None
        assert raised.reason == "INSTANCE_NOT_CONNECTED"
        assert session.server_settings == before
        assert len(rows) == journaled
        return
    # A failed update ends with its snapshot, which carries the error (the servicer raises it);
    # only a refusal before the plan is raised by follow().
    assert raised is None
    assert len(rows) == journaled + 1
    assert rows[0].id == operation.id
    plan, snapshot = events[0], events[-1]
    assert isinstance(plan, Plan)
    assert isinstance(snapshot, Snapshot)
    # The snapshot the caller receives is what WhatsApp holds.
    assert snapshot.settings == session.server_settings
    assert snapshot.settings.complete
    finals = [e for e in events if isinstance(e, FieldEvent) and e.state in FINAL_STATES]
    assert list(snapshot.outcomes) == finals
    _check_policy(step, finals, before)
    # WhatsApp holds exactly what the events say was applied and restored.
    model = dict(before)
    for event in finals:
        if event.state is FieldState.APPLIED:
            model[event.field] = event.value
        elif event.state is FieldState.RESTORED:
            model[event.field] = before[event.field]
    assert session.server_settings == Settings(model)
    # The journal recorded exactly those final events, and how the update ended.
    row = await operations.get(instance, operation.id)
    assert list(row.outcomes) == finals
    assert row.settings == snapshot.settings
    assert row.state.name == ("COMPLETED" if snapshot.error is None else "FAILED")
    if snapshot.error is not None:
        assert row.error is not None
        assert row.error.message == snapshot.error.message
        assert row.error.reason == snapshot.error.reason


async def _run_property(account: Settings, steps: list[Step]) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        operations = Operations(sqlite_journal(Path(data_dir) / "journal.db"), 86400)
        await operations.start_up()
        instance = Instance("sales", "acme", SimulatedSession(account))
        try:
            for step in steps:
                await _run_step(operations, instance, step)
        finally:
            await operations.close()


@hypothesis_settings(max_examples=50, deadline=None)
@given(account=_accounts, steps=st.lists(_steps, min_size=1, max_size=4))
def test_random_updates_agree_with_the_journal_and_whatsapp(
    account: Settings, steps: list[Step]
) -> None:
    asyncio.run(_run_property(account, steps))
