"""Subprocess of the reject race test: fire conflicting run creates at one thread from threads.

Usage: python -m tests.runs.race_create THREAD_ID USERNAME CREATES THREADS START_AT
Prints ``accepted=<n> rejected=<m>``.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def main() -> None:
    thread_id, username, creates, threads, start_at = sys.argv[1:6]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection

    from runs import services
    from runs.errors import Conflict

    user = get_user_model().objects.get(username=username)
    connection.close()
    body = {"assistant_id": "echo", "input": {"messages": []}, "multitask_strategy": "reject"}

    def create(_: int) -> bool:
        try:
            services.run_create(owner=user, body=body, thread_id=thread_id)
            return True
        except Conflict:
            return False
        finally:
            connection.close()

    time.sleep(max(0.0, float(start_at) - time.time()))
    with ThreadPoolExecutor(int(threads)) as pool:
        results = list(pool.map(create, range(int(creates))))
    print(f"accepted={sum(results)} rejected={len(results) - sum(results)}")


if __name__ == "__main__":
    main()
