"""The two-audit rule that turns "missing from the broker" into "lost", and reading stored messages."""
from __future__ import annotations

import json

from scheduler.broker_audit import LostDispatchConfirmation, _task_id


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_dispatch_is_lost_only_when_missing_in_audits_min_gap_apart() -> None:
    clock = Clock()
    confirmation = LostDispatchConfirmation(min_gap_s=5.0, clock=clock)
    assert confirmation.confirm({"a", "b"}) == set()
    clock.now = 3.0
    assert confirmation.confirm({"a", "b"}) == set()  # too soon: a worker may be popping it
    clock.now = 5.0
    assert confirmation.confirm({"a", "b", "c"}) == {"a", "b"}  # c was first missed just now


def test_being_found_once_starts_the_count_again() -> None:
    clock = Clock()
    confirmation = LostDispatchConfirmation(min_gap_s=5.0, clock=clock)
    confirmation.confirm({"a"})
    clock.now = 4.0
    assert confirmation.confirm(set()) == set()  # found (unacked, say)
    clock.now = 6.0
    assert confirmation.confirm({"a"}) == set()
    clock.now = 11.0
    assert confirmation.confirm({"a"}) == {"a"}


def test_forgotten_dispatches_are_not_confirmed_again() -> None:
    clock = Clock()
    confirmation = LostDispatchConfirmation(min_gap_s=5.0, clock=clock)
    confirmation.confirm({"a"})
    clock.now = 5.0
    assert confirmation.confirm({"a"}) == {"a"}
    confirmation.forget({"a"})
    assert confirmation.confirm({"a"}) == set()


def test_task_ids_come_from_waiting_and_unacked_entries() -> None:
    payload = {"headers": {"id": "d-1"}, "properties": {"correlation_id": "d-1"}, "body": "..."}
    assert _task_id(json.dumps(payload).encode()) == "d-1"
    assert _task_id(json.dumps([payload, "model.x", "model.x"]).encode(), unacked_entry=True) == "d-1"
    # A protocol-1 style message without the header: the correlation id names the task too.
    assert _task_id(json.dumps({"headers": {}, "properties": {"correlation_id": "d-2"}}).encode()) == "d-2"


def test_messages_that_are_not_celery_tasks_are_skipped() -> None:
    assert _task_id(b"not json") is None
    assert _task_id(b"[1, 2]") is None
    assert _task_id(json.dumps({"body": "x"}).encode()) is None
    assert _task_id(b"[]", unacked_entry=True) is None
