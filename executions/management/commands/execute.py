"""Start an execution from the terminal and, with --wait, follow it to the end."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from executions.models import Execution, ExecutionStatus, ExecutionType
from executions.registry import registry
from executions.services import execution_cancel, execution_create
from executions.terminal import ProgressBar, ProgressSnapshot, validation_messages
from project.api.errors import Conflict, InvalidInput
from project.api.json_input import value_problem

POLL_INTERVAL = 0.2
# After this long still pending, the likely cause is that no worker runs: say so once.
PENDING_HINT_AFTER = 10.0
EXIT_INTERRUPTED = 130  # the shell convention for "ended by SIGINT"

_PROGRESS_FIELDS = ("status", "percentage", "current_step", "total_steps", "step_name")


def input_pair(text: str) -> tuple[str, Any]:
    """``key=value``; the value is JSON when it parses (``2``, ``true``, ``{"a": 1}``), else text."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        # NaN and Infinity are not JSON a database or an API client can take back: keep them text.
        value = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        value = raw
    return key, value


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    except RecursionError:
        raise argparse.ArgumentTypeError("nested too deeply") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object, got {type(value).__name__}: {text!r}"
        )
    return value


class Command(BaseCommand):
    help = (
        "Start an execution of a registered agent or pipeline and print its id. With --wait, "
        "show its progress on stderr until it ends, then print the outputs as JSON on stdout "
        "(exit status 0), or the error on stderr (exit status 1 if it failed or was cancelled). "
        "Ctrl-C during --wait cancels the execution and exits with status 130. Executions are "
        "run by the workers (`manage.py qcluster`), which must be running."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("target", metavar="TARGET", help="id of a registered agent or pipeline")
        parser.add_argument(
            "--type",
            dest="execution_type",
            choices=ExecutionType.values,
            help="agent or pipeline; needed only when both kinds have a target with this id",
        )
        parser.add_argument(
            "--input",
            dest="input_pairs",
            metavar="KEY=VALUE",
            type=input_pair,
            action="append",
            default=[],
            help="one input, repeatable; VALUE is parsed as JSON when it parses "
            "(--input seconds=2 gives a number), otherwise taken as text",
        )
        parser.add_argument(
            "--inputs-json",
            metavar="JSON",
            type=json_object,
            default={},
            help="all inputs as a JSON object; --input values override its keys",
        )
        parser.add_argument("--user", metavar="USERNAME", help="owner of the execution (default: none)")
        parser.add_argument(
            "--wait",
            action="store_true",
            help="follow the execution to its end; Ctrl-C cancels it and exits with status 130",
        )

    def handle(
        self,
        *args: Any,
        target: str,
        execution_type: str | None,
        input_pairs: list[tuple[str, Any]],
        inputs_json: dict,
        user: str | None,
        wait: bool,
        **options: Any,
    ) -> None:
        inputs = {**inputs_json, **dict(input_pairs)}
        # What the API refuses at its door (project.api.json_input); a terminal's bytes that are not
        # UTF-8 arrive here as lone surrogates.
        problem = value_problem(inputs, "inputs")
        if problem is not None:
            raise CommandError(problem.message)
        execution_type = execution_type or self._infer_type(target)
        owner = self._owner(user) if user else None
        try:
            execution = execution_create(
                owner=owner, type=execution_type, target_id=target, inputs=inputs
            )
        except InvalidInput as exc:
            problems = "; ".join(validation_messages(exc.detail))
            raise CommandError(f"Invalid request for {execution_type} '{target}': {problems}") from None
        if not wait:
            self.stdout.write(str(execution.pk))
            return
        self._follow(execution)

    def _infer_type(self, target: str) -> str:
        found = registry.find(target)
        if not found:
            known = ", ".join(registry.target_ids()) or "none"
            raise CommandError(
                f"No agent or pipeline named '{target}' is registered. Known targets: {known}."
            )
        if len(found) > 1:
            raise CommandError(
                f"'{target}' is registered both as an agent and as a pipeline; "
                "pass --type agent or --type pipeline."
            )
        return found[0].type

    def _owner(self, username: str):
        user_model = get_user_model()
        try:
            return user_model._default_manager.get_by_natural_key(username)
        except user_model.DoesNotExist:
            raise CommandError(f"No user named '{username}'.") from None

    def _follow(self, execution: Execution) -> None:
        bar = ProgressBar(self.stderr)
        try:
            with self._interrupt_between_polls():
                self.stderr.write(
                    f"Execution {execution.pk} ({execution.type} '{execution.target_id}') queued; "
                    "Ctrl-C cancels it.",
                    style_func=lambda text: text,
                )
                row = self._poll_until_finished(execution, bar)
        except KeyboardInterrupt:
            bar.close()
            self._cancel_on_interrupt(execution)
            raise SystemExit(EXIT_INTERRUPTED) from None
        bar.close()
        if row.status == ExecutionStatus.COMPLETED:
            self.stdout.write(json.dumps(row.outputs, indent=2, ensure_ascii=False))
            return
        if row.status == ExecutionStatus.FAILED:
            error = row.error or {}
            self.stderr.write(
                f"Execution {row.pk} failed: {error.get('type', 'error')}: {error.get('message', '')}"
            )
        else:
            self.stderr.write(f"Execution {row.pk} was cancelled.")
        raise SystemExit(1)

    def _poll_until_finished(self, execution: Execution, bar: ProgressBar) -> Execution:
        started = time.monotonic()
        hinted = False
        while True:
            row = Execution.objects.only(*_PROGRESS_FIELDS, "outputs", "error").get(pk=execution.pk)
            bar.update(
                ProgressSnapshot(
                    status=row.status,
                    percentage=row.percentage,
                    current_step=row.current_step,
                    total_steps=row.total_steps,
                    step_name=row.step_name,
                )
            )
            if row.status in ExecutionStatus.terminal():
                return row
            if (
                not hinted
                and row.status == ExecutionStatus.PENDING
                and time.monotonic() - started > PENDING_HINT_AFTER
            ):
                hinted = True
                bar.close()
                self.stderr.write(
                    f"Still pending after {PENDING_HINT_AFTER:.0f}s: is a worker "
                    "(`manage.py qcluster`) running?",
                    style_func=lambda text: text,
                )
            if self._interrupted.wait(POLL_INTERVAL):
                raise KeyboardInterrupt

    _interrupted = threading.Event()  # never set unless _interrupt_between_polls is active

    @contextmanager
    def _interrupt_between_polls(self):
        """Ctrl-C only between two polls: a KeyboardInterrupt raised inside a database call could
        leave the connection (or SQLite's process-wide write queue) half-used, and the cancel that
        follows would then wait on it."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers live in the main thread; call_command from a thread keeps the default
            return
        self._interrupted = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda signum, frame: self._interrupted.set())
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _cancel_on_interrupt(self, execution: Execution) -> None:
        try:
            cancelled = execution_cancel(execution=execution)
        except Conflict:
            execution.refresh_from_db(fields=["status"])
            self.stderr.write(
                f"Interrupted; execution {execution.pk} had already {execution.status}, "
                "nothing to cancel."
            )
            return
        self.stderr.write(f"Interrupted: execution {cancelled.pk} cancelled.")
