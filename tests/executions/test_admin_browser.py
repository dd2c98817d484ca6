"""The executions admin in a real browser: progress and status move live, with no reload.

Debian's chromium, driven by Playwright, logs in to a real uvicorn server while a real qcluster
runs a `countdown` pipeline on the same test database, and watches the changelist and the change
page follow it over the admin's server-sent events stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from executions import services
from executions.models import Execution
from tests.conftest import Cluster
from tests.runs.conftest import Server

if TYPE_CHECKING:
    from playwright.sync_api import Page

T = TypeVar("T")

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHANGELIST = "/admin/executions/execution/"


@pytest.fixture(scope="module")
def stack(django_db_setup) -> Iterator[tuple[Server, Cluster]]:
    """One server and one cluster for the module; they hold no state between tests."""
    cluster = Cluster(workers=2)  # boots while the server starts
    try:
        server = Server()
    except BaseException:
        cluster.stop()
        raise
    try:
        yield server, cluster
    finally:
        cluster.stop()
        server.stop()


class BrowserThread:
    """Playwright's sync API in a thread of its own.

    It keeps an event loop running in the thread that uses it, and Django's ORM refuses to run in
    a thread with a running loop; so the test's database work stays on the main thread and every
    browser call goes through ``call``.
    """

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playwright")
        self._playwright = self.call(lambda: sync_playwright().start())
        try:
            self.chromium = self.call(
                self._playwright.chromium.launch, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
        except BaseException:
            self.close()
            raise

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._executor.submit(function, *args, **kwargs).result()

    def close(self) -> None:
        if hasattr(self, "chromium"):
            self.call(self.chromium.close)
        self.call(self._playwright.stop)
        self._executor.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserThread]:
    if not CHROMIUM.exists():
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install chromium")
    browser = BrowserThread()
    try:
        yield browser
    finally:
        browser.close()


def log_in(browser: BrowserThread, base_url: str, username: str, password: str) -> Page:
    """(In the browser thread.) A page logged in to the admin, recording the URLs it requests."""
    context = browser.chromium.new_context(base_url=base_url)
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.requests = []
    page.on("request", lambda request: page.requests.append(request.url))
    page.goto("/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")
    return page


@pytest.fixture
def staff(transactional_db, make_user):
    return make_user("staff", staff=True)  # a superuser whose password is "pw"


@pytest.fixture
def page(stack, browser, staff) -> Iterator[Page]:
    server, _ = stack
    page = browser.call(log_in, browser, server.url, "staff", "pw")
    try:
        yield page
    finally:
        browser.call(page.context.close)


def start_countdown(owner) -> Execution:
    return services.execution_create(
        owner=owner,
        type="pipeline",
        target_id="countdown",
        inputs={"steps": 5, "step_seconds": 0.5},
    )


@dataclass
class Watched:
    """What the page showed while it followed one execution, read in the browser thread."""

    widths: list[float]
    status: str
    badge_class: str
    pct: str
    step: str
    transport: str
    reloaded: bool
    requests: list[str]
    cancel_visible_before: bool
    cancel_visible_after: bool
    outputs_before: str
    outputs_after: str
    timeline_rows: int


def follow(
    page: Page, path: str, execution_id: str, *, timeout: float = 30, break_stream: bool = False
) -> Watched:
    """(In the browser thread.) Open ``path`` once and sample the execution's bar until its badge
    says "Completed"; then wait for the page to settle (the change page fetches the outputs).

    ``break_stream`` makes every connection to the progress stream fail, like a proxy that
    refuses server-sent events.
    """
    if break_stream:
        page.route("**/progress/stream/**", lambda route: route.abort())
    page.goto(path)
    # A reload would drop this marker.
    page.evaluate("window.__loadedOnce = true")
    selector = f'[data-execution-id="{execution_id}"]'
    bar = page.locator(f'{selector}[data-execution-field="progress"]')
    badge = page.locator(f'{selector}[data-execution-field="status"]')
    cancel = page.locator(".exec-cancel-button")
    outputs = page.locator(".field-outputs_pretty")
    cancel_visible_before = cancel.count() > 0 and cancel.is_visible()
    outputs_before = outputs.text_content() if outputs.count() else ""
    widths: list[float] = []
    deadline = time.monotonic() + timeout
    while True:
        # Badge first: a snapshot patches badge and bar at once, so a bar read after a
        # "Completed" badge is the final one.
        status = badge.text_content()
        width = float(bar.locator(".exec-progress__fill").evaluate("el => el.style.width")[:-1])
        if not widths or widths[-1] != width:
            widths.append(width)
        if status == "Completed" or time.monotonic() > deadline:
            break
        page.wait_for_timeout(50)
    if outputs.count():
        page.wait_for_function(
            "() => document.querySelector('.field-outputs_pretty').textContent.includes('remaining')"
        )
    return Watched(
        widths=widths,
        status=badge.text_content(),
        badge_class=badge.get_attribute("class"),
        pct=bar.locator(".exec-progress__pct").text_content(),
        step=bar.locator(".exec-progress__step").text_content(),
        transport=page.evaluate("window.ExecutionProgress.transport"),
        reloaded=page.evaluate("window.__loadedOnce") is not True,
        requests=list(page.requests),
        cancel_visible_before=cancel_visible_before,
        cancel_visible_after=cancel.count() > 0 and cancel.is_visible(),
        outputs_before=outputs_before,
        outputs_after=outputs.text_content() if outputs.count() else "",
        timeline_rows=page.locator(".exec-timeline tbody tr").count(),
    )


def assert_followed_live(watched: Watched, execution: Execution, cluster: Cluster) -> None:
    assert watched.status == "Completed", f"{watched}\n{cluster.log()}"
    assert "exec-status--completed" in watched.badge_class
    assert not watched.reloaded
    assert watched.transport == "streaming"
    # It advanced in several steps and never went back.
    assert watched.widths == sorted(watched.widths) and len(watched.widths) >= 3, watched.widths
    assert watched.widths[-1] == 100.0
    assert (watched.pct, watched.step) == ("100%", "step 5/5 · tick 1")
    # One stream for the page, and no polling of the JSON endpoint.
    streams = [url for url in watched.requests if "/progress/stream/?ids=" in url]
    assert len(streams) == 1 and str(execution.pk) in streams[0], watched.requests
    assert not [url for url in watched.requests if "/progress/?ids=" in url]


def test_changelist_follows_a_running_pipeline_without_reload(browser, page, stack, staff):
    _, cluster = stack
    execution = start_countdown(staff)

    watched = browser.call(follow, page, CHANGELIST, str(execution.pk))

    assert_followed_live(watched, execution, cluster)


def test_change_page_follows_it_and_shows_the_outputs_when_done(browser, page, stack, staff):
    _, cluster = stack
    execution = start_countdown(staff)

    watched = browser.call(follow, page, f"{CHANGELIST}{execution.pk}/change/", str(execution.pk))

    assert_followed_live(watched, execution, cluster)
    assert watched.cancel_visible_before and not watched.cancel_visible_after
    # The outputs and the full timeline were brought in without a reload.
    assert "remaining" not in watched.outputs_before
    assert '"remaining": 0' in watched.outputs_after and '"steps": 5' in watched.outputs_after
    assert watched.timeline_rows >= 8  # created, running, a progress per step, completed


def test_changelist_falls_back_to_polling_when_the_stream_keeps_failing(
    browser, page, stack, staff
):
    _, cluster = stack
    execution = start_countdown(staff)

    watched = browser.call(follow, page, CHANGELIST, str(execution.pk), break_stream=True)

    assert watched.status == "Completed", f"{watched}\n{cluster.log()}"
    assert not watched.reloaded
    assert watched.transport == "polling"
    assert (watched.widths[-1], watched.pct) == (100.0, "100%")
    # Three attempts at the stream, then the JSON endpoint until nothing was active.
    assert len([url for url in watched.requests if "/progress/stream/?ids=" in url]) == 3
    assert [url for url in watched.requests if "/progress/?ids=" in url]
