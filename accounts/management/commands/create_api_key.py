from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from accounts.models import api_key_create


class Command(BaseCommand):
    help = "Create an API key for USERNAME (creating the user if missing) and print the key alone."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--staff", action="store_true", help="make the user staff (admin access)")
        parser.add_argument("--name", default="", help="a label for the key")

    def handle(self, *args, username: str, staff: bool, name: str, **options) -> None:
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
        if staff and not user.is_staff:
            user.is_staff = True
            user.is_superuser = True
        if created or staff:
            user.save()
        _, raw_key = api_key_create(user=user, name=name)
        self.stdout.write(raw_key)
