"""Operate on LangGraph threads from the terminal: prune old ones."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from project.command_arguments import positive_days
from runs.services import threads_prune_inactive


class Command(BaseCommand):
    help = "Maintain LangGraph threads. `threads prune --older-than DAYS [--dry-run]`."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True)
        prune = sub.add_parser(
            "prune", help="delete threads (runs, checkpoints) idle for longer than DAYS"
        )
        prune.add_argument("--older-than", type=positive_days, required=True, metavar="DAYS")
        prune.add_argument("--dry-run", action="store_true", help="only count what would go")

    def handle(self, *args: Any, subcommand: str, older_than: float, dry_run: bool, **options: Any) -> None:
        cutoff = timezone.now() - timedelta(days=older_than)
        count = threads_prune_inactive(older_than=cutoff, dry_run=dry_run)
        if dry_run:
            self.stdout.write(f"{count} thread(s) would be deleted (not updated for {older_than:g} days).")
        else:
            self.stdout.write(f"Deleted {count} thread(s) not updated for {older_than:g} days.")
