"""Commands start fast: langgraph and langchain (about a second of imports) are loaded by a
process that loads or runs a graph, not by every `manage.py` command, the admin or the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import json, sys
import django
django.setup()  # what every manage.py command does first (apps, admin autodiscovery)
from django.core.management import call_command
from django.urls import resolve
call_command("check", verbosity=0)  # imports the URLconf: every API view, the admin
resolve("/threads")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("langgraph", "langchain_core", "langsmith"))))
"""


def test_setup_check_and_the_urlconf_import_no_langgraph() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []
