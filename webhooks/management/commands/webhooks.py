"""Operate on webhook messages from the terminal: prune."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from project.command_arguments import positive_days
from webhooks.pruning import webhook_messages_prune


class Command(BaseCommand):
    help = "Prune old webhook messages. `webhooks SUBCOMMAND --help` describes each subcommand."

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
        prune_parser = subcommands.add_parser(
            "prune",
            help="delete delivered and failed webhook messages older than some days",
            description="Delete the webhook messages (with their delivery attempts) that were "
            "delivered or gave up and were created more than DAYS days ago. Messages still being "
            "delivered are never deleted.",
        )
        prune_parser.add_argument(
            "--older-than", metavar="DAYS", type=positive_days, required=True,
            help="age in days, fractions allowed (0.5 = 12 hours)",
        )
        prune_parser.add_argument(
            "--dry-run", action="store_true", help="count what would be deleted, delete nothing"
        )

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        getattr(self, f"_{subcommand}")(**options)

    def _prune(self, *, older_than: float, dry_run: bool, **options: Any) -> None:
        count = webhook_messages_prune(
            older_than=timezone.now() - timedelta(days=older_than), dry_run=dry_run
        )
        noun = "webhook message" if count == 1 else "webhook messages"
        age = f"created more than {older_than:g} days ago"
        if dry_run:
            self.stdout.write(f"Would delete {count} {noun} {age} (dry run, nothing deleted).")
        else:
            self.stdout.write(f"Deleted {count} {noun} {age}.")
