"""Child sagas on the live page in a real browser (as tests/integration/test_browser.py runs it): the child
links to its parent and says which step it works for, the parent's waiting step links to its child."""
import os

import pytest

from sagas import complete_step
from sagas.models import SagaInstance, SagaStatus
from tests.helpers import wait_for_saga, wait_until

from .test_browser import (CHROMEDRIVER, CHROMIUM, DOCS, at_width, browser, log_in, screenshot,  # noqa: F401
                           server, sideways_scroll, staff, start_saga_through_api, wait)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                       reason="needs Debian's chromium and chromium-driver (scripts/test.sh installs them as root)"),
]


def test_live_page_links_a_child_to_its_parent_and_a_waiting_parent_to_its_child(server, browser, staff):
    from selenium.webdriver.common.by import By

    _, token = staff
    log_in(browser, server)
    at_width(browser, 1440)
    browser.get(f"{server}/admin/sagas/live/")
    wait(browser, lambda d: d.find_element(By.ID, "live-status").text == "live")

    parent = start_saga_through_api(server, token, "tests.nested_gate", {})  # its child waits at "gate"
    child = wait_until(lambda: SagaInstance.objects.filter(parent=parent).first())
    parent_row = f'#in-flight tr[data-saga-id="{parent.pk}"]'
    child_row = f'#in-flight tr[data-saga-id="{child.pk}"]'
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"{parent_row} a.child-link"), timeout=15)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"{child_row} a.parent-link"), timeout=15)

    to_child = browser.find_element(By.CSS_SELECTOR, f"{parent_row} a.child-link")
    assert to_child.get_attribute("data-saga-id") == str(child.pk)
    assert to_child.get_attribute("href").endswith(f"/admin/sagas/sagainstance/{child.pk}/change/")
    assert "child saga" in to_child.find_element(By.XPATH, "..").text
    assert "tests.child_gate" in to_child.find_element(By.XPATH, "..").text
    to_parent = browser.find_element(By.CSS_SELECTOR, f"{child_row} a.parent-link")
    assert to_parent.get_attribute("data-saga-id") == str(parent.pk)
    assert to_parent.find_element(By.XPATH, "..").text == f"child of {parent.pk.hex[:8]}, step child"
    waiting = browser.find_element(By.CSS_SELECTOR, f'#waiting tr[data-saga-id="{parent.pk}"] a.child-link')
    assert waiting.get_attribute("data-saga-id") == str(child.pk)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'#waiting tr[data-saga-id="{child.pk}"]'), timeout=15)
    assert sideways_scroll(browser) == 0
    screenshot(browser, "live-page-children.png", DOCS)

    to_parent.click()  # the parent's own page
    wait(browser, lambda d: d.current_url.endswith(f"/admin/sagas/sagainstance/{parent.pk}/change/"))

    browser.get(f"{server}/admin/sagas/live/")
    wait(browser, lambda d: d.find_element(By.ID, "live-status").text == "live")
    complete_step(child, "gate", result={"value": 1})  # the child ends: its parent goes on, and both leave
    assert wait_for_saga(parent).status == SagaStatus.SUCCEEDED
    wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, parent_row), timeout=10)
    assert not browser.find_elements(By.CSS_SELECTOR, child_row)
