"""A test agent that names its worker process in everything it writes, for the frozen-worker test.

Each step sleeps without looking at ``ctx`` (a worker frozen in the middle of it wakes up and
writes before it checks anything), then reports progress and a log line that carry its pid; its
outputs carry the pid too. So every write in the row and the timeline says which worker made it.
``agents.py`` registers it in worker processes started with ``tests.faults.settings``.
"""

from __future__ import annotations

import os
import time

PID_STEPS = "faults_pid_steps"


def pid_steps(inputs: dict, ctx) -> dict:
    """`steps` steps of `step_seconds`, each reported as ``"<pid> step <n>"``."""
    steps = int(inputs.get("steps", 10))
    pid = os.getpid()
    for step in range(1, steps + 1):
        time.sleep(float(inputs.get("step_seconds", 0.5)))
        ctx.progress(current_step=step, total_steps=steps, step_name=f"{pid} step {step}")
        ctx.log(f"{pid} step {step}", pid=pid)
    return {"pid": pid, "steps": steps}
