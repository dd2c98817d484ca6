import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from accounts.models import api_key_create


class Command(BaseCommand):
    help = "Create (or reset) the demo staff user and a fresh API key, and print both."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default=os.environ.get("DEMO_USER", "demo"))
        parser.add_argument("--password", default=os.environ.get("DEMO_PASSWORD", "demo"))

    def handle(self, *args, username: str, password: str, **options) -> None:
        user, _ = get_user_model().objects.get_or_create(username=username)
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        _, raw_key = api_key_create(user=user, name="demo")
        port = os.environ.get("PORT", "8000")
        self.stdout.write(f"Admin login:  {username} / {password}  (http://127.0.0.1:{port}/admin/)")
        self.stdout.write(f"API key:      {raw_key}")
