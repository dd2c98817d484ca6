"""A test agent that works without touching ``ctx``, like a long model call or a blocking library.

Its worker keeps the job alive only through the heartbeat thread, so it shows whether that thread
survives a database hiccup. ``agents.py`` registers it in worker processes started with
``tests.faults.settings``; tests register it in their own process with ``silent_sleep_registered``.
"""

from __future__ import annotations

import time

SILENT_SLEEP = "faults_silent_sleep"


def silent_sleep(inputs: dict, ctx) -> dict:
    """Sleeps `seconds` without reporting progress or checking for cancellation."""
    seconds = float(inputs.get("seconds", 1))
    time.sleep(seconds)
    return {"slept": seconds}
