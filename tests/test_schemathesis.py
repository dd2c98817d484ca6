"""schemathesis against our own OpenAPI schema (``/api/schema/``), on a real server and workers.

Every operation of the schema is fuzzed with positive and negative cases, as each of two users
(one with ``x-api-key``, one with ``Authorization: Bearer``) and now and then with no key. A share
of the generated path ids are replaced by real objects of the acting user or of the other user, so
cases reach real threads, runs, assistants, executions and schedules. Each response must:

- not be a 5xx, have a documented status, content type and headers, and match its schema;
- never be a success when the path names the other user's object (a join may answer 200 with
  the real server's "run not found" body, exactly as for a run that does not exist);
- never contain the other user's secret marker, which is written into all of their objects.

Long waits are bounded rather than skipped: runs time out after ``RUNS_TIMEOUT`` seconds on the
test server, generated ``after_seconds`` are capped at half a second, and event streams are read
for at most ``STREAM_READ_SECONDS`` (the thread stream never ends on its own).
"""

from __future__ import annotations

import math
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from django.db import connection
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts.models import api_key_create
from tests.conftest import Cluster, figure
from tests.runs.conftest import Server

FAST_CASES = 250
SLOW_CASES = 5000
# Also the wait for the response headers, so not too short on a busy machine.
STREAM_READ_SECONDS = 2.0
REQUEST_TIMEOUT_SECONDS = 30.0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Reported, not failed on: the runs API parses some query values leniently, as the views choose.
ADVISORY_CHECKS = [negative_data_rejection]
# Path parameters that name an object, and the key of that object in a user's seed.
ID_PARAMETERS = {
    "thread_id": "thread_id",
    "run_id": "run_id",
    "assistant_id": "assistant_id",
    "checkpoint_id": "checkpoint_id",
    "id": "execution_id",
    "cron_id": "cron_id",
    "schedule_id": "schedule_id",
}


@dataclass
class Identity:
    name: str
    headers: dict[str, str]
    seed: dict[str, str] = field(default_factory=dict)
    marker: str = ""


@dataclass
class Failure:
    operation: str
    identity: str
    titles: tuple[str, ...]
    status: int | None
    request: str
    response: str


@dataclass
class Tally:
    cases: int = 0
    by_operation: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    failures: dict[tuple, Failure] = field(default_factory=dict)
    advisories: dict[tuple, Failure] = field(default_factory=dict)
    seconds: Counter = field(default_factory=Counter)


@pytest.fixture(scope="module")
def stack(django_db_setup) -> Iterator[tuple[Server, Cluster]]:
    env = {"RUNS_TIMEOUT": "3"}
    server = Server(**env)
    cluster = Cluster(workers=2, **env)
    try:
        yield server, cluster
    finally:
        cluster.stop()
        server.stop()


def _seed(base_url: str, identity: Identity) -> None:
    """Objects of ``identity`` for generated cases to hit, each carrying its secret marker."""
    session = requests.Session()
    session.headers.update(identity.headers)
    meta = {"marker": identity.marker}

    def call(method: str, path: str, **kwargs: Any) -> Any:
        response = session.request(method, base_url + path, timeout=30, **kwargs)
        assert response.status_code < 300, (method, path, response.status_code, response.text)
        return response.json() if response.content.strip() else None

    assistant = call("POST", "/assistants", json={"graph_id": "echo", "metadata": meta, "name": identity.marker})
    thread = call("POST", "/threads", json={"metadata": meta})
    thread_id = thread["thread_id"]
    call(
        "POST", f"/threads/{thread_id}/runs/wait",
        json={
            "assistant_id": assistant["assistant_id"],
            "input": {"messages": [{"role": "user", "content": identity.marker}]},
            "metadata": meta,
        },
    )
    run = call("GET", f"/threads/{thread_id}/runs")[0]
    state = call("GET", f"/threads/{thread_id}/state")
    execution = call(
        "POST", "/api/v1/executions", json={"type": "agent", "target_id": "echo", "inputs": meta}
    )
    cron = call(
        "POST", f"/threads/{thread_id}/runs/crons",
        json={"assistant_id": assistant["assistant_id"], "schedule": "0 0 1 1 *", "metadata": meta},
    )
    schedule = call(
        "POST", "/api/v1/schedules",
        json={"type": "agent", "target_id": "echo", "inputs": meta, "cron": "0 0 1 1 *"},
    )
    identity.seed = {
        "assistant_id": assistant["assistant_id"],
        "thread_id": thread_id,
        "run_id": run["run_id"],
        "checkpoint_id": state["checkpoint"]["checkpoint_id"],
        "execution_id": execution["execution_id"],
        "cron_id": cron["cron_id"],
        "schedule_id": schedule["schedule_id"],
    }


def _bounded_body(body: Any) -> Any:
    """Generated run bodies with their waits capped (a delayed run is a legitimate long wait)."""
    if isinstance(body, list):
        return [_bounded_body(item) for item in body]
    if isinstance(body, dict):
        body = dict(body)
        if isinstance(body.get("after_seconds"), (int, float)) and not isinstance(body["after_seconds"], bool):
            body["after_seconds"] = min(max(body["after_seconds"], 0), 0.5)
        if isinstance(body.get("input"), dict) and "sleep" in body["input"]:
            body["input"] = {k: v for k, v in body["input"].items() if k != "sleep"}
    return body


def _use_known_names(body: dict[str, Any], actor: Identity, data: Any) -> bool:
    known = {
        "assistant_id": ["echo", "hitl", "steps", actor.seed["assistant_id"]],
        "graph_id": ["echo", "hitl", "steps"],
        "target_id": ["echo", "fail", "summarize"],
    }
    changed = False
    for name, values in known.items():
        if isinstance(body.get(name), str):
            body[name] = data.draw(st.sampled_from(values), label=name)
            changed = True
    if changed and "target_id" in body:
        body["type"] = "agent"
    return changed


def _is_stream(operation: Any) -> bool:
    for response in operation.definition.raw.get("responses", {}).values():
        if "text/event-stream" in (response.get("content") or {}):
            return True
    return False


def _contains(payload: str, value: str) -> bool:
    return bool(value) and value in payload


def _excerpt(response: Any) -> str:
    if response is None:
        return "(no response)"
    text = response.text if hasattr(response, "text") else ""
    return f"{response.status_code} {response.headers.get('content-type', '')}\n{text[:800]}"


def _fuzz_operation(
    *, operation: Any, server: Server, actor: Identity, other: Identity, anonymous: Identity,
    examples: int, tally: Tally, derandomize: bool,
) -> None:
    # An operation with nothing to make invalid (GET /ok) gets its cases from the positive side.
    strategies = [operation.as_strategy(generation_mode=mode) for mode in GenerationMode]
    stream = _is_stream(operation)
    session = requests.Session()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies), data=st.data())
    def fuzz(case: Any, data: Any) -> None:
        who = data.draw(st.sampled_from(["actor"] * 8 + ["other-owned"] * 3 + ["anonymous"]), label="who")
        identity = anonymous if who == "anonymous" else actor
        owner = other if who == "other-owned" else actor
        targets_other = substituted = False
        if case.path_parameters and data.draw(st.sampled_from(["seed", "seed", "generated"])) == "seed":
            for name in case.path_parameters:
                key = ID_PARAMETERS.get(name)
                if key and key in owner.seed:
                    case.path_parameters[name] = owner.seed[key]
                    substituted = True
                    targets_other = targets_other or owner is other
        if case.body is not None and not isinstance(case.body, (str, bytes)):
            bounded = _bounded_body(case.body)
            substituted = substituted or bounded != case.body
            case.body = bounded
            if data.draw(st.booleans(), label="known names"):
                # Random graph, agent and assistant names only ever reach the 404/400 paths.
                items = case.body if isinstance(case.body, list) else [case.body]
                for item in items:
                    if isinstance(item, dict):
                        substituted = _use_known_names(item, actor, data) or substituted
        timeout = STREAM_READ_SECONDS if stream else REQUEST_TIMEOUT_SECONDS
        log_offset = len(server.log())
        response = None
        titles: tuple[str, ...] = ()
        advisories: tuple[str, ...] = ()
        try:
            response = case.call(base_url=server.url, session=session, headers=identity.headers, timeout=timeout)
            case.validate_response(response, checks=CHECKS, headers=identity.headers)
        except schemathesis.errors.FailureGroup as group:
            titles = _titles(group)
        except requests.RequestException as exc:
            titles = (f"no response within {timeout}s: {type(exc).__name__}",)
        if response is not None and not substituted:
            # Edited cases are not what schemathesis generated: its negative-case bookkeeping is off.
            try:
                case.validate_response(response, checks=ADVISORY_CHECKS, headers=identity.headers)
            except schemathesis.errors.FailureGroup as group:
                advisories = _titles(group)
        tally.cases += 1
        tally.by_operation[operation.label] += 1
        if response is not None:
            tally.statuses[(operation.label, response.status_code)] += 1
            text = response.text
            request_text = str(case.path_parameters) + str(case.query) + str(case.body)
            leaked = [
                value for value in [other.marker, *other.seed.values()]
                if _contains(text, value) and not _contains(request_text, value)
            ]
            if leaked:
                titles += (f"another user's data in the response: {leaked}",)
            if targets_other and identity is actor and 200 <= response.status_code < 300 and not _not_found_body(text):
                titles += ("another user's object answered with a success",)
        for found, into in ((titles, tally.failures), (advisories, tally.advisories)):
            key = (operation.label, found, response.status_code if response is not None else None)
            if found and key not in into:
                server_log = server.log()[log_offset:] if response is None or response.status_code >= 500 else ""
                into[key] = Failure(
                    operation=operation.label, identity=f"{who} as {identity.name}", titles=found,
                    status=response.status_code if response is not None else None,
                    request=case.as_curl_command(headers=identity.headers),
                    response=_excerpt(response) + ("\nserver log:\n" + server_log[-4000:] if server_log else ""),
                )

    fuzz()


def _titles(group: Any) -> tuple[str, ...]:
    return tuple(sorted({f"{failure.title}: {failure.message[:600]}" for failure in group.exceptions}))


def _not_found_body(text: str) -> bool:
    # /join answers a missing run (or another user's) with a 200 reporting it, like the real server.
    return "404: Run not found" in text


def fuzz_all(*, stack: tuple[Server, Cluster], make_user: Any, total_cases: int, derandomize: bool) -> Tally:
    server, _ = stack
    alice, bob = make_user("fuzz-alice"), make_user("fuzz-bob")
    identities = []
    for user, scheme in ((alice, "x-api-key"), (bob, "bearer")):
        raw_key = api_key_create(user=user)[1]
        headers = {"x-api-key": raw_key} if scheme == "x-api-key" else {"Authorization": f"Bearer {raw_key}"}
        identities.append(Identity(user.username, headers, marker=f"secret-{user.username}-{uuid.uuid4().hex}"))
    anonymous = Identity("anonymous", {})
    for identity in identities:
        _seed(server.url, identity)

    config = schemathesis.Config()
    # We authenticate each case ourselves; unknown query parameters are ignored by design.
    config.projects.default.generation.update(with_security_parameters=False, allow_extra_parameters=False)
    schema = schemathesis.openapi.from_url(f"{server.url}/api/schema/", config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    # To chase one failure: SCHEMATHESIS_OPERATIONS="POST /assistants/search" (a regex).
    only = os.environ.get("SCHEMATHESIS_OPERATIONS")
    if only:
        operations = [op for op in operations if re.search(only, op.label)]
    per_run = math.ceil(total_cases * 1.1 / (len(operations) * len(identities)))
    tally = Tally()
    for operation in operations:
        for actor, other in ((identities[0], identities[1]), (identities[1], identities[0])):
            started = time.monotonic()
            _fuzz_operation(
                operation=operation, server=server, actor=actor, other=other, anonymous=anonymous,
                examples=per_run, tally=tally, derandomize=derandomize,
            )
            tally.seconds[operation.label] += time.monotonic() - started
            # Seen live with -s: which operation a slow or stuck fuzz is spending its time on.
            print(f"fuzzed {operation.label} as {actor.name}: {time.monotonic() - started:.1f}s", flush=True)
            if operation.method.upper() == "DELETE" or operation.path.endswith("/prune"):
                for identity in identities:  # deleted seeds would turn later cases into plain 404s
                    _seed(server.url, identity)
    tally.operations = [op.label for op in operations]  # type: ignore[attr-defined]
    return tally


def _report(tally: Tally) -> str:
    succeeded = {label for (label, status) in tally.statuses if 200 <= status < 300}
    summary = (
        f"{tally.cases} cases over {len(tally.by_operation)} operations "
        f"({len(succeeded)} of them answered a 2xx at least once), {len(tally.failures)} distinct failures"
    )
    slowest = ", ".join(f"{label} {seconds:.0f}s" for label, seconds in tally.seconds.most_common(5))
    lines = [summary, f"never a 2xx: {sorted(set(tally.by_operation) - succeeded)}", f"slowest: {slowest}"]
    for failure in tally.failures.values():
        lines += [
            "", f"== {failure.operation} ({failure.identity}): {'; '.join(failure.titles)}",
            failure.request, "-> " + failure.response,
        ]
    lines += ["", f"advisory (negative data accepted): {len(tally.advisories)} distinct"]
    for failure in tally.advisories.values():
        lines += [f"-- {failure.operation}: {'; '.join(failure.titles)[:300]}", "   " + failure.request[:300]]
    return "\n".join(lines)


def _check(tally: Tally, server: Server, minimum: int) -> None:
    report = _report(tally)
    print(report)
    missing = [label for label in tally.operations if not tally.by_operation[label]]  # type: ignore[attr-defined]
    assert not missing, f"operations never exercised: {missing}"
    assert tally.cases >= minimum, report
    assert not tally.failures, report


# The quick form, for a change to the API: `pytest tests/test_schemathesis.py -m slow -k "not 5000"`.
# In the slow suite beside the long one: ~20 s of fuzz the default suite should not wait for.
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_every_operation_as_two_users(stack, make_user) -> None:
    tally = fuzz_all(stack=stack, make_user=make_user, total_cases=FAST_CASES, derandomize=True)
    _check(tally, stack[0], FAST_CASES)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_every_operation_as_two_users_5000_cases(stack, make_user) -> None:
    total = int(os.environ.get("SCHEMATHESIS_CASES", SLOW_CASES))
    # Fixed cases by default, so CI's verdict is about the change and not the draw; set
    # SCHEMATHESIS_RANDOM=1 to explore new ones (how the findings so far were made).
    explore = os.environ.get("SCHEMATHESIS_RANDOM") == "1"
    tally = fuzz_all(stack=stack, make_user=make_user, total_cases=total, derandomize=not explore)
    figure(f"schemathesis as two users on {connection.vendor}: " + _report(tally).splitlines()[0])
    _check(tally, stack[0], total)
