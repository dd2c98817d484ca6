"""Operate on execution schedules from the terminal: list, pause, resume, trigger."""

from __future__ import annotations

import argparse
import uuid
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from rest_framework.exceptions import APIException, ValidationError

from executions.terminal import validation_messages
from project.command_arguments import positive_int
from schedules.models import Schedule
from schedules.services import schedule_set_enabled, schedule_trigger


def schedule_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a schedule id (expected a UUID such as "
            "3f2b8c1e-0d4a-4c4e-9a57-1b2c3d4e5f60)"
        ) from None


def _when(moment: datetime | None) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


class Command(BaseCommand):
    help = (
        "List, pause, resume and trigger execution schedules. "
        "`schedules SUBCOMMAND --help` describes each subcommand."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

        list_parser = subcommands.add_parser(
            "list", help="table of schedules, next to fire first",
            description="Schedules, the next to fire first (paused ones last).",
        )
        state = list_parser.add_mutually_exclusive_group()
        state.add_argument("--enabled", action="store_true", help="only enabled schedules")
        state.add_argument("--paused", action="store_true", help="only paused schedules")
        list_parser.add_argument(
            "--target", metavar="TARGET", nargs="+", action="extend", default=[],
            help="only these target ids (repeatable)",
        )
        list_parser.add_argument(
            "--limit", type=positive_int, default=50, help="at most this many rows (default 50)"
        )

        for name, help_text in (
            ("pause", "stop schedules from firing (their executions are left alone)"),
            ("resume", "let paused schedules fire again, from their next fire time after now"),
            ("trigger", "start one execution of each schedule now, printing its id"),
        ):
            sub = subcommands.add_parser(
                name, help=help_text,
                description=f"{help_text[0].upper()}{help_text[1:]}. "
                "Exit status 1 if any schedule could not be handled.",
            )
            sub.add_argument("ids", metavar="ID", type=schedule_id, nargs="+")

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        getattr(self, f"_{subcommand}")(**options)

    def _list(self, *, enabled: bool, paused: bool, target: list[str], limit: int, **options: Any) -> None:
        queryset = Schedule.objects.select_related("owner")
        if enabled or paused:
            queryset = queryset.filter(enabled=enabled)
        if target:
            queryset = queryset.filter(target_id__in=target)
        rows = list(queryset.order_by("-enabled", "next_run_at", "-created_at")[:limit])
        if not rows:
            self.stdout.write("No schedules.")
            return
        header = ("ID", "TARGET", "CRON", "TIMEZONE", "STATE", "OVERLAP", "NEXT RUN", "LAST RUN", "OWNER")
        table = [header] + [
            (
                str(row.pk), f"{row.type}:{row.target_id}", row.cron, row.timezone,
                "enabled" if row.enabled else "paused", row.overlap, _when(row.next_run_at),
                _when(row.last_run_at), row.owner.get_username(),
            )
            for row in rows
        ]
        widths = [max(len(line[column]) for line in table) for column in range(len(header))]
        for line in table:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if len(rows) == limit and queryset.count() > limit:
            # On stderr, so that stdout stays the table for `| cut`, `| grep` and friends.
            self.stderr.write(f"({limit} shown; --limit shows more)", style_func=lambda text: text)

    def _each(self, ids: list[uuid.UUID], act) -> None:
        failures = 0
        for pk in ids:
            schedule = Schedule.objects.select_related("owner").filter(pk=pk).first()
            if schedule is None:
                self.stderr.write(f"{pk}: error: no such schedule")
                failures += 1
                continue
            try:
                self.stdout.write(f"{pk}: {act(schedule)}")
            except ValidationError as exc:  # the target or its inputs changed since it was saved
                self.stderr.write(f"{pk}: error: {'; '.join(validation_messages(exc.detail))}")
                failures += 1
            except APIException as exc:  # the owner's active cap
                self.stderr.write(f"{pk}: error: {exc.detail}")
                failures += 1
        if failures:
            raise CommandError(f"{failures} of {len(ids)} could not be handled.")

    def _pause(self, *, ids: list[uuid.UUID], **options: Any) -> None:
        self._each(ids, lambda schedule: (
            "paused" if schedule_set_enabled(schedule=schedule, enabled=False) else "already paused"
        ))

    def _resume(self, *, ids: list[uuid.UUID], **options: Any) -> None:
        def resume(schedule: Schedule) -> str:
            changed = schedule_set_enabled(schedule=schedule, enabled=True)
            return f"{'resumed' if changed else 'already enabled'}, next run {_when(schedule.next_run_at)}"

        self._each(ids, resume)

    def _trigger(self, *, ids: list[uuid.UUID], **options: Any) -> None:
        self._each(ids, lambda schedule: f"started execution {schedule_trigger(schedule=schedule).pk}")
