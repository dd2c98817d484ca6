"""multitask_strategy=reject is race-free: concurrent creates from processes, one winner."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from runs.models import Run, RunStatus
from runs.services import thread_create
from tests.conftest import ROOT, subprocess_env

PROCESSES = 4
CREATES_PER_PROCESS = 50
THREADS_PER_PROCESS = 8


# Slow: four processes making 200 creates take ~10 s. The default suite keeps the rule itself
# (test_sdk_live.py::test_multitask_reject_and_enqueue).
@pytest.mark.slow
@pytest.mark.live
def test_concurrent_reject_creates_accept_exactly_one(transactional_db, alice) -> None:
    thread = thread_create(owner=alice)
    start_at = time.time() + 3  # every process is connected and waiting when the gun fires
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.runs.race_create", str(thread.pk), alice.username,
             str(CREATES_PER_PROCESS), str(THREADS_PER_PROCESS), str(start_at)],
            cwd=ROOT,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    accepted = rejected = 0
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        match = re.search(r"accepted=(\d+) rejected=(\d+)", out)
        assert match, out + err
        accepted += int(match.group(1))
        rejected += int(match.group(2))
    assert (accepted, rejected) == (1, PROCESSES * CREATES_PER_PROCESS - 1)
    assert Run.objects.filter(thread=thread).count() == 1
    assert Run.objects.get(thread=thread).status == RunStatus.PENDING
