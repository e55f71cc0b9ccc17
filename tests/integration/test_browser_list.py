"""The admin's saga list and its start page in a real browser (headless Chromium, as test_browser.py drives it):
the list fits 1440 and 1920 px screens with its Duration and Error columns, its status chips filter it, the
start form starts a saga through the real server and worker, or shows the field errors of a bad one, and the
admin's other pages (step records, events, bulk jobs and the bulk confirmation) fit those screens too.

Screenshots the guide shows go to ``docs/`` (saga-list.png, start-form.png); the others to ``var/screenshots/``.
"""
import pytest
from django.utils import timezone

from corporate import fixtures
from corporate.sagas import ORDER_FULFILLMENT
from sagas.models import BulkAction, EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus
from tests.helpers import wait_for_saga

from .test_browser import (  # noqa: F401  (fixtures)
    CHROMEDRIVER, CHROMIUM, DOCS, WIDTHS, at_width, browser, log_in, pytestmark, screenshot, server,
    sideways_scroll, staff, wait,
)

LIST = "/admin/sagas/sagainstance/"
LONG_ERROR = ("step charge_payment failed for good after 3 attempts: payment declined by the provider "
              "(code 05: do not honour) for order 4711 of customer 42; the card was blocked by the issuer at "
              "09:12 UTC and no retry can succeed until the customer calls their bank")


def listed_sagas() -> list[SagaInstance]:
    """A page's worth of sagas in every status, some with long types, steps and errors."""
    now = timezone.now()
    made = []
    for n, status in enumerate([SagaStatus.SUCCEEDED] * 5 + [SagaStatus.RUNNING] * 3 + [SagaStatus.COMPENSATED] * 2
                               + [SagaStatus.FAILED] * 2 + [SagaStatus.PAUSED, SagaStatus.PENDING,
                                                            SagaStatus.COMPENSATING]):
        finished = status in (SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED, SagaStatus.FAILED)
        saga = SagaInstance.objects.create(
            saga_type="corporate.employee_onboarding" if n % 2 else "corporate.order_fulfillment", status=status,
            input={}, started_at=now - timezone.timedelta(seconds=90 + n),
            finished_at=now - timezone.timedelta(seconds=n) if finished else None,
            error=LONG_ERROR if status in (SagaStatus.FAILED, SagaStatus.COMPENSATED, SagaStatus.PAUSED) else "")
        StepRecord.objects.create(saga=saga, index=0, name="create_employee_record_with_a_long_step_name",
                                  status=StepStatus.RUNNING if not finished else StepStatus.SUCCEEDED)
        made.append(saga)
    return made


def column_header(browser, name):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, f"#result_list thead th.column-{name}")


def fully_in_view(browser, element) -> bool:
    return browser.execute_script(
        "var b = arguments[0].getBoundingClientRect(); return b.width > 0 && b.left >= 0 && "
        "b.right <= document.documentElement.clientWidth", element)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_list_fits_the_screen_with_its_duration_and_error_columns(server, browser, staff, width):
    from selenium.webdriver.common.by import By

    listed_sagas()
    at_width(browser, width)
    log_in(browser, server)
    browser.get(f"{server}{LIST}")

    assert sideways_scroll(browser) == 0 and inner_sideways_scroll(browser) == 0
    for name in ("duration_display", "error_excerpt"):
        assert fully_in_view(browser, column_header(browser, name)), name
    error = browser.find_element(By.CSS_SELECTOR, "#result_list td.field-error_excerpt .cut")
    assert error.get_attribute("title") == LONG_ERROR  # the whole error on hover
    assert fully_in_view(browser, error)
    assert browser.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth", error)  # cut
    if width == 1440:
        screenshot(browser, "saga-list.png", DOCS)
    else:
        screenshot(browser, f"saga-list-{width}.png")


def test_the_status_chips_count_and_filter_the_list(server, browser, staff):
    from selenium.webdriver.common.by import By

    listed_sagas()
    at_width(browser, 1440)
    log_in(browser, server)
    browser.get(f"{server}{LIST}")

    chip = browser.find_element(By.CSS_SELECTOR, '.status-chips a[data-status="failed"]')
    assert chip.find_element(By.CSS_SELECTOR, ".count").text == "2"
    chip.click()
    wait(browser, lambda d: "status__exact=failed" in d.current_url)

    statuses = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#result_list td.field-status_badge")]
    assert statuses == [SagaStatus.FAILED.label] * 2
    active = browser.find_element(By.CSS_SELECTOR, ".status-chips a.active")
    assert active.get_attribute("data-status") == "failed"
    assert browser.find_element(By.CSS_SELECTOR, '.status-chips a[data-status=""] .count').text == "15"


def test_the_start_form_shows_field_errors_then_starts_the_saga(server, browser, staff):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    customer, product = fixtures.customer(), fixtures.product(stock=5)
    at_width(browser, 1440)
    log_in(browser, server)
    browser.get(f"{server}{LIST}")
    browser.find_element(By.CSS_SELECTOR, '.object-tools a[href$="/sagainstance/start/"]').click()
    wait(browser, lambda d: d.find_elements(By.ID, "id_type"))
    Select(browser.find_element(By.ID, "id_type")).select_by_value(f"{ORDER_FULFILLMENT}:2")  # submits itself
    wait(browser, lambda d: d.find_elements(By.ID, "start-form"))

    browser.find_element(By.ID, "id_quantity").send_keys("0")
    ship_to = browser.find_element(By.ID, "id_ship_to")
    assert ship_to.get_attribute("value") == "DE"  # the field's initial, as in its schema's example
    ship_to.clear()
    ship_to.send_keys("germany")
    browser.find_element(By.CSS_SELECTOR, "#start-form input[type=submit]").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".errornote"))

    errors = {e.get_attribute("id"): e.text for e in browser.find_elements(By.CSS_SELECTOR, "ul.errorlist[id]")}
    assert set(errors) == {"errors-customer", "errors-product", "errors-quantity", "errors-ship_to"}
    assert "greater than or equal to 1" in errors["errors-quantity"]
    assert not SagaInstance.objects.exists()
    assert sideways_scroll(browser) == 0
    screenshot(browser, "start-form.png", DOCS)

    Select(browser.find_element(By.ID, "id_customer")).select_by_value(str(customer.pk))
    Select(browser.find_element(By.ID, "id_product")).select_by_value(str(product.pk))
    for name, value in (("quantity", "2"), ("ship_to", "DE")):
        box = browser.find_element(By.ID, f"id_{name}")
        box.clear()
        box.send_keys(value)
    browser.find_element(By.CSS_SELECTOR, "#start-form input[type=submit]").click()
    wait(browser, lambda d: "/change/" in d.current_url)

    saga = SagaInstance.objects.get()
    assert saga.saga_type == ORDER_FULFILLMENT and saga.started_by == staff[0]
    assert saga.input == {"customer": customer.pk, "product": product.pk, "quantity": 2, "ship_to": "DE"}
    assert "Started corporate.order_fulfillment version 2" in browser.find_element(By.CSS_SELECTOR, ".messagelist").text
    assert wait_for_saga(saga).status == SagaStatus.SUCCEEDED  # the worker ran it


def inner_sideways_scroll(browser) -> int:
    """How many px the widest scroll box of the page (a list's results) is wider than it shows."""
    return browser.execute_script(
        "return Math.max(0, ...Array.from(document.querySelectorAll('#changelist .results, #content-main'))"
        ".map(function (e) { return e.scrollWidth - e.clientWidth; }))")


@pytest.mark.parametrize("width", WIDTHS)
def test_the_admins_other_pages_fit_the_screen(server, browser, staff, width):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    sagas = listed_sagas()
    for saga in sagas:
        step = saga.steps.get()
        SagaEvent.objects.create(saga=saga, step=step, kind=EventKind.STEP_FAILED,
                                 detail={"attempt": 1, "error": LONG_ERROR})
    job = BulkAction.objects.create(
        action="cancel", filter={"status": ["running", "paused"], "saga_type": "corporate.order_fulfillment"},
        reason="the payment provider is down for the afternoon; cancel what waits on it", requested_by=staff[0],
        matched=3, succeeded=2, refused=[{"saga_id": str(sagas[0].pk), "reason": LONG_ERROR}])
    at_width(browser, width)
    log_in(browser, server)

    for path in ("/admin/sagas/steprecord/", "/admin/sagas/sagaevent/", "/admin/sagas/bulkaction/",
                 f"/admin/sagas/bulkaction/{job.pk}/change/"):
        browser.get(f"{server}{path}")
        wait(browser, lambda d: d.find_elements(By.ID, "content"))
        assert "Server Error" not in browser.title, path
        assert sideways_scroll(browser) == 0, path
        assert inner_sideways_scroll(browser) == 0, path  # nor the list's own box (the admin's .results)
        screenshot(browser, f"admin{path.replace('/', '-').rstrip('-')}-{width}.png")

    # The bulk confirmation, for every running saga of the list (its filter chosen, then "Select all").
    browser.get(f"{server}{LIST}?status__exact=running")
    browser.find_element(By.ID, "action-toggle").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("bulk_cancel")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
    # The confirmation's own heading (the list's actions say "Bulk" too); found afresh each poll, as the page changes.
    wait(browser, lambda d: d.find_elements(By.XPATH, "//div[@id='content']/h1[starts-with(., 'Bulk cancel')]"))
    assert sideways_scroll(browser) == 0
    screenshot(browser, f"admin-bulk-confirmation-{width}.png")
    assert BulkAction.objects.count() == 1  # a confirmation page, nothing started yet
