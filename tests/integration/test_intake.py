"""The bulk intake path (a batch's jobs written by one COPY on Postgres, one multi-row INSERT on
SQLite): it writes exactly what a single submit writes, all or nothing, idempotently, within the
tenant's limits, and concurrent submits that collide end in one winner and no partial writes."""
from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, text

import scheduler.storage.jobs as jobs_module
from scheduler.errors import Conflict, TooManyPendingJobs
from scheduler.jobspec import BatchSpec, ChatMessage, JobSpec
from scheduler.storage import Database, JobStore, TenantStore, utcnow
from scheduler.storage.jobs import NEW_JOB_COLUMNS
from scheduler.storage.tables import Batch, Job

OWNER = "default"


@pytest.fixture(params=["postgres", "sqlite"])
def db(request: pytest.FixtureRequest) -> Iterator[Database]:
    if request.param == "postgres":
        yield request.getfixturevalue("pg_db")
        return
    database = Database(request.getfixturevalue("sqlite_url"))
    yield database
    database.dispose()


def counts(db: Database) -> tuple[int, int]:
    with db.session() as session:
        return (session.scalar(select(func.count()).select_from(Job)) or 0,
                session.scalar(select(func.count()).select_from(Batch)) or 0)


def prompts(count: int, tag: str, *, keys: bool = False) -> list[JobSpec]:
    return [JobSpec(prompt=f"{tag} question {i}", max_tokens=32, metadata={"row": i},
                    idempotency_key=f"{tag}-{i}" if keys else None) for i in range(count)]


def in_parallel(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls at once (a barrier releases them together); each one's result or exception."""
    results: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = calls[index]()
        except Exception as exc:  # noqa: BLE001 - the test inspects what each call raised
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


# -- what is written ---------------------------------------------------------------------------
FULL = dict(messages=[ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Zwölf?")],
            max_tokens=64, temperature=0.7, stop=["\n\n", "END"], min_quality=0.4,
            deadline=dt.datetime(2031, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
            allowed_models=["gemma-3-270m"], max_cost_usd=0.25, on_deadline_miss="expire", max_pending_s=90.5,
            reference="12", grader="numeric", metadata={"nested": {"list": [1, 2.5, None, "ü"]}, "flag": True})
COMPARED = [name for name in NEW_JOB_COLUMNS if name not in ("id", "batch_id", "idempotency_key", "created_at",
                                                             "updated_at", "expires_at")]


@pytest.mark.parametrize("fields", [FULL, dict(prompt="only a prompt")], ids=["every field", "defaults"])
def test_a_batch_writes_the_rows_a_single_submit_writes(db: Database, fields: dict[str, Any]) -> None:
    store = JobStore(db)
    now = utcnow()
    single, _ = store.submit_job(OWNER, JobSpec(**fields, idempotency_key="single"), now)
    batch, (batched_id,), _ = store.submit_batch(OWNER, BatchSpec(jobs=[JobSpec(**fields, idempotency_key="b")]), now)
    columns = ", ".join(f'"{name}"' for name in COMPARED)
    # As stored: JSON columns as their text (None is JSON null on every path, as SQLAlchemy writes it).
    as_text = ", ".join(f'"{name}"::text' if kind == "json" else f'"{name}"'
                        for name, kind in NEW_JOB_COLUMNS.items() if name in COMPARED)
    with db.session() as session:
        rows = {row[0]: row[1:] for row in session.execute(
            text(f"SELECT id, {as_text if not db.is_sqlite else columns} FROM jobs"))}
        read = {job.id: job for job in session.scalars(select(Job))}
    assert rows[single.id] == rows[batched_id]
    one, other = read[single.id], read[batched_id]
    assert [getattr(one, jobs_module._ATTRIBUTE_OF.get(n, n)) for n in COMPARED] == [
        getattr(other, jobs_module._ATTRIBUTE_OF.get(n, n)) for n in COMPARED]
    assert (other.batch_id, other.idempotency_key, other.created_at) == (batch.id, "b", now)
    assert other.expires_at - other.created_at == one.expires_at - one.created_at
    if "deadline" in fields:
        assert other.deadline_at == fields["deadline"]
        assert other.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Zwölf?"}]


def test_only_what_has_an_idempotency_key_gets_a_request_hash(db: Database) -> None:
    """The hash is what a repeated key is checked against; nothing can name a job without a key."""
    store = JobStore(db)
    keyed = JobSpec(prompt="keyed", idempotency_key="k")
    single, _ = store.submit_job(OWNER, JobSpec(prompt="single"), utcnow())
    unkeyed, unkeyed_ids, _ = store.submit_batch(OWNER, BatchSpec(jobs=[JobSpec(prompt="a"), keyed]), utcnow())
    keyed_batch, keyed_ids, _ = store.submit_batch(OWNER, BatchSpec(jobs=[JobSpec(prompt="b")], idempotency_key="b"),
                                                   utcnow())
    with db.session() as session:
        job_hashes: dict[str, str] = dict(session.execute(select(Job.id, Job.request_hash)).all())
        batch_hashes: dict[str, str] = dict(session.execute(select(Batch.id, Batch.request_hash)).all())
    assert job_hashes[single.id] == job_hashes[unkeyed_ids[0]] == job_hashes[keyed_ids[0]] == ""
    assert job_hashes[unkeyed_ids[1]] == keyed.request_hash()
    assert batch_hashes == {unkeyed.id: "", keyed_batch.id: BatchSpec(jobs=[JobSpec(prompt="b")]).request_hash()}


def test_jobs_keep_their_order_and_a_repeat_returns_the_same_ids(db: Database) -> None:
    store = JobStore(db)
    spec = BatchSpec(jobs=prompts(3000, "order", keys=True), idempotency_key="ordered")
    batch, job_ids, created = store.submit_batch(OWNER, spec, utcnow())
    again, again_ids, again_created = store.submit_batch(OWNER, spec, utcnow())
    assert (created, again_created, again.id) == (True, False, batch.id)
    assert again_ids == job_ids and len(set(job_ids)) == 3000
    with db.session() as session:
        stored = list(session.execute(select(Job.id, Job.prompt).where(Job.batch_id == batch.id)
                                      .order_by(Job.created_at)))
    assert [row.id for row in stored] == job_ids
    assert [row.prompt for row in stored] == [job.prompt for job in spec.jobs]
    with pytest.raises(Conflict, match="different request"):
        store.submit_batch(OWNER, BatchSpec(jobs=prompts(2, "other"), idempotency_key="ordered"), utcnow())


def test_new_ids_are_uuid4_text() -> None:
    ids = jobs_module._new_ids(2000)
    assert len(set(ids)) == 2000
    for job_id in ids:
        parsed = uuid.UUID(job_id)
        assert (str(parsed), parsed.version, parsed.variant) == (job_id, 4, uuid.RFC_4122)


def test_request_hashes_of_a_batch_are_its_own_and_its_jobs() -> None:
    jobs = [JobSpec(prompt="a"), JobSpec(prompt="b", idempotency_key="k", max_pending_s=60), JobSpec(**FULL)]
    for spec in (BatchSpec(jobs=jobs), BatchSpec(jobs=jobs, name="n", alpha=0.5, max_pending_s=30,
                                                 idempotency_key="x")):
        hashes = spec.request_hashes()
        assert hashes.batch == spec.request_hash()
        assert [hashes.job(i) for i in range(len(jobs))] == [job.request_hash() for job in jobs]


# -- all or nothing -------------------------------------------------------------------------------
def test_a_failure_midway_writes_nothing(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    made = 0
    real_row = jobs_module._job_row

    def failing_row(*args: Any, **kwargs: Any) -> Any:
        nonlocal made
        made += 1
        if made == 5000:
            raise RuntimeError("the writer failed midway")
        return real_row(*args, **kwargs)

    monkeypatch.setattr(jobs_module, "_job_row", failing_row)
    spec = BatchSpec(jobs=prompts(10_000, "midway", keys=True), idempotency_key="midway")
    with pytest.raises(RuntimeError, match="midway"):
        JobStore(db).submit_batch(OWNER, spec, utcnow())
    assert made == 5000 and counts(db) == (0, 0)
    monkeypatch.setattr(jobs_module, "_job_row", real_row)
    # Nothing was kept, not even the keys: the same batch goes in whole now.
    _, job_ids, created = JobStore(db).submit_batch(OWNER, spec, utcnow())
    assert created and len(job_ids) == 10_000 and counts(db) == (10_000, 1)


def test_a_job_key_used_before_refuses_the_whole_batch(db: Database) -> None:
    store = JobStore(db)
    store.submit_job(OWNER, JobSpec(prompt="first", idempotency_key="used-7000"), utcnow())
    jobs = prompts(10_000, "used", keys=True)   # used-7000 is the 7,001st job
    with pytest.raises(Conflict, match="already used by earlier jobs: \\['used-7000'\\]"):
        store.submit_batch(OWNER, BatchSpec(jobs=jobs, idempotency_key="whole"), utcnow())
    assert counts(db) == (1, 0)


# -- limits --------------------------------------------------------------------------------------
def test_the_pending_limit_holds_for_bulk_batches(db: Database) -> None:
    TenantStore(db).set_tenant(OWNER, utcnow(), max_pending_jobs=15_000)
    store = JobStore(db)
    store.submit_batch(OWNER, BatchSpec(jobs=prompts(10_000, "first")), utcnow())
    with pytest.raises(TooManyPendingJobs, match="it has 10000, and this request adds 10000"):
        store.submit_batch(OWNER, BatchSpec(jobs=prompts(10_000, "second")), utcnow())
    assert counts(db) == (10_000, 1)


def test_concurrent_batches_never_overrun_the_pending_limit(pg_db: Database) -> None:
    TenantStore(pg_db).set_tenant(OWNER, utcnow(), max_pending_jobs=10_000)
    store = JobStore(pg_db)
    results = in_parallel(*(lambda i=i: store.submit_batch(OWNER, BatchSpec(jobs=prompts(6000, f"c{i}")), utcnow())
                            for i in range(3)))
    assert sum(isinstance(result, tuple) for result in results) == 1
    assert sum(isinstance(result, TooManyPendingJobs) for result in results) == 2
    assert counts(pg_db) == (6000, 1)


# -- concurrent submits that collide ----------------------------------------------------------------
def test_a_batch_submitted_twice_at_once_is_written_once(pg_db: Database) -> None:
    store = JobStore(pg_db)
    spec = BatchSpec(jobs=prompts(5000, "twice", keys=True), idempotency_key="twice")
    results = in_parallel(*(lambda: store.submit_batch(OWNER, spec, utcnow()) for _ in range(3)))
    assert all(isinstance(result, tuple) for result in results), results
    assert sorted(created for _, _, created in results) == [False, False, True]
    assert len({batch.id for batch, _, _ in results}) == 1
    assert all(job_ids == results[0][1] for _, job_ids, _ in results)
    assert counts(pg_db) == (5000, 1)


def test_one_batch_key_for_different_work_at_once_is_one_batch_and_a_409(pg_db: Database) -> None:
    store = JobStore(pg_db)
    results = in_parallel(*(lambda i=i: store.submit_batch(
        OWNER, BatchSpec(jobs=prompts(3000, f"work-{i}"), idempotency_key="same-key"), utcnow()) for i in range(2)))
    assert sorted(type(result).__name__ for result in results) == ["Conflict", "tuple"]
    assert counts(pg_db) == (3000, 1)


def test_batches_sharing_job_keys_at_once_end_in_one_winner_without_deadlock(pg_db: Database) -> None:
    """Two batches hold the same 3,000 job keys in opposite orders: without a common write order
    each would wait for the other's keys (a deadlock Postgres breaks with an error after a second)."""
    store = JobStore(pg_db)
    shared = prompts(3000, "shared", keys=True)
    forward = BatchSpec(jobs=[*shared, *prompts(2000, "forward")], idempotency_key="forward")
    backward = BatchSpec(jobs=[*reversed(shared), *prompts(2000, "backward")], idempotency_key="backward")
    results = in_parallel(lambda: store.submit_batch(OWNER, forward, utcnow()),
                          lambda: store.submit_batch(OWNER, backward, utcnow()))
    winners = [result for result in results if isinstance(result, tuple)]
    losers = [result for result in results if not isinstance(result, tuple)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert isinstance(losers[0], Conflict) and "idempotency_key" in str(losers[0])
    assert counts(pg_db) == (5000, 1)
    with pg_db.session() as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.batch_id == winners[0][0].id)) == 5000
