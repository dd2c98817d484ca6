import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

# Imported once the settings module is set: the handler's module sets Django up.
from project.asgi_handler import get_application

application = get_application()
