"""The runs admin in a real browser: a run's status turns to success live, with no reload.

Debian's chromium, driven by Playwright, logs in to a real uvicorn server while a real qcluster
runs a `steps` graph on the same test database.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from runs import services
from runs.models import Run
from tests.executions.test_admin_browser import CHROMIUM, BrowserThread, log_in

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

CHANGELIST = "/admin/runs/run/"


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserThread]:
    if not CHROMIUM.exists():
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install chromium")
    browser = BrowserThread()
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def staff(transactional_db, make_user):
    return make_user("staff", staff=True)  # password "pw"


@pytest.fixture
def page(live_stack, browser, staff) -> Iterator[Page]:
    server, _ = live_stack
    page = browser.call(log_in, browser, server.url, "staff", "pw")
    try:
        yield page
    finally:
        browser.call(page.context.close)


def start_steps(owner) -> Run:
    thread = services.thread_create(owner=owner)
    return services.run_create(
        owner=owner,
        body={"assistant_id": "steps", "input": {"topic": "live", "delay": 0.4}},
        thread_id=thread.pk,
    )


def watch_status(page: Page, path: str, run_id: str, timeout: float = 20) -> dict:
    """(In the browser thread.) Open ``path`` once and record the run's badge until "success"."""
    page.goto(path)
    page.evaluate("window.__loadedOnce = true")  # a reload would drop this marker
    badge = page.locator(f'[data-run-id="{run_id}"][data-run-field="status"]').first
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = badge.text_content()
        if not seen or seen[-1] != text:
            seen.append(text)
        if text == "success":
            break
        page.wait_for_timeout(50)
    page.wait_for_function("() => window.RunStatus.finished === true")
    return {
        "seen": seen,
        "class": badge.get_attribute("class"),
        "reloaded": page.evaluate("window.__loadedOnce") is not True,
        "streams": [url for url in page.requests if "/admin/runs/run/status/stream/" in url],
        "duration": page.locator(f'[data-run-id="{run_id}"][data-run-field="duration"]').first.text_content(),
    }


@pytest.mark.parametrize("where", ["changelist", "change page"])
def test_a_steps_run_turns_success_without_reload(browser, page, live_stack, staff, where) -> None:
    run = start_steps(staff)
    path = CHANGELIST if where == "changelist" else f"{CHANGELIST}{run.pk}/change/"

    watched = browser.call(watch_status, page, path, str(run.pk))

    _, cluster = live_stack
    assert watched["seen"][-1] == "success", f"{watched}\n{cluster.log()}"
    assert watched["seen"][0] in ("pending", "running") and len(watched["seen"]) >= 2
    assert "run-status--success" in watched["class"]
    assert not watched["reloaded"]
    assert len(watched["streams"]) == 1 and str(run.pk) in watched["streams"][0]
    assert watched["duration"].endswith("s") and watched["duration"] != "-"
    assert Run.objects.get(pk=run.pk).status == "success"
