"""Autodiscovered (``autodiscover_modules("agents")``) when ``tests.faults`` is an installed app."""

from executions.registry import agent
from tests.faults.frozen import PID_STEPS, pid_steps
from tests.faults.silent import SILENT_SLEEP, silent_sleep

agent(SILENT_SLEEP)(silent_sleep)
agent(PID_STEPS)(pid_steps)

from tests.faults.limited import PAIR_LIMITED, pair_limited  # noqa: E402 after the plain registrations

agent(PAIR_LIMITED, concurrency=2)(pair_limited)
