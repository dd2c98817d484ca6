"""The operations page in a real browser: it refreshes itself, with no reload, as workers take
jobs; everything it loads comes from this server (no CDN).

Debian's chromium, driven by Playwright, as in tests/executions/test_admin_browser.py, whose
server, cluster and browser fixtures this module shares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from executions import services
from executions.models import Execution
from tests.executions.test_admin_browser import (  # noqa: F401 fixtures, used by name
    BrowserThread,
    browser,
    log_in,
    stack,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def test_the_page_follows_the_workers_without_a_reload(
    stack, browser: BrowserThread, make_user  # noqa: F811 the imported fixtures, injected by name
) -> None:
    server, _ = stack
    staff = make_user("operator", staff=True)
    page: Page = browser.call(log_in, browser, server.url, "operator", "pw")
    try:
        def opened(page: Page) -> tuple[str, int]:
            page.goto("/admin/")
            page.evaluate("window.__loadedOnce = true")  # a reload would drop it
            page.wait_for_selector("#ops-panel")
            # Two live workers, once the cluster has saved its status.
            page.wait_for_function(
                "() => document.querySelector('#ops-workers')?.textContent.trim() === '2'", timeout=30_000
            )
            return page.locator("#ops-panel").inner_text(), page.locator("#ops-panel svg").count()

        text, charts = browser.call(opened, page)
        assert "workers alive" in text and "Last hour, per minute" in text
        assert charts == 2

        execution = services.execution_create(
            owner=staff, type="agent", target_id="sleep", inputs={"seconds": 30}
        )

        def followed(page: Page) -> tuple[str, bool]:
            page.wait_for_function(
                f"() => document.querySelector('#ops-workers-table')?.textContent.includes('{str(execution.pk)[:10]}')",
                timeout=30_000,
            )
            return page.locator("#ops-running").inner_text(), page.evaluate("window.__loadedOnce === true")

        running, same_page = browser.call(followed, page)
        assert running == "1"
        assert same_page, "the page reloaded instead of refreshing its panel"
        foreign = [url for url in page.requests if not url.startswith(server.url)]
        assert not foreign, foreign
    finally:
        for execution in Execution.objects.filter(status__in=["pending", "running"]):
            services.execution_cancel(execution=execution)
        browser.call(page.context.close)
