"""Each hand-written statement of ``runs.statements`` against its ORM equivalent, on the database
the tests run on (SQLite, or PostgreSQL when DATABASE_URL names one): the same answer and the
same rows after it. Each side runs in a transaction rolled back afterwards, from the same rows.
Statements with and without RETURNING are both run."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from checkpoints.sql import FenceClosed
from runs import statements, transitions
from runs.graphs import system_assistant_id
from runs.models import Assistant, Run, RunEvent, RunStatus, Thread, ThreadStatus

pytestmark = pytest.mark.django_db

ECHO = system_assistant_id("echo")


class _Undo(Exception):
    pass


def outcome(change: Callable[[], Any], read: Callable[[], Any]) -> tuple[Any, Any]:
    """(what ``change()`` answered or the database error it raised, ``read()`` after it), then
    everything undone."""
    seen: list[Any] = []
    try:
        with transaction.atomic():
            try:
                with transaction.atomic():
                    answer = change()
            except IntegrityError:
                answer = IntegrityError
            seen[:] = [answer, read()]
            raise _Undo
    except _Undo:
        pass
    return seen[0], seen[1]


def same(statement: Callable[[], Any], orm: Callable[[], Any], read: Callable[[], Any]) -> Any:
    """Assert that the statement and the ORM answer alike and leave alike rows; the answer."""
    written, orm_answer = outcome(statement, read), outcome(orm, read)
    assert written == orm_answer
    return written[0]


def rows(model: type, **lookups: Any) -> list[dict[str, Any]]:
    return list(model.objects.filter(**lookups).order_by("pk").values())


def execute(sql: str, params: list[Any]) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create(username="owner")  # no password: hashing is slow


@pytest.fixture
def other(django_user_model):
    return django_user_model.objects.create(username="other")


def make_thread(owner, **fields: Any) -> Thread:
    fields = {"metadata": {"mine": 1, "nested": {"k": [1, 2]}}, **fields}
    return Thread.objects.create(owner=owner, **fields)


def make_run(thread: Thread, status: str = RunStatus.PENDING, *, age: float = 60, **fields: Any) -> Run:
    at = timezone.now() - timedelta(seconds=age)
    fields = {"created_at": at, "updated_at": at, **fields}
    return Run.objects.create(
        thread=thread, owner=thread.owner, assistant_id=ECHO, status=status,
        kwargs={"input": {"x": "é"}, "config": {"configurable": {"n": 1}}}, **fields,
    )


# --- a row of any model ---------------------------------------------------------------------------


@pytest.mark.parametrize("ignore_conflicts", [False, True])
def test_insert_is_save(owner, ignore_conflicts: bool) -> None:
    thread_id, run_id, now = uuid.uuid4(), uuid.uuid4(), timezone.now()

    def new() -> tuple[Thread, Run]:
        thread = Thread(
            thread_id=thread_id, owner=owner, metadata={"a": [1, {"b": None}], "ü": "ß"},
            status=ThreadStatus.BUSY, temporary=True, created_at=now, updated_at=now,
            state_updated_at=now,
        )
        run = Run(
            run_id=run_id, thread_id=thread_id, assistant_id=ECHO, owner=owner,
            kwargs={"input": {"big": 2**40}}, metadata={"m": True}, created_at=now, updated_at=now,
            idempotency_key="key", request_hash="hash",
        )
        return thread, run

    def written() -> None:
        with connection.cursor() as cursor:
            for obj in new():
                statements.insert(cursor, obj, ignore_conflicts=ignore_conflicts)

    def orm() -> None:
        for obj in new():
            type(obj).objects.bulk_create([obj], ignore_conflicts=ignore_conflicts)

    def read() -> tuple:
        return rows(Thread, pk=thread_id), rows(Run, pk=run_id)

    same(written, orm, read)
    if ignore_conflicts:  # over rows that are there already: nothing changes, nothing fails
        thread, run = new()
        thread.save()
        run.save()
        Thread.objects.filter(pk=thread_id).update(metadata={"kept": 1})
        same(written, orm, read)
        assert Thread.objects.get(pk=thread_id).metadata == {"kept": 1}


# --- a run's create -------------------------------------------------------------------------------


@pytest.mark.parametrize("count_active", [False, True])
@pytest.mark.parametrize("assistant_there", [True, False])
def test_run_probes(owner, other, count_active: bool, assistant_there: bool) -> None:
    thread = make_thread(owner)
    for status in RunStatus.values:
        make_run(thread, status) if status != RunStatus.RUNNING else make_run(make_thread(owner), status)
    make_run(make_thread(other))  # not the owner's
    # Not saved when it is not there: deleting one would take its runs with it.
    assistant = Assistant(assistant_id=uuid.uuid4(), graph_id="echo", owner=owner)
    if assistant_there:
        assistant.save()

    (active, exists), = execute(
        statements.run_probes_only_sql(connection.vendor, count_active),
        statements.run_probes_params(owner, assistant, count_active),
    )
    counted = Run.objects.filter(owner=owner, status__in=RunStatus.active()).count()
    assert counted == 2
    expected = counted if count_active else 0  # 0: the cap is off, nothing is counted
    assert (active, bool(exists)) == (expected, Assistant.objects.filter(pk=assistant.pk).exists())


@pytest.mark.parametrize("returning", [True, False])
@pytest.mark.parametrize("whose", ["owner", "other"])
def test_marking_a_thread_busy(owner, other, returning: bool, whose: str) -> None:
    if returning and not statements.can_return():
        pytest.skip("this database has no UPDATE ... RETURNING")
    thread = make_thread(owner)
    make_run(thread)
    asker = owner if whose == "owner" else other
    assistant = Assistant.objects.get(pk=ECHO)
    now = timezone.now()
    where = [statements.prep(Thread, "thread_id", thread.pk), asker.pk]
    busy = [ThreadStatus.BUSY, statements.prep(Thread, "updated_at", now), *where]
    probes = statements.run_probes_params(asker, assistant, True)

    def decoded(row: tuple | None) -> tuple | None:
        if row is None:
            return None
        metadata, active, exists = row
        return statements.from_db(Thread, "metadata", metadata), active, bool(exists)

    def written() -> tuple | None:
        if returning:
            found = execute(statements.thread_busy_sql(connection.vendor, True, True), busy + probes)
        else:
            found = execute(statements.thread_read_sql(connection.vendor, True), probes + where)
            if found:
                execute(statements.thread_busy_sql(connection.vendor, True, False), busy)
        return decoded(found[0]) if found else None

    def orm() -> tuple | None:
        mine = Thread.objects.filter(pk=thread.pk, owner=asker)
        found = mine.values_list("metadata", flat=True).first()
        if not mine.update(status=ThreadStatus.BUSY, updated_at=now):
            return None
        active = Run.objects.filter(owner=asker, status__in=RunStatus.active()).count()
        return found, active, Assistant.objects.filter(pk=ECHO).exists()

    answer = same(written, orm, lambda: rows(Thread, pk=thread.pk))
    assert (answer is None) is (whose == "other")


def test_a_threads_metadata(owner) -> None:
    thread = make_thread(owner)
    merged = {**thread.metadata, "graph_id": "echo", "assistant_id": str(ECHO)}
    field = Thread._meta.get_field("metadata")
    same(
        lambda: execute(
            statements.thread_metadata_sql(connection.vendor),
            [field.get_db_prep_save(merged, connection), statements.prep(Thread, "thread_id", thread.pk)],
        ),
        lambda: Thread.objects.filter(pk=thread.pk).update(metadata=merged) and [],
        lambda: rows(Thread, pk=thread.pk),
    )


# --- a /wait's read --------------------------------------------------------------------------------


@pytest.mark.parametrize("result", [None, {"messages": [{"content": "é\n\"q\""}], "n": 2**40}])
def test_a_runs_state(owner, result: Any) -> None:
    run = make_run(make_thread(owner), RunStatus.SUCCESS, result=result)
    sql = statements.run_state_sql(connection.vendor)
    (status, stored), = execute(sql, [statements.prep(Run, "run_id", run.pk)])
    if isinstance(stored, bytes):
        stored = stored.decode()
    assert (status, statements.from_db(Run, "result", stored)) == Run.objects.values_list(
        "status", "result"
    ).get(pk=run.pk)
    assert execute(sql, [statements.prep(Run, "run_id", uuid.uuid4())]) == []


# --- the claim --------------------------------------------------------------------------------------


def orm_claim(run_id: uuid.UUID, now) -> bool:
    """The claim's rule with the ORM: the run, pending and due, with no older due pending run on
    its thread."""
    older = Run.objects.filter(
        thread=OuterRef("thread"), status=RunStatus.PENDING, created_at__lte=now
    ).filter(
        Q(created_at__lt=OuterRef("created_at"))
        | Q(created_at=OuterRef("created_at"), run_id__lt=OuterRef("run_id"))
    )
    claimable = Run.objects.filter(pk=run_id, status=RunStatus.PENDING, created_at__lte=now).filter(
        ~Exists(older)
    )
    return bool(
        claimable.update(
            status=RunStatus.RUNNING, started_at=now, heartbeat_at=now, updated_at=now,
            worker="test:1", attempts=F("attempts") + 1,
        )
    )


@pytest.mark.parametrize("returning", [True, False])
def test_the_claim(owner, monkeypatch, returning: bool) -> None:
    if returning and not statements.can_return():
        pytest.skip("this database has no UPDATE ... RETURNING")
    monkeypatch.setattr(statements, "can_return", lambda: returning)
    queue = make_thread(owner)
    first = make_run(queue, age=30)
    twin = make_run(queue, created_at=first.created_at)  # the same instant: the smaller id first
    twin_first = min(first, twin, key=lambda run: run.pk)
    later = make_run(queue, age=10)
    future = make_run(make_thread(owner), age=-60)
    busy = make_thread(owner)
    make_run(busy, RunStatus.RUNNING)
    blocked = make_run(busy)  # the one-running-run index refuses it
    done = make_run(make_thread(owner), RunStatus.SUCCESS)
    now = timezone.now()

    answers = {}
    for run in (first, twin, later, future, blocked, done):
        def written(run: Run = run) -> bool:
            claimed = transitions.run_claim(run_id=run.pk, worker="test:1", now=now)
            if claimed is not None:  # what it answers is the row as stored
                stored = Run.objects.select_related("assistant").get(pk=run.pk)
                assert claimed.assistant.graph_id == stored.assistant.graph_id
                for name in statements.CLAIMED_FIELDS:
                    assert getattr(claimed, name) == getattr(stored, name), name
            return claimed is not None

        def orm(run: Run = run) -> bool:
            try:
                with transaction.atomic():
                    return orm_claim(run.pk, now)
            except IntegrityError:  # the refusal the claim turns into "not claimed"
                return False

        answers[run.pk] = same(written, orm, lambda run=run: rows(Run, pk=run.pk))
    assert [pk for pk, claimed in answers.items() if claimed] == [twin_first.pk]


# --- a run's end ----------------------------------------------------------------------------------


@pytest.mark.parametrize("others", ["none", "pending", "running"])
def test_the_threads_lock_answers_its_next_run(owner, others: str) -> None:
    thread = make_thread(owner)
    ending = make_run(thread, RunStatus.RUNNING, age=20)
    make_run(thread, RunStatus.SUCCESS, age=30)
    if others == "pending":
        make_run(thread, age=5)
        make_run(thread, age=10)
    elif others == "running":  # a run still running beside it (not possible, but asked)
        Run.objects.filter(pk=ending.pk).update(status=RunStatus.PENDING)
        make_run(thread, RunStatus.RUNNING, age=1)

    with connection.cursor() as cursor:
        found = statements.thread_lock(cursor, thread.pk, ending.pk)
    following = (
        Run.objects.filter(thread=thread, status__in=RunStatus.active()).exclude(pk=ending.pk)
        .order_by("created_at", "run_id").values_list("run_id", "created_at").first()
    )
    assert found == (True, following)
    with connection.cursor() as cursor:
        assert statements.thread_lock(cursor, uuid.uuid4(), ending.pk) == (False, None)


@pytest.mark.parametrize("returning", [True, False])
@pytest.mark.parametrize("start", [RunStatus.RUNNING, RunStatus.SUCCESS])
def test_a_runs_end(owner, monkeypatch, returning: bool, start: str) -> None:
    if returning and not statements.can_return():
        pytest.skip("this database has no UPDATE ... RETURNING")
    monkeypatch.setattr(statements, "can_return", lambda: returning)
    run = make_run(make_thread(owner), start, on_completion="delete", heartbeat_at=timezone.now())
    claim = transitions.RunClaim.of(run)
    now = timezone.now()
    result, error = {"messages": [{"content": "é" * 10}], "n": 2**40}, {"error": "E", "message": "m"}

    def written() -> tuple:
        with connection.cursor() as cursor:
            return transitions.run_end(
                cursor, claim=claim, status=RunStatus.ERROR, result=result, error=error, now=now
            )

    def orm() -> tuple:
        ended = Run.objects.filter(claim.holds(), status=RunStatus.RUNNING).update(
            status=RunStatus.ERROR, result=result, error=error, ended_at=now, updated_at=now,
            heartbeat_at=None,
        )
        return bool(ended), Run.objects.filter(pk=run.pk).values_list("on_completion", flat=True).first()

    assert same(written, orm, lambda: rows(Run, pk=run.pk)) == (start == RunStatus.RUNNING, "delete")
    Run.objects.filter(pk=run.pk).delete()
    same(written, orm, lambda: rows(Run, pk=run.pk))  # a run gone: (False, None)


@pytest.mark.parametrize(
    "busy, resting", [(True, None), (False, None), (False, ThreadStatus.INTERRUPTED), (True, ThreadStatus.ERROR)]
)
def test_a_threads_state_after_a_run(owner, busy: bool, resting: str | None) -> None:
    thread = make_thread(owner, status=ThreadStatus.BUSY, resting_status=ThreadStatus.ERROR)
    now = timezone.now()
    fields: dict[str, Any] = {
        "values": {"messages": [{"content": "x" * 100}]}, "interrupts": {}, "error": None,
        "has_run": True, "state_updated_at": now, "updated_at": now,
    }
    if resting is not None:
        fields["resting_status"] = resting

    def written() -> None:
        with connection.cursor() as cursor:
            statements.thread_update(cursor, thread.pk, dict(fields), busy=busy)

    def orm() -> None:
        status = ThreadStatus.BUSY if busy else fields.get("resting_status", F("resting_status"))
        Thread.objects.filter(pk=thread.pk).update(status=status, **fields)

    same(written, orm, lambda: rows(Thread, pk=thread.pk))


# --- events -----------------------------------------------------------------------------------------


def test_events_in_batches(owner) -> None:
    run = make_run(make_thread(owner), RunStatus.RUNNING)
    now = timezone.now()
    count = statements.EVENT_ROWS_PER_STATEMENT + 3  # two statements
    events = [(run.pk, seq, "values", f'{{"n":{seq},"t":"é"}}', seq % 7 == 0, now) for seq in range(1, count + 1)]

    def written() -> None:
        with connection.cursor() as cursor:
            statements.events_insert(cursor, events)

    def orm() -> None:
        RunEvent.objects.bulk_create(
            RunEvent(run_id=run_id, seq=seq, event=event, data=data, thread_only=thread_only, created_at=at)
            for run_id, seq, event, data, thread_only, at in events
        )

    def read() -> list[dict]:
        return [{k: v for k, v in row.items() if k != "id"} for row in rows(RunEvent, run=run)]

    same(written, orm, read)
    assert len(read()) == 0  # both undone


@pytest.mark.parametrize("claim_now", ["held", "another attempt", "ended", "gone"])
def test_fenced_events_land_only_while_the_workers_claim_holds(owner, claim_now: str) -> None:
    run = make_run(make_thread(owner), RunStatus.RUNNING, worker="host:1", attempts=1)
    claim = transitions.RunClaim.of(run)
    if claim_now == "another attempt":
        Run.objects.filter(pk=run.pk).update(worker="host:2", attempts=2)
    elif claim_now == "ended":
        Run.objects.filter(pk=run.pk).update(status=RunStatus.ERROR)
    now = timezone.now()
    count = statements.EVENT_ROWS_PER_STATEMENT + 3  # two statements
    events = [(run.pk, seq, "values", f'{{"n":{seq}}}', seq % 7 == 0, now) for seq in range(1, count + 1)]
    held = Run.objects.filter(claim.holds(), status=RunStatus.RUNNING)
    if claim_now == "gone":  # the FK would refuse the rows: a run of its own, gone, is the case
        events = [(uuid.uuid4(), *event[1:]) for event in events]
        claim = transitions.RunClaim(events[0][0], "host:1", 1)
        held = Run.objects.filter(claim.holds())

    def written() -> str:
        try:
            with connection.cursor() as cursor:
                statements.events_insert(cursor, events, fence=claim.fence())
        except FenceClosed:
            return "refused"
        return "stored"

    def orm() -> str:
        if not held.exists():
            return "refused"
        RunEvent.objects.bulk_create(
            RunEvent(run_id=run_id, seq=seq, event=event, data=data, thread_only=thread_only, created_at=at)
            for run_id, seq, event, data, thread_only, at in events
        )
        return "stored"

    def read() -> list[dict]:
        return [{k: v for k, v in row.items() if k != "id"} for row in rows(RunEvent)]

    assert same(written, orm, read) == ("stored" if claim_now == "held" else "refused")
