import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

# After the settings module is chosen: get_application() sets Django up with it.
from project.api.asgi_handler import get_application

application = get_application()
