"""Operate on LangGraph runs from the terminal: list and cancel."""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from project.command_arguments import positive_int
from project.durations import format_duration
from runs.models import CancelAction, Run, RunStatus
from runs.services import runs_cancel


def run_uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a run or thread id (expected a UUID)") from None


class Command(BaseCommand):
    help = "List and cancel LangGraph runs. `runs SUBCOMMAND --help` describes each subcommand."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True)
        cancel = sub.add_parser("cancel", help="cancel pending or running runs")
        cancel.add_argument("run_ids", nargs="+", type=run_uuid, metavar="RUN_ID")
        cancel.add_argument(
            "--action", choices=CancelAction.values, default=CancelAction.INTERRUPT,
            help="interrupt (default: keep the checkpoints) or rollback (delete run and checkpoints)",
        )
        listing = sub.add_parser("list", help="list runs, newest first")
        listing.add_argument("--thread", type=run_uuid, metavar="ID", help="only this thread's runs")
        listing.add_argument(
            "--status", choices=RunStatus.values, action="append",
            help="only runs in this status (repeatable)",
        )
        listing.add_argument("--limit", type=positive_int, default=50)

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        if subcommand == "cancel":
            self._cancel(options["run_ids"], options["action"])
        else:
            self._list(options["thread"], options["status"], options["limit"])

    def _cancel(self, run_ids: list[uuid.UUID], action: str) -> None:
        runs = {run.pk: run for run in Run.objects.filter(pk__in=run_ids)}
        missing = [str(run_id) for run_id in run_ids if run_id not in runs]
        cancelled = {run.pk for run in runs_cancel(runs=list(runs.values()), action=action)}
        for run_id in run_ids:
            if run_id in cancelled:
                self.stdout.write(f"{run_id} cancelled ({action})")
            elif run_id in runs:
                self.stderr.write(f"{run_id} is {runs[run_id].status}; only pending or running runs can be cancelled")
        for missing_id in missing:
            self.stderr.write(f"{missing_id} not found")
        if len(cancelled) != len(run_ids):
            raise CommandError(f"{len(run_ids) - len(cancelled)} of {len(run_ids)} run(s) not cancelled")

    def _list(self, thread: uuid.UUID | None, statuses: list[str] | None, limit: int) -> None:
        queryset = Run.objects.select_related("assistant").order_by("-created_at")
        if thread:
            queryset = queryset.filter(thread_id=thread)
        if statuses:
            queryset = queryset.filter(status__in=statuses)
        rows = list(queryset[:limit])
        self.stdout.write(f"{'RUN':36}  {'STATUS':11}  {'THREAD':36}  {'GRAPH':12}  {'DURATION':>8}  CREATED")
        for run in rows:
            created = timezone.localtime(run.created_at).strftime("%Y-%m-%d %H:%M:%S")
            duration = format_duration(run.duration_seconds, separator="")
            self.stdout.write(
                f"{run.run_id!s:36}  {run.status:11}  {run.thread_id!s:36}  "
                f"{run.assistant.graph_id[:12]:12}  {duration:>8}  {created}"
            )
        if not rows:
            self.stdout.write("(no runs)")
