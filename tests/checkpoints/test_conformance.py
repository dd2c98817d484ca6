"""The official LangGraph checkpointer conformance suite, run in full against our saver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES
from langgraph.checkpoint.conformance.report import ProgressCallbacks
from langgraph.checkpoint.conformance.spec import (
    test_copy_thread,
    test_delete_for_runs,
    test_delete_thread,
    test_get_tuple,
    test_list,
    test_prune,
    test_put,
    test_put_writes,
)

from checkpoints.saver import DjangoCheckpointSaver

# Every check the installed suite defines; if the suite grows, the expected count grows with it.
EXPECTED_CHECKS = sum(
    len(tests)
    for tests in (
        test_put.ALL_PUT_TESTS,
        test_put_writes.ALL_PUT_WRITES_TESTS,
        test_get_tuple.ALL_GET_TUPLE_TESTS,
        test_list.ALL_LIST_TESTS,
        test_delete_thread.ALL_DELETE_THREAD_TESTS,
        test_delete_for_runs.ALL_DELETE_FOR_RUNS_TESTS,
        test_copy_thread.ALL_COPY_THREAD_TESTS,
        test_prune.ALL_PRUNE_TESTS,
    )
)


@checkpointer_test(name="DjangoCheckpointSaver")
async def django_checkpoint_saver() -> AsyncIterator[DjangoCheckpointSaver]:
    yield DjangoCheckpointSaver()


def test_conformance_suite_passes_every_check_of_every_capability(saver, connection_vendor):
    outcomes: list[tuple[str, str, bool, str | None]] = []

    def record(capability: str, test: str, passed: bool, error: str | None) -> None:
        outcomes.append((capability, test, passed, error))

    # asyncio.run, like a worker running a graph: the saver must never touch the ORM from
    # the event loop's thread.
    report = asyncio.run(
        validate(django_checkpoint_saver, progress=ProgressCallbacks(on_test_result=record))
    )
    report.print_report()
    passed = sum(1 for *_, ok, _ in outcomes if ok)
    print(f"conformance on {connection_vendor}: {passed}/{len(outcomes)} checks passed")

    failures = [f"{cap}.{test}\n{error}" for cap, test, ok, error in outcomes if not ok]
    assert not failures, "\n".join(failures)
    assert {name for name, r in report.results.items() if r.detected} == {
        c.value for c in ALL_CAPABILITIES
    }, "every capability, base and extended, must be detected and run"
    assert report.conformance_level() == "FULL"
    assert passed == len(outcomes) == EXPECTED_CHECKS
