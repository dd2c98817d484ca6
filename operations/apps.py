from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class OperationsConfig(AppConfig):
    default = True  # apps.py holds two configs: this one is the app's
    name = "operations"
    verbose_name = "Operations"


class OperationsAdminConfig(admin_apps.SimpleAdminConfig):
    """``django.contrib.admin`` whose default site has the operations page for its index, and
    whose ``admin.py`` modules are imported by the URLconf (``project.urls``), not at start-up:
    they pull in DRF, httpx and the stream views, about two thirds of a management command's
    start, which no command but the server needs."""

    default = False
    default_site = "operations.admin_site.OperationsAdminSite"
