"""Operate on executions from the terminal: list, cancel, retry, prune."""

from __future__ import annotations

import argparse
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from executions.models import Execution, ExecutionStatus, ExecutionType
from executions.recovery import executions_reap_stale, executions_requeue_stranded
from executions.services import (
    PRUNE_BATCH_SIZE,
    execution_cancel,
    execution_retry,
    executions_prune,
)
from executions.terminal import validation_messages
from project.api.errors import Conflict, InvalidInput
from project.command_arguments import positive_days, positive_int
from project.durations import format_duration

_LIST_FIELDS = (
    "id", "status", "type", "target_id", "percentage", "created_at", "started_at",
    "completed_at", "cancelled_at",
)


def execution_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an execution id (expected a UUID such as "
            "3f2b8c1e-0d4a-4c4e-9a57-1b2c3d4e5f60)"
        ) from None


def format_created(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S")


class Command(BaseCommand):
    help = (
        "List, cancel, retry and prune executions. "
        "`executions SUBCOMMAND --help` describes each subcommand."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        # Django's CommandParser.add_subparsers hands `called_from_command_line` on to each
        # subparser, so argument errors raise CommandError under call_command instead of exiting.
        subcommands = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

        list_parser = subcommands.add_parser(
            "list", help="table of executions, newest first", description="Executions, newest first."
        )
        list_parser.add_argument(
            "--status", choices=ExecutionStatus.values, nargs="+", action="extend", default=[],
            help="only these statuses (repeatable)",
        )
        list_parser.add_argument(
            "--target", metavar="TARGET", nargs="+", action="extend", default=[],
            help="only these target ids (repeatable)",
        )
        list_parser.add_argument(
            "--type", dest="types", choices=ExecutionType.values, nargs="+", action="extend",
            default=[], help="only agents or only pipelines",
        )
        list_parser.add_argument(
            "--limit", type=positive_int, default=20, help="at most this many rows (default 20)"
        )

        cancel_parser = subcommands.add_parser(
            "cancel",
            help="cancel pending or running executions",
            description="Cancel each execution: a pending one at once, a running one at its next "
            "progress point. Exit status 1 if any could not be cancelled.",
        )
        cancel_parser.add_argument("ids", metavar="ID", type=execution_id, nargs="+")

        retry_parser = subcommands.add_parser(
            "retry",
            help="start finished executions again with the same inputs",
            description="Start a new execution with the same target, inputs and config as each "
            "finished one, printing the new ids. Exit status 1 if any could not be retried.",
        )
        retry_parser.add_argument("ids", metavar="ID", type=execution_id, nargs="+")

        prune_parser = subcommands.add_parser(
            "prune",
            help="delete finished executions older than some days",
            description="Delete finished executions (with their events) that ended more than "
            "DAYS days ago. Pending and running executions are never deleted.",
        )
        prune_parser.add_argument(
            "--older-than", metavar="DAYS", type=positive_days, required=True,
            help="age in days, fractions allowed (0.5 = 12 hours)",
        )
        prune_parser.add_argument(
            "--dry-run", action="store_true", help="count what would be deleted, delete nothing"
        )
        prune_parser.add_argument(
            "--batch-size", type=positive_int, default=PRUNE_BATCH_SIZE,
            help=f"executions deleted per transaction (default {PRUNE_BATCH_SIZE})",
        )

        recover_parser = subcommands.add_parser(
            "recover",
            help="finish or requeue jobs whose worker died; re-enqueue lost queue messages",
            description="Run the recovery sweep that every worker runs on its own every "
            "EXECUTIONS_SWEEP_INTERVAL seconds: running executions whose heartbeat is older than "
            "--heartbeat-timeout go back to the queue (attempts left) or fail with worker_lost; "
            "pending ones older than --pending-after while the broker queue is empty are enqueued "
            "again.",
        )
        recover_parser.add_argument(
            "--heartbeat-timeout", metavar="SECONDS", type=float, default=None,
            help="default: EXECUTIONS_HEARTBEAT_TIMEOUT",
        )
        recover_parser.add_argument(
            "--pending-after", metavar="SECONDS", type=float, default=None,
            help="default: EXECUTIONS_REQUEUE_AFTER",
        )

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        getattr(self, f"_{subcommand}")(**options)

    def _list(
        self, *, status: list[str], target: list[str], types: list[str], limit: int, **options: Any
    ) -> None:
        queryset = Execution.objects.only(*_LIST_FIELDS)
        if status:
            queryset = queryset.filter(status__in=status)
        if target:
            queryset = queryset.filter(target_id__in=target)
        if types:
            queryset = queryset.filter(type__in=types)
        rows = list(queryset.order_by("-created_at")[:limit])
        if not rows:
            self.stdout.write("No executions.")
            return
        header = ("ID", "STATUS", "TYPE", "TARGET", "PROGRESS", "CREATED", "DURATION")
        table = [header] + [
            (
                str(row.pk),
                row.status,
                row.type,
                row.target_id,
                f"{row.percentage:.0f}%",
                format_created(row.created_at),
                format_duration(row.duration_seconds, separator=""),
            )
            for row in rows
        ]
        widths = [max(len(line[column]) for line in table) for column in range(len(header))]
        for line in table:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if len(rows) == limit:
            total = queryset.count()
            if total > limit:
                # On stderr, so that stdout stays the table for `| cut`, `| grep` and friends.
                self.stderr.write(
                    f"({limit} of {total} shown; --limit shows more)", style_func=lambda text: text
                )

    def _cancel(self, *, ids: list[uuid.UUID], **options: Any) -> None:
        failures = 0
        for pk in ids:
            execution = Execution.objects.filter(pk=pk).first()
            if execution is None:
                self.stderr.write(f"{pk}: error: no such execution")
                failures += 1
                continue
            if execution.status == ExecutionStatus.CANCELLED:
                self.stdout.write(f"{pk}: already cancelled")
                continue
            try:
                execution_cancel(execution=execution)
            except Conflict:
                self.stderr.write(f"{pk}: error: already {execution.status}, cannot cancel")
                failures += 1
            else:
                self.stdout.write(f"{pk}: cancelled")
        if failures:
            raise CommandError(f"{failures} of {len(ids)} could not be cancelled.")

    def _retry(self, *, ids: list[uuid.UUID], **options: Any) -> None:
        failures = 0
        for pk in ids:
            execution = Execution.objects.filter(pk=pk).first()
            if execution is None:
                self.stderr.write(f"{pk}: error: no such execution")
                failures += 1
                continue
            try:
                new = execution_retry(execution=execution)
            except Conflict:
                self.stderr.write(f"{pk}: error: still {execution.status}, cannot retry")
                failures += 1
            except InvalidInput as exc:
                # The target was unregistered, or its inputs changed since the first run.
                problems = "; ".join(validation_messages(exc.detail))
                self.stderr.write(f"{pk}: error: cannot retry: {problems}")
                failures += 1
            else:
                self.stdout.write(str(new.pk))
        if failures:
            raise CommandError(f"{failures} of {len(ids)} could not be retried.")

    def _prune(self, *, older_than: float, dry_run: bool, batch_size: int, **options: Any) -> None:
        reported = [0]

        def progress(deleted: int) -> None:
            # A line per 50,000 rows: a prune of millions shows it is moving.
            if deleted - reported[0] >= 50_000:
                reported[0] = deleted
                self.stderr.write(f"… {deleted} deleted so far")

        count = executions_prune(
            older_than=timezone.now() - timedelta(days=older_than), dry_run=dry_run,
            batch_size=batch_size, progress=progress,
        )
        noun = "execution" if count == 1 else "executions"
        age = f"finished more than {older_than:g} days ago"
        if dry_run:
            self.stdout.write(f"Would delete {count} {noun} {age} (dry run, nothing deleted).")
        else:
            self.stdout.write(f"Deleted {count} {noun} {age}.")


    def _recover(self, *, heartbeat_timeout: float | None, pending_after: float | None, **options: Any) -> None:
        reaped = executions_reap_stale(heartbeat_timeout=heartbeat_timeout)
        requeued = executions_requeue_stranded(older_than=pending_after)
        self.stdout.write(
            f"Lost workers: {reaped['requeued']} requeued, {reaped['failed']} failed. "
            f"Lost queue messages: {requeued} enqueued again."
        )
