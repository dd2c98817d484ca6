from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class OperationsConfig(AppConfig):
    default = True  # apps.py holds two configs: this one is the app's
    name = "operations"
    verbose_name = "Operations"


class OperationsAdminConfig(admin_apps.AdminConfig):
    """``django.contrib.admin`` whose default site has the operations page for its index."""

    default = False
    default_site = "operations.admin_site.OperationsAdminSite"
