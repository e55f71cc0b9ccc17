"""The live page and a saga's timeline in a real browser: headless Chromium (Debian's) driven by Selenium,
against the real ASGI server (uvicorn, in a subprocess), a real worker and the test database.

``scripts/test.sh`` installs ``chromium`` and ``chromium-driver`` when it runs as root and they are
missing; elsewhere these tests are skipped if the browser is not there. Screenshots go to
``var/screenshots/``; those the README and the guide show go to ``docs/`` (each run takes them again).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from sagas.models import FINAL_SAGA_STATUSES, SagaInstance, SagaStatus
from sagas.workers import database_url, free_port, wait_for_http
from tests.helpers import wait_for_saga

from .conftest import QUEUE

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = Path(settings.VAR_DIR) / "screenshots"
DOCS = Path(settings.BASE_DIR) / "docs"
WIDTHS = (1440, 1920)  # the screens the pages are made for: none may scroll sideways there

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                       reason="needs Debian's chromium and chromium-driver (scripts/test.sh installs them as root)"),
]


@pytest.fixture
def server(worker):
    """uvicorn serving config.asgi on a free port, on the test database, sending to the test worker's queue."""
    port = free_port()
    log = Path(settings.VAR_DIR) / f"uvicorn-{port}.log"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings_test", "DATABASE_URL": database_url(),
           "CELERY_TASK_DEFAULT_QUEUE": QUEUE, "SAGAS_VAR_DIR": str(settings.VAR_DIR)}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
             "--ws", "wsproto", "--log-level", "warning"],
            cwd=settings.BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/admin/login/", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.unlink(missing_ok=True)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1440,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def staff(worker):
    user = get_user_model().objects.create_superuser("admin", "admin@example.com", "admin")
    return user, Token.objects.create(user=user).key


def log_in(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys("admin")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait(browser, lambda d: "/admin/login/" not in d.current_url)


def wait(browser, condition, timeout=20.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(condition)


def start_saga_through_api(server, token, saga_type, saga_input):
    request = urllib.request.Request(
        f"{server}/api/sagas/", method="POST", data=json.dumps({"saga_type": saga_type, "input": saga_input}).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
        return SagaInstance.objects.get(pk=json.load(response)["id"])


def write_png(path: Path, png: bytes) -> None:
    """``png`` written to ``path`` whole or not at all: two runs at once (SQLite, PostgreSQL) take the same
    pictures, and a reader never sees one half written over the other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as out:
        out.write(png)
    os.replace(out.name, path)


def screenshot(browser, name, folder=SHOTS):
    """The window (or one element of the page) as ``folder/name``."""
    png = browser.get_screenshot_as_png() if hasattr(browser, "get_screenshot_as_png") else browser.screenshot_as_png
    write_png(folder / name, png)


def at_width(browser, width):
    """Resize the window so that the page's viewport is ``width`` px wide (the window's frame aside)."""
    browser.set_window_size(width, 1000)
    frame = browser.execute_script("return window.outerWidth - window.innerWidth")
    if frame:
        browser.set_window_size(width + frame, 1000)
    assert browser.execute_script("return window.innerWidth") == width


def sideways_scroll(browser):
    """How many px the page is wider than its window (0: no sideways scroll)."""
    return browser.execute_script(
        "var d = document.documentElement; return Math.max(0, d.scrollWidth - d.clientWidth)")


def background(browser, element):
    return browser.execute_script("return getComputedStyle(arguments[0]).backgroundColor", element)


def text_box(browser, element):
    """The horizontal extent (left, right) of the text inside ``element``, not of its cell."""
    return browser.execute_script(
        "var r = document.createRange(); r.selectNodeContents(arguments[0]);"
        "var b = r.getBoundingClientRect(); return [b.left, b.right]", element)


@pytest.mark.alone  # it bounds the push's latency
def test_live_page_shows_a_saga_appear_and_finish_without_a_reload(server, browser, staff):
    from selenium.webdriver.common.by import By

    _, token = staff
    log_in(browser, server)
    browser.get(f"{server}/admin/sagas/live/")
    wait(browser, lambda d: d.find_element(By.ID, "live-status").text == "live")
    browser.execute_script("window.loadedOnce = 'yes'")  # gone if the page were loaded again

    started = time.monotonic()
    saga = start_saga_through_api(server, token, "tests.three_steps", {"sleep": {"b": 2.5}})
    row = f'#in-flight tr[data-saga-id="{saga.pk}"]'
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row), timeout=10)
    seen_after = time.monotonic() - started
    failed = start_saga_through_api(server, token, "tests.three_steps",
                                    {"fail": {"b": "permanent"}, "comp_fail": {"a": 5}})
    compensated = start_saga_through_api(server, token, "tests.three_steps", {"fail": {"c": "permanent"}})
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'#needs-person tr[data-saga-id="{failed.pk}"]'))
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR,
                                            f'#latest-failures tr[data-saga-id="{compensated.pk}"]'))
    assert "tests.three_steps" in browser.find_element(By.CSS_SELECTOR, row).text
    screenshot(browser, "live-page.png")

    assert wait_for_saga(saga).status == SagaStatus.SUCCEEDED
    finished_at = time.monotonic()
    wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, row), timeout=10)
    gone_after = time.monotonic() - finished_at
    succeeded = '#counts tr[data-saga-type="tests.three_steps"] td[data-status="succeeded"]'
    assert browser.find_element(By.CSS_SELECTOR, succeeded).text == "1"

    print(f"a new saga showed after {seen_after:.2f} s; a finished one left after {gone_after:.2f} s")
    # A change shows within 2 s (seen_after also counts the API call that started the saga).
    assert seen_after < 3 and gone_after < 2.0, (seen_after, gone_after)
    assert browser.execute_script("return window.loadedOnce") == "yes"
    assert browser.execute_script("return window.sagasLive.loads") == 1
    assert browser.execute_script("return performance.getEntriesByType('navigation').length") == 1
    assert browser.execute_script("return window.sagasLive.pushes") >= 2
    assert SagaInstance.objects.get(pk=failed.pk).status == SagaStatus.FAILED


@pytest.mark.parametrize("width", WIDTHS)
def test_live_page_fits_the_window_and_shows_deadlines_ahead(server, browser, staff, width):
    from selenium.webdriver.common.by import By

    from corporate.fixtures import Inputs
    from sagas import start_saga
    from sagas.models import StepRecord, StepStatus
    from tests.helpers import wait_until

    _, token = staff
    at_width(browser, width)
    log_in(browser, server)
    browser.get(f"{server}/admin/sagas/live/")
    wait(browser, lambda d: d.find_element(By.ID, "live-status").text == "live")
    alarm = "rgb(186, 33, 33)"  # the admin's error red
    caption = browser.find_element(By.CSS_SELECTOR, "#needs-person caption")
    assert "nothing" in browser.find_element(By.CSS_SELECTOR, "#needs-person tbody").text
    assert background(browser, caption) != alarm  # calm while no one is needed
    screenshot(browser, f"live-page-empty-{width}.png")

    # The corporate gates wait days (budget: 3, onboarding: 14); their long names fill the columns.
    gated = {start_saga("corporate.budget_approval", input=Inputs.budget(amount="900")).pk: "in 2 d 23 h",
             start_saga("corporate.employee_onboarding", input=Inputs.onboarding(),
                        version=5).pk: "in 13 d 23 h"}  # the gate first: no child saga waited for
    wait_until(lambda: StepRecord.objects.filter(saga_id__in=gated, status=StepStatus.WAITING).count() == 2)
    busy = start_saga_through_api(server, token, "tests.three_steps", {"sleep": {"b": 20}})
    failed = start_saga_through_api(server, token, "tests.three_steps",
                                    {"fail": {"b": "permanent"}, "comp_fail": {"a": 5}})
    start_saga_through_api(server, token, "tests.three_steps", {"fail": {"c": "permanent"}})
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'#needs-person tr[data-saga-id="{failed.pk}"]'))
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'#in-flight tr[data-saga-id="{busy.pk}"]'))

    for saga_id, left in gated.items():
        row = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'#waiting tr[data-saga-id="{saga_id}"]'))
        assert row[0].find_elements(By.TAG_NAME, "td")[4].text == left
    assert background(browser, caption) == alarm  # now someone is needed
    # Each count sits under its own column's header, not under the next one's.
    headers = browser.find_elements(By.CSS_SELECTOR, "#counts thead th")
    for row in browser.find_elements(By.CSS_SELECTOR, "#counts tbody tr"):
        for header, cell in zip(headers, row.find_elements(By.TAG_NAME, "td"), strict=True):
            (head_left, head_right), (left, right) = text_box(browser, header), text_box(browser, cell)
            assert head_left <= right and left <= head_right, (header.text, cell.text)
    assert sideways_scroll(browser) == 0
    if width == 1440:
        screenshot(browser, "live-page.png", DOCS)
    else:
        screenshot(browser, f"live-page-{width}.png")


@pytest.mark.parametrize("width", WIDTHS)
def test_admin_index_is_the_orchestrators_with_sagas_first(server, browser, staff, width):
    from selenium.webdriver.common.by import By

    at_width(browser, width)
    log_in(browser, server)
    browser.get(f"{server}/admin/")

    assert browser.find_element(By.ID, "site-name").text == "Saga orchestrator"
    assert browser.title.endswith("| Saga orchestrator")
    apps = [m.get_attribute("class").split()[0] for m in browser.find_elements(By.CSS_SELECTOR, "#content-main > .module")]
    assert apps[:2] == ["sagas-live", "app-sagas"], apps  # the live page, then the sagas, then the rest
    link = browser.find_element(By.LINK_TEXT, "Live view")
    assert browser.execute_script("return arguments[0].getClientRects().length", link) == 1  # on one line
    assert sideways_scroll(browser) == 0
    if width == 1440:
        screenshot(browser, "admin-index.png", DOCS)

    link.click()  # the other pages' sidebar lists the sagas first too
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#nav-sidebar > .module"))
    sidebar = [m.get_attribute("class").split()[0] for m in browser.find_elements(By.CSS_SELECTOR, "#nav-sidebar > .module")]
    assert sidebar[0] == "app-sagas", sidebar


@pytest.mark.parametrize("width", WIDTHS)
def test_view_site_leads_to_a_landing_page_and_the_api_root_answers(server, browser, staff, width):
    from selenium.webdriver.common.by import By

    at_width(browser, width)
    log_in(browser, server)
    browser.find_element(By.LINK_TEXT, "VIEW SITE").click()
    wait(browser, lambda d: d.current_url == f"{server}/")

    assert browser.find_element(By.TAG_NAME, "h1").text == "Start here"
    assert browser.find_element(By.ID, "site-name").text == "Saga orchestrator"
    links = {a.text: a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#landing th a")}
    assert links["Live page"] == f"{server}/admin/sagas/live/" and links["API docs"] == f"{server}/api/docs/"
    assert {"Admin", "REST API", "API token", "Flower", "Metrics"} <= set(links)
    assert sideways_scroll(browser) == 0
    if width == 1440:
        screenshot(browser, "landing-page.png", DOCS)

    browser.find_element(By.LINK_TEXT, "REST API").click()  # DRF's browsable answer, not a 404
    wait(browser, lambda d: d.current_url == f"{server}/api/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Saga orchestrator API"
    assert f"{server}/api/saga-types/" in browser.page_source
    assert sideways_scroll(browser) == 0
    screenshot(browser, f"api-root-{width}.png")


def test_saga_page_draws_its_timeline_with_a_bar_per_attempt(server, browser, staff):
    from selenium.webdriver.common.by import By

    _, token = staff
    saga = start_saga_through_api(server, token, "tests.parallel", {
        "sleep": {"a": 0.3, "b1": 0.4, "b2": 0.2, "b3": 0.7}, "flaky": {"b2": 1}, "fail": {"c": "permanent"},
        "comp_fail": {"a": 1}})
    saga = wait_for_saga(saga, FINAL_SAGA_STATUSES)
    assert saga.status == SagaStatus.COMPENSATED
    log_in(browser, server)

    browser.get(f"{server}/admin/sagas/sagainstance/{saga.pk}/change/")

    chart = browser.find_element(By.CSS_SELECTOR, ".saga-timeline-chart")
    attempts = chart.find_elements(By.CSS_SELECTOR, ".bar-attempt")
    compensations = chart.find_elements(By.CSS_SELECTOR, ".bar-compensation")
    # a, b1, b2 (twice), b3, c: six attempts; b1, b2, b3 and a (twice) undone: five compensation attempts
    assert len(attempts) == 6 and len(compensations) == 5
    assert {r.get_attribute("data-outcome") for r in attempts} == {"succeeded", "retried", "failed"}
    assert chart.find_elements(By.CSS_SELECTOR, ".bar-retry-wait")
    assert "Attempt 1 of b2 failed: ConnectionError: b2 flaked on attempt 1" in browser.page_source
    buttons = [b.text for b in browser.find_elements(By.CSS_SELECTOR, ".run-actions button")]
    assert buttons == ["Resubmit"]
    browser.execute_script("arguments[0].scrollIntoView()", chart)
    screenshot(chart.find_element(By.XPATH, "./ancestor::section"), "timeline.png")


def test_a_permitted_user_completes_a_waiting_gate_from_the_admin_and_the_saga_goes_on(server, browser):
    from django.contrib.auth.models import Permission
    from selenium.webdriver.common.by import By

    from corporate.fixtures import Inputs
    from sagas import start_saga
    from sagas.models import StepRecord, StepStatus
    from tests.helpers import wait_until

    manager = get_user_model().objects.create_user("manager", password="manager", is_staff=True)
    manager.user_permissions.add(
        Permission.objects.get(codename="view_sagainstance", content_type__app_label="sagas"),
        Permission.objects.get(codename="approve_budget", content_type__app_label="corporate"))
    saga = start_saga("corporate.budget_approval", input=Inputs.budget(amount="900"))  # below the threshold
    wait_until(lambda: StepRecord.objects.get(saga_id=saga.pk, name="manager_approval").status == StepStatus.WAITING)

    browser.get(f"{server}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys("manager")
    browser.find_element(By.NAME, "password").send_keys("manager")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait(browser, lambda d: "/admin/login/" not in d.current_url)
    browser.get(f"{server}/admin/sagas/sagainstance/{saga.pk}/change/")
    gate = browser.find_element(By.CSS_SELECTOR, '.waiting-step[data-step="manager_approval"]')
    assert "Waiting for your signal" in browser.page_source
    assert "running" in browser.find_element(By.CSS_SELECTOR, ".field-status_badge").text.lower()

    gate.find_element(By.NAME, "result").send_keys('{"approved": true, "comment": "from the browser"}')
    browser.execute_script("arguments[0].scrollIntoView()", gate)
    screenshot(browser, "signal-waiting.png")
    gate.find_element(By.CSS_SELECTOR, "form.signal-complete button[type=submit]").click()
    wait(browser, lambda d: "manager_approval completed" in d.page_source)

    assert wait_for_saga(saga).status == SagaStatus.SUCCEEDED
    browser.get(f"{server}/admin/sagas/sagainstance/{saga.pk}/change/")
    wait(browser, lambda d: "succeeded" in d.find_element(By.CSS_SELECTOR, ".field-status_badge").text.lower())
    assert "Waiting for your signal" not in browser.page_source
    assert "completed manager_approval" in browser.page_source  # the signal, in the saga's events
    signal = SagaInstance.objects.get(pk=saga.pk).events.get(kind="step_signalled")
    assert (signal.detail["by"], signal.detail["result"]["comment"]) == ("manager", "from the browser")
    screenshot(browser, "signal-complete.png")
