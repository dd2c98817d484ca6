"""Settings of worker processes started by some fault tests: the platform's, plus a test agent."""

from project.settings import *

# Its agents.py registers the test agent through the platform's autodiscovery.
INSTALLED_APPS = [*INSTALLED_APPS, "tests.faults"]
