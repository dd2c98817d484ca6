import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from project.asgi_handler import get_application  # noqa: E402  (settings module first)

application = get_application()
