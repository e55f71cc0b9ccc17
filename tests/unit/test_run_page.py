"""A saga's run page in the admin (``sagas.run_page``): its shape, its steps, its times, what each viewer sees."""
import re

import pytest
from django.urls import reverse

from sagas import fail_step, start_saga
from sagas.access import MASK
from sagas.engine import execute_step
from sagas.models import SagaInstance
from tests.helpers import saga_user


def page_of(client, saga) -> str:
    response = client.get(reverse("admin:sagas_sagainstance_change", args=[saga.pk]))
    assert response.status_code == 200
    return response.content.decode()


def section(page: str, name: str) -> str:
    return re.search(rf'<section class="{name}">.*?</section>', page, re.S).group(0)


def test_the_graph_shows_stages_left_to_right_a_parallels_members_stacked_and_a_child_linked(admin_client, sent):
    saga = start_saga("tests.nested_parallel", input={})
    for index in (0, 1, 2):  # a, then kid (starts its child) and b2
        execute_step(saga.id, index)
    child = SagaInstance.objects.get(parent=saga)

    shape = section(page_of(admin_client, saga), "run-shape")

    stages = re.findall(r'<div class="graph-stage[^"]*" data-stage="\d+"( data-group="(\w+)")?>(.*?)</div>\s*'
                        r'(?=<div class="graph-edge|</div>\s*</section>)', shape, re.S)
    assert [(group, re.findall(r'data-step="(\w+)"', body)) for _, group, body in stages] == [
        ("", ["a"]), ("fan", ["kid", "b2"]), ("", ["c"])]
    assert reverse("admin:sagas_sagainstance_change", args=[child.pk]) in shape


def test_a_child_saga_is_a_bar_on_the_timeline_linking_to_it(admin_client, sent):
    saga = start_saga("tests.nested", input={})
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)
    child = SagaInstance.objects.get(parent=saga)

    timeline = section(page_of(admin_client, saga), "run-timeline")

    url = reverse("admin:sagas_sagainstance_change", args=[child.pk])
    assert re.search(rf'<a class="bar bar-child outcome-pending"[^>]*href="{url}"', timeline)
    assert f"{child.pk.hex[:8]} tests.three_steps" in timeline  # its row's label


def test_every_time_on_the_page_is_one_time_element_in_utc(admin_client, sent):
    saga = start_saga("tests.pivoted_gate", input={})
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)  # waits, with a deadline: a time in its event's sentence and in its form

    page = page_of(admin_client, saga)

    run = re.search(r'<div id="content-main" class="run-page".*?<script>', page, re.S).group(0)
    times = re.findall(r'<time class="when" datetime="([^"]+)" title="([^"]+)">([^<]+)</time>', run)
    assert len(times) >= 10  # created, started, steps' starts and attempts, the wait's start and deadline, events
    assert any("until <time" in sentence for sentence in re.findall(r"<td>(.*?)</td>", run))
    for iso, title, text in times:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", iso)
        assert title == text and text.endswith(" UTC")
    outside = re.sub(r"<time .*?</time>|<[^>]+>", " ", run)
    assert not re.search(r"\d\d:\d\d:\d\d", outside)  # no other time format anywhere on the page


def test_each_step_shows_what_it_saw_its_output_and_who_signalled_it(admin_client, sent):
    saga = start_saga("tests.pivoted_gate", input={"note": "from the test"})
    for index in range(2):
        execute_step(saga.id, index)
    waiting = saga.steps.get(status="waiting")
    fail_step(saga, waiting.name, error="not this quarter", by=saga_user("boss"))

    steps = section(page_of(admin_client, saga), "run-steps")

    gate = re.search(rf'<details class="step" id="step-{waiting.index}".*?</details>\s*</div>\s*</details>',
                     steps, re.S).group(0)
    assert "Input: what its action saw" in gate and "from the test" in gate
    assert "User boss (id" in gate and "not this quarter" in gate  # who signalled it, and how


def test_a_viewer_without_the_sensitive_permission_sees_steps_errors_and_sentences_masked(client, db, sent):
    from corporate.fixtures import Inputs

    data = Inputs.onboarding(salary="123456")
    saga = start_saga("corporate.employee_onboarding", input=data)
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)  # the contract goes out to the e-mail address, then waits
    fail_step(saga, "contract_signature", error=f"{data['email']} declined the offer")
    client.force_login(saga_user("viewer", ["view_sagainstance"], is_staff=True))

    page = page_of(client, saga)

    assert data["email"] not in page and "123456" not in page
    assert f"{MASK} declined the offer" in page
    assert f"&quot;salary&quot;: &quot;{MASK}&quot;" in section(page, "run-steps")


def test_a_healthy_step_without_a_compensation_is_not_flagged(admin_client, sent):
    from sagas import Saga, Step, registry

    registry.register(Saga("tests.calm", steps=[Step("notify", lambda ctx: {"sent": True})]))
    try:
        saga = start_saga("tests.calm", input={})
        execute_step(saga.id, 0)
        steps = section(page_of(admin_client, saga), "run-steps")
    finally:
        registry.unregister("tests.calm")

    compensation = re.search(r'<p class="step-compensation">(.*?)</p>', steps, re.S).group(1)
    assert compensation == "none (left as is if the saga is undone)"
    assert "step-error" not in steps and "#ba2121" not in steps


@pytest.mark.parametrize("status, names", [("succeeded", {"Resubmit"}), ("running", {"Cancel", "Pause"})])
def test_the_header_holds_the_status_and_the_buttons_that_apply(admin_client, sent, status, names):
    saga = start_saga("tests.three_steps", input={})
    if status == "succeeded":
        for index in range(3):
            execute_step(saga.id, index)
    else:
        execute_step(saga.id, 0)

    header = re.search(r'<header class="run-header">.*?</header>', page_of(admin_client, saga), re.S).group(0)

    assert f">{status}</span>" in header and "tests.three_steps" in header
    assert set(re.findall(r'<button type="submit">(.*?)</button>', header)) == names


@pytest.mark.parametrize("saga_type", ["tests.three_steps", "tests.long_line"])  # 3 steps, 45 steps
def test_the_page_reads_the_same_few_queries_however_many_steps(admin_client, sent, saga_type,
                                                                django_assert_max_num_queries):
    saga = start_saga(saga_type, input={})
    for index in range(saga.steps.count()):
        execute_step(saga.id, index)
    page_of(admin_client, saga)  # the session and user are cached from here on, as in a browser

    with django_assert_max_num_queries(11):
        page_of(admin_client, saga)
