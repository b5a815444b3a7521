"""The web console (/ui) in a real browser: Debian's headless Chromium driven by
Playwright, against a live `shardflow dev` cluster. It loads every page, filters, opens
a failed saga, sends an approval, cancels, retries and manages a schedule, checking the
DOM against the API; it waits for elements, never for time. Screenshots of each page at
1280x800 and 390x844 go to a temporary folder, or to $SHARDFLOW_SCREENSHOTS
(`make screenshots` refreshes docs/ui/)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.test_dev import Dev, request

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="needs Debian's chromium (make test installs it)"
)


class Browser:
    """One headless Chromium for the session's console tests, in a thread of its own:
    Playwright's sync API runs its own loop, which must not meet pytest-asyncio's."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1)
        self.pw: Any = None
        self.chromium: Any = None
        self.pool.submit(self._launch).result()

    def _launch(self) -> None:
        from playwright.sync_api import sync_playwright

        self.pw = sync_playwright().start()
        self.chromium = self.pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)

    def run(self, scenario: Callable[..., None], *args: Any) -> None:
        self.pool.submit(scenario, self.chromium, *args).result()

    def close(self) -> None:
        def stop() -> None:
            self.chromium.close()
            self.pw.stop()

        self.pool.submit(stop).result()
        self.pool.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    b = Browser()
    yield b
    b.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    dev = Dev(tmp_path_factory.mktemp("console"), "--app", "examples.orders")
    dev.start()
    yield dev
    dev.remove()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SHARDFLOW_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _api(dev: Dev, path: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    code, doc = request(dev.url + path, method, data, 60)
    assert code < 400, (path, code, doc)
    return doc


def _start(dev: Dev, workflow: str, payload: Any, wid: str) -> None:
    _api(dev, "/v1/workflows", "POST", {"workflow": workflow, "input": payload, "id": wid})


def _settle(dev: Dev, wid: str) -> dict[str, Any]:
    code, doc = request(f"{dev.url}/v1/workflows/{wid}/result?timeout=30")
    assert code == 200, doc
    return dict(_api(dev, f"/v1/workflows/{wid}"))


def _status_is(page: Any, status: str) -> None:
    page.wait_for_selector(f'[data-field="status"] [data-status="{status}"]', timeout=30_000)


def _confirm(page: Any, admin: str | None = None) -> None:
    page.wait_for_selector("#confirm[open]")
    if admin is not None:
        page.fill("#admin-token", admin)
    page.click("#confirm-ok")


def _fits(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def _shoot(page: Any, folder: Path, name: str) -> None:
    for size, (w, h) in SIZES.items():
        page.set_viewport_size({"width": w, "height": h})
        page.wait_for_timeout(0)  # a layout pass, no waiting
        assert _fits(page), f"{name} scrolls sideways at {w}x{h}"
        page.screenshot(path=str(folder / f"{name}-{size}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})


def test_the_console_shows_and_acts_on_a_live_cluster(browser: Browser, live: Dev, shots: Path):
    browser.run(_scenario, live, shots)


def _scenario(browser: Any, live: Dev, shots: Path) -> None:
    for i in range(3):
        _start(live, "w3", {"order_id": i, "amount": 1.0, "pad": "x"}, f"ui-w3-{i}")
    order = {"amount": 12.5, "items": ["book"]}
    _start(
        live,
        "order_fulfillment",
        {**order, "order_id": "ui-bad", "fail_at": "charge_payment"},
        "ui-bad",
    )
    _start(live, "order_fulfillment", {**order, "order_id": "ui-wait"}, "ui-wait")
    _start(live, "long_sleep", None, "ui-sleep")
    _start(live, "retry_me", {"key": "ui-retry", "fail_times": 3}, "ui-retry")
    for wid in ("ui-w3-0", "ui-w3-1", "ui-w3-2", "ui-bad", "ui-retry"):
        _settle(live, wid)

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(live.url + "/ui")
    page.wait_for_selector('body[data-loaded="workflows"] tr[data-key="ui-w3-0"]')
    _shoot(page, shots, "workflows")

    # Auto-refresh keeps unchanged rows as the same DOM nodes.
    page.evaluate("document.querySelector('tr[data-key=\"ui-w3-0\"]').marked = true")
    ticks = page.evaluate("Number(document.body.dataset.ticks)")
    page.wait_for_function(f"Number(document.body.dataset.ticks) > {ticks}")
    assert page.evaluate("document.querySelector('tr[data-key=\"ui-w3-0\"]').marked === true")

    # Filters: failed only; the DOM lists what the API lists.
    page.select_option("#f-status", "failed")
    page.wait_for_selector('tr[data-key="ui-bad"]')
    page.wait_for_function("!document.querySelector('tr[data-key=\"ui-w3-0\"]')")
    shown = set(
        page.eval_on_selector_all("#workflow-rows tr", "rows => rows.map(r => r.dataset.key)")
    )
    listed = _api(live, "/v1/workflows?status=failed&order=newest&limit=50")["workflows"]
    assert shown == {w["id"] for w in listed}
    failed_count = page.text_content('[data-count="failed"]')
    assert failed_count is not None and failed_count.endswith(str(len(listed)))

    # A failed saga: its error, the failing step and its compensations.
    page.click('tr[data-key="ui-bad"] a')
    page.wait_for_selector("#compensations")
    doc = _api(live, "/v1/workflows/ui-bad")
    assert page.text_content("#compensations") == ", ".join(doc["compensations"])
    assert "release_inventory" in doc["compensations"]
    error_text = page.text_content("#wf-error") or ""
    assert "OrderRejected" in error_text and "charge_payment" in error_text
    _shoot(page, shots, "workflow-failed")

    # The approval a waiting order wants, sent from the console.
    page.goto(live.url + "/ui#/workflow/ui-wait")
    _status_is(page, "waiting")
    page.fill("#event-name", "approved")
    page.fill("#event-payload", '{"approved": true}')
    page.click("#act-event")
    _confirm(page)
    _status_is(page, "completed")
    assert _api(live, "/v1/workflows/ui-wait")["status"] == "completed"
    _shoot(page, shots, "workflow-completed")

    # Cancel a sleeping workflow; retry a failed one.
    page.goto(live.url + "/ui#/workflow/ui-sleep")
    _status_is(page, "sleeping")
    page.click("#act-cancel")
    _confirm(page)
    _status_is(page, "cancelled")
    assert _api(live, "/v1/workflows/ui-sleep")["status"] == "cancelled"
    page.goto(live.url + "/ui#/workflow/ui-retry")
    _status_is(page, "failed")
    page.click("#act-retry")
    _confirm(page)
    _status_is(page, "completed")
    assert _api(live, "/v1/workflows/ui-retry")["status"] == "completed"

    # A readable error: a payload that is not JSON.
    page.fill("#event-payload", "{not json")
    page.click("#act-event")
    page.wait_for_selector("#error:not([hidden])")
    assert "not JSON" in (page.text_content("#error") or "")

    # The cluster: shards, the slot map, the leader.
    page.goto(live.url + "/ui#/cluster")
    page.wait_for_selector('body[data-loaded="cluster"] #shards tbody tr')
    cluster = _api(live, "/v1/cluster")
    assert page.eval_on_selector_all("#shards tbody tr", "r => r.length") == len(cluster["shards"])
    assert page.eval_on_selector_all("#slotmap span", "s => s.length") == len(
        cluster["slot_owners"]
    )
    assert cluster["leader"]["owner"] in (page.text_content("#leader") or "")
    _shoot(page, shots, "cluster")

    # Schedules: made and deleted with the admin token, which the page never shows.
    admin = (live.data / "admin-token").read_text().strip()
    page.goto(live.url + "/ui#/schedules")
    page.wait_for_selector('body[data-loaded="schedules"] #new-schedule')
    page.fill('#new-schedule [name="name"]', "ui-nightly")
    page.fill('#new-schedule [name="workflow"]', "w3")
    page.fill('#new-schedule [name="cron"]', "0 3 * * *")
    page.click('#new-schedule button[type="submit"]')
    _confirm(page, admin)
    page.wait_for_selector('tr[data-key="ui-nightly"]')
    assert [s["name"] for s in _api(live, "/v1/schedules")["schedules"]] == ["ui-nightly"]
    assert admin not in page.content()
    _shoot(page, shots, "schedules")
    page.click('button[data-delete="ui-nightly"]')
    _confirm(page)
    page.wait_for_function("!document.querySelector('tr[data-key=\"ui-nightly\"]')")
    assert _api(live, "/v1/schedules")["schedules"] == []
    page.close()
