"""`manage.py qcluster`: django-q2's command and options, starting ``executions.cluster.Cluster``."""

import os

from django.conf import settings
from django_q.management.commands import qcluster

from executions.cluster import Cluster


class Command(qcluster.Command):
    def handle(self, *args, **options) -> None:
        settings.SECRET_KEY  # noqa: B018  as django-q2: tasks are signed with it, fail before starting
        if options.get("cluster_name"):
            # Read by django-q2's Conf (the cluster's and its queue's name) when the cluster starts.
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        cluster = Cluster()
        cluster.start()
        if options.get("run_once", False):
            cluster.stop()
