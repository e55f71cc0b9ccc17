"""A saga's run page in a real browser (headless Chromium, as ``test_browser``): it fits the screen, its
graph shows a Parallel and a child saga, its timeline is readable for a saga of about a second, and its
times are in the browser's zone. Screenshots of the page go to ``docs/`` (each run takes them again).
"""
import os
import re
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from sagas.models import FINAL_SAGA_STATUSES, SagaInstance, SagaStatus
from tests.helpers import wait_for_saga

from .test_browser import (  # noqa: F401 (fixtures)
    CHROMEDRIVER, CHROMIUM, DOCS, SHOTS, WIDTHS, at_width, browser, log_in, server, sideways_scroll, staff,
    screenshot, start_saga_through_api, wait,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                       reason="needs Debian's chromium and chromium-driver (scripts/test.sh installs them as root)"),
]

ZONE = "Asia/Kolkata"  # UTC+05:30 all year: a zone whose times differ from UTC's in hours and minutes
MIN_BAR_PX = 3  # "a few pixels": the page draws bars at least 4 px wide

# About a second: a, then a child saga (three steps) next to b2 in a Parallel, then c.
NESTED = {"sleep": {"a": 0.15, "b2": 0.3, "c": 0.1}, "child": {"sleep": {"a": 0.1, "b": 0.2, "c": 0.05}}}
# Compensated: b2 flakes once, c refuses, a's compensation fails once (so retried); a few ms each.
COMPENSATED = {"sleep": {"a": 0.05, "b1": 0.1, "b3": 0.2}, "flaky": {"b2": 1}, "fail": {"c": "permanent"},
               "comp_fail": {"a": 1}}


def open_run_page(browser, server, saga, width):
    from selenium.webdriver.common.by import By

    at_width(browser, width)
    browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": ZONE})
    log_in(browser, server)
    browser.get(f"{server}/admin/sagas/sagainstance/{saga.pk}/change/")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".run-page time.when[data-local]"))


def boxes(browser, selector):
    """The rendered boxes (left, right, width, height) of every element ``selector`` matches."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(function (e) {"
        " var r = e.getBoundingClientRect(); return [r.left, r.right, r.width, r.height]; })", selector)


def font_px(browser, selector):
    return browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map(function (e) { return parseFloat(getComputedStyle(e).fontSize); })", selector)


def page_font_px(browser):
    return browser.execute_script("return parseFloat(getComputedStyle(document.body).fontSize)")


def full_page_screenshot(browser, path):
    """The whole page, not only the window: the window made as tall as the page for the picture."""
    width = browser.execute_script("return window.innerWidth")
    height = browser.execute_script("return document.documentElement.scrollHeight")
    frame = browser.execute_script("return window.outerHeight - window.innerHeight")
    browser.set_window_size(browser.get_window_size()["width"], min(height, 4000) + frame)
    screenshot(browser, path.name, path.parent)
    browser.set_window_size(browser.get_window_size()["width"], 1000)
    assert browser.execute_script("return window.innerWidth") == width


def assert_readable_timeline(browser):
    bars = boxes(browser, ".saga-timeline-chart .bar")
    assert bars, "no bar on the timeline"
    assert all(width >= MIN_BAR_PX and height >= 3 for _, _, width, height in bars), bars
    page = page_font_px(browser)
    labels = font_px(browser, ".saga-timeline-chart .tl-label")
    assert labels and min(labels) >= page, (labels, page)


@pytest.mark.parametrize("width", WIDTHS)
def test_run_page_of_a_saga_with_a_parallel_and_a_child_fits_and_reads(server, browser, staff, width):
    from selenium.webdriver.common.by import By

    _, token = staff
    saga = wait_for_saga(start_saga_through_api(server, token, "tests.nested_parallel", NESTED))
    assert saga.status == SagaStatus.SUCCEEDED
    child = SagaInstance.objects.get(parent=saga)
    open_run_page(browser, server, saga, width)

    assert sideways_scroll(browser) == 0
    header = browser.find_element(By.CSS_SELECTOR, ".run-header")
    assert "tests.nested_parallel" in header.text and "succeeded" in header.text.lower()
    assert [b.text for b in header.find_elements(By.CSS_SELECTOR, ".run-actions button")] == ["Resubmit"]
    # The graph: a, then the Parallel "fan" holding kid (linked to its child) and b2 stacked, then c.
    stages = browser.find_elements(By.CSS_SELECTOR, ".saga-graph .graph-stage")
    names = [[n.get_attribute("data-step") for n in s.find_elements(By.CSS_SELECTOR, ".graph-node")] for s in stages]
    assert names == [["a"], ["kid", "b2"], ["c"]]
    assert stages[1].get_attribute("data-group") == "fan"
    (kid_box, b2_box) = [n.rect for n in stages[1].find_elements(By.CSS_SELECTOR, ".graph-node")]
    assert b2_box["y"] > kid_box["y"] and abs(b2_box["x"] - kid_box["x"]) < 1  # stacked
    assert stages[0].rect["x"] < stages[1].rect["x"] < stages[2].rect["x"]  # left to right
    link = stages[1].find_element(By.CSS_SELECTOR, '.graph-node[data-step="kid"] a.child')
    assert link.get_attribute("href").endswith(f"/admin/sagas/sagainstance/{child.pk}/change/")
    # The timeline: every bar a few px wide, every label at the page's size, the child's run a linked bar.
    assert_readable_timeline(browser)
    child_bar = browser.find_element(By.CSS_SELECTOR, ".saga-timeline-chart a.bar-child")
    assert child_bar.get_attribute("href") == link.get_attribute("href")
    # Times: in the browser's zone, UTC on hover; the same format in the header, steps and events.
    times = browser.find_elements(By.CSS_SELECTOR, ".run-page time.when")
    assert {t.find_element(By.XPATH, "./ancestor::section|./ancestor::header").get_attribute("class").split()[0]
            for t in times} >= {"run-header", "run-steps", "run-events"}
    for element in times:
        utc = datetime.fromisoformat(element.get_attribute("datetime").replace("Z", "+00:00"))
        local = utc.astimezone(ZoneInfo(ZONE))
        text = element.get_attribute("textContent")
        assert text.startswith(f"{local:%Y-%m-%d %H:%M:%S}.{local.microsecond // 1000:03d}"), (text, utc)
        assert element.get_attribute("title") == f"{utc:%Y-%m-%d %H:%M:%S}.{utc.microsecond // 1000:03d} UTC"
    if width == 1440:
        full_page_screenshot(browser, DOCS / "run-page.png")
    else:
        full_page_screenshot(browser, SHOTS / f"run-page-{width}.png")


@pytest.mark.parametrize("width", WIDTHS)
def test_run_page_of_a_compensated_saga_shows_each_short_bar_and_zooms_in_its_own_box(server, browser, staff,
                                                                                      width):
    from selenium.webdriver.common.by import By

    _, token = staff
    saga = wait_for_saga(start_saga_through_api(server, token, "tests.parallel", COMPENSATED), FINAL_SAGA_STATUSES)
    assert saga.status == SagaStatus.COMPENSATED
    open_run_page(browser, server, saga, width)

    assert sideways_scroll(browser) == 0
    chart = browser.find_element(By.CSS_SELECTOR, ".saga-timeline-chart")
    compensations = chart.find_elements(By.CSS_SELECTOR, ".bar-compensation")
    assert len(compensations) == 5  # b1, b2, b3, and a twice (its first try failed)
    assert_readable_timeline(browser)
    # c refused: its step is open, with the error; a's compensation shows its failed first attempt.
    c = browser.find_element(By.CSS_SELECTOR, 'details.step[data-step="c"]')
    assert c.get_attribute("open") is not None and "c refused" in c.text
    a = browser.find_element(By.CSS_SELECTOR, 'details.step[data-step="a"]')
    browser.execute_script("arguments[0].open = true", a)
    assert "cannot undo a" in a.find_element(By.CSS_SELECTOR, ".step-compensations").text
    assert "b2 flaked on attempt 1" in browser.find_element(By.CSS_SELECTOR, 'details.step[data-step="b2"]') \
        .get_attribute("textContent")
    # Internal fields wait behind a toggle.
    internals = browser.find_element(By.CSS_SELECTOR, ".run-details details.run-internals")
    assert internals.get_attribute("open") is None and not internals.find_element(By.TAG_NAME, "dl").is_displayed()
    if width == 1440:
        full_page_screenshot(browser, DOCS / "run-page-compensated.png")
        browser.execute_script("arguments[0].scrollIntoView()", chart)
        screenshot(chart.find_element(By.XPATH, "./ancestor::section"), "run-page-timeline.png", DOCS)

    before = boxes(browser, ".saga-timeline-chart .bar-compensation")
    chart.find_element(By.CSS_SELECTOR, '.tl-tools button[data-zoom="8"]').click()
    after = boxes(browser, ".saga-timeline-chart .bar-compensation")
    scroll = chart.find_element(By.CSS_SELECTOR, ".tl-scroll")
    assert browser.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth * 4", scroll)
    assert sum(w for *_, w, _ in after) > sum(w for *_, w, _ in before)  # wider bars, in the chart's own box
    assert sideways_scroll(browser) == 0
    labels = chart.find_elements(By.CSS_SELECTOR, ".ticks[data-zoom='8'] .tick")
    assert labels and all(re.fullmatch(r"\d+(\.\d+)? (ms|s)", t.get_attribute("textContent")) for t in labels)
    if width == 1440:
        browser.execute_script("arguments[0].scrollIntoView()", chart)
        screenshot(chart, "run-page-zoom.png", DOCS)


def test_a_childs_run_page_links_its_parent_and_shows_who_signalled_its_gate(server, browser, staff):
    from selenium.webdriver.common.by import By

    from sagas.models import StepRecord, StepStatus
    from tests.helpers import wait_until

    _, token = staff
    parent = start_saga_through_api(server, token, "tests.nested_gate", {"sleep": {"a": 0.1}})
    wait_until(lambda: StepRecord.objects.filter(saga__parent=parent, name="gate", status=StepStatus.WAITING).exists())
    child = SagaInstance.objects.get(parent=parent)
    open_run_page(browser, server, child, 1440)

    header = browser.find_element(By.CSS_SELECTOR, ".run-header")
    assert header.find_element(By.PARTIAL_LINK_TEXT, str(parent.pk)).get_attribute("href").endswith(
        f"/admin/sagas/sagainstance/{parent.pk}/change/")
    assert "(its step child)" in header.text
    gate = browser.find_element(By.CSS_SELECTOR, '.waiting-step[data-step="gate"]')
    assert browser.find_element(By.CSS_SELECTOR, 'details.step[data-step="gate"]').get_attribute("open") is not None
    assert sideways_scroll(browser) == 0
    full_page_screenshot(browser, DOCS / "run-page-waiting.png")

    gate.find_element(By.NAME, "result").send_keys('{"approved": true}')
    gate.find_element(By.CSS_SELECTOR, "form.signal-complete button[type=submit]").click()
    wait(browser, lambda d: "gate completed" in d.page_source)

    assert wait_for_saga(parent).status == SagaStatus.SUCCEEDED
    browser.get(f"{server}/admin/sagas/sagainstance/{child.pk}/change/")
    step = browser.find_element(By.CSS_SELECTOR, 'details.step[data-step="gate"]')
    browser.execute_script("arguments[0].open = true", step)
    acts = step.find_element(By.CSS_SELECTOR, ".step-acts").text
    assert "User admin (id" in acts and "completed gate" in acts  # who signalled it, on the step itself
    assert step.find_element(By.CSS_SELECTOR, ".step-acts time.when").get_attribute("data-local") == "yes"


def test_a_saga_of_45_steps_keeps_its_graph_in_its_own_scroll_box(server, browser, staff):
    from selenium.webdriver.common.by import By

    _, token = staff
    saga = wait_for_saga(start_saga_through_api(server, token, "tests.long_line", {}))
    assert saga.status == SagaStatus.SUCCEEDED
    open_run_page(browser, server, saga, 1440)

    graph = browser.find_element(By.CSS_SELECTOR, ".saga-graph")
    assert len(graph.find_elements(By.CSS_SELECTOR, ".graph-stage")) == 45
    assert browser.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth", graph)
    assert sideways_scroll(browser) == 0
    assert_readable_timeline(browser)
