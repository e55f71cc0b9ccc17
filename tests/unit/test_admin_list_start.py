"""The saga list's status chips, and starting a saga from the admin through the engine."""
import re

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from corporate import fixtures
from corporate.sagas import EMPLOYEE_ONBOARDING, REHEARSAL_VERSIONS
from sagas import Saga, Step, registry, start_saga
from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord
from tests.helpers import saga_user

SAGA = "tests.three_steps"
SECRET = "tests.secret_start"  # a type with its own permission
CHANGELIST = reverse("admin:sagas_sagainstance_changelist")
START = reverse("admin:sagas_sagainstance_start")


@pytest.fixture(autouse=True)
def secret_type():
    registry.register(Saga(SECRET, steps=[Step("a", lambda ctx: None)], permission="testapp.change_call"))
    yield
    registry.unregister(SECRET)


def chips(page: str) -> dict[str, int]:
    """Status (or "" for all) -> the count its chip shows."""
    return {status: int(count) for status, count in re.findall(
        r'data-status="([a-z]*)"[^>]*>\s*[^<]*<span class="count">(\d+)</span>', page)}


def make(status, saga_type=SAGA, **fields):
    return SagaInstance.objects.create(saga_type=saga_type, status=status, input={}, **fields)


def staff(client, username, permissions, *, type_permission=False):
    user = saga_user(username, permissions, is_staff=True)
    if type_permission:
        user.user_permissions.add(Permission.objects.get(codename="change_call", content_type__app_label="testapp"))
    client.force_login(user)
    return user


# --- chips ---------------------------------------------------------------------------------------------


def test_chips_count_the_sagas_in_each_status(admin_client, db):
    for status in (SagaStatus.RUNNING, SagaStatus.RUNNING, SagaStatus.FAILED):
        make(status)

    counts = chips(admin_client.get(CHANGELIST).content.decode())

    assert counts[""] == 3 and counts["running"] == 2 and counts["failed"] == 1 and counts["succeeded"] == 0
    assert set(counts) == {"", *SagaStatus.values}


def test_a_chip_filters_the_list_and_is_marked_as_the_one_chosen(admin_client, db):
    running, failed = make(SagaStatus.RUNNING), make(SagaStatus.FAILED)
    page = admin_client.get(CHANGELIST).content.decode()
    url = re.search(r'<a href="([^"]+)" data-status="failed"', page).group(1).replace("&amp;", "&")

    filtered = admin_client.get(CHANGELIST + url).content.decode()

    assert failed.pk.hex[:8] in filtered and running.pk.hex[:8] not in filtered
    assert re.search(r'data-status="failed" class="active', filtered)
    assert chips(filtered)["running"] == 1  # the chips still count every status


def test_chips_count_only_what_the_user_may_read(client, db):
    user = staff(client, "viewer", ["view_sagainstance"])
    make(SagaStatus.RUNNING)
    make(SagaStatus.RUNNING, saga_type=SECRET)  # needs a permission the user lacks
    own_secret = make(SagaStatus.FAILED, saga_type=SECRET, started_by=user)  # their own: still the type's rule

    counts = chips(client.get(CHANGELIST).content.decode())

    assert counts[""] == 1 and counts["running"] == 1 and counts["failed"] == 0
    assert own_secret.pk  # never counted without the type's permission


def test_chips_keep_the_lists_other_filters(admin_client, db):
    make(SagaStatus.RUNNING)
    make(SagaStatus.RUNNING, saga_type="tests.parallel")

    counts = chips(admin_client.get(CHANGELIST, {"saga_type": "tests.parallel"}).content.decode())

    assert counts[""] == 1 and counts["running"] == 1


# --- starting ------------------------------------------------------------------------------------------


def test_the_list_offers_the_start_page_only_to_who_may_start(client, db):
    staff(client, "viewer", ["view_sagainstance"])

    assert "Start a saga" not in client.get(CHANGELIST).content.decode()
    assert client.get(START).status_code == 403


def test_the_start_page_lists_the_types_and_marks_rehearsals(admin_client, db):
    page = admin_client.get(START).content.decode()

    version = REHEARSAL_VERSIONS[EMPLOYEE_ONBOARDING]
    assert f"{EMPLOYEE_ONBOARDING} version {version} (rehearsal" in page
    assert f"{EMPLOYEE_ONBOARDING} version {registry.get(EMPLOYEE_ONBOARDING).version} (latest)" in page
    assert "Start a saga" in admin_client.get(CHANGELIST).content.decode()


def test_the_form_has_a_field_per_input_field_with_the_rows_to_pick(admin_client, db):
    department = fixtures.department()

    page = admin_client.get(START, {"type": EMPLOYEE_ONBOARDING}).content.decode()

    for name in ("name", "email", "department", "salary", "role", "laptop_model", "floor"):
        assert f'name="{name}"' in page
    assert f'<option value="{department.pk}">{department.pk}: {department}</option>' in page


def test_a_good_form_starts_the_saga_through_the_engine_as_the_user(client, db, sent,
                                                                    django_capture_on_commit_callbacks):
    user = staff(client, "starter", ["view_sagainstance", "start_saga"])
    department = fixtures.department()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(START, {"type": f"{EMPLOYEE_ONBOARDING}:5", "name": "Ann Lee",
                                       "email": "ann@corp.example", "department": str(department.pk),
                                       "salary": "60000", "floor": ""})

    saga = SagaInstance.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("admin:sagas_sagainstance_change",
                                                                             args=[saga.pk])
    assert saga.started_by == user and saga.version == 5
    assert saga.input["department"] == department.pk and saga.input["salary"] == "60000.00"
    assert SagaEvent.objects.get(saga=saga, kind=EventKind.SAGA_CREATED).detail["by"] == "starter"
    assert sent == [("forward", saga.pk, 0)]


def test_a_bad_form_shows_each_fields_error_and_starts_nothing(client, db, sent):
    staff(client, "starter", ["view_sagainstance", "start_saga"])

    response = client.post(START, {"type": EMPLOYEE_ONBOARDING, "name": "", "email": "nobody", "salary": "-5"})

    page = response.content.decode()
    assert response.status_code == 400
    for field in ("name", "email", "department", "salary"):
        assert f'id="errors-{field}"' in page
    assert "greater than or equal to 0.01" in page
    assert 'value="-5"' in page  # what was typed stays
    assert not SagaInstance.objects.exists() and not StepRecord.objects.exists() and sent == []


def test_a_type_whose_permission_the_user_lacks_is_neither_listed_nor_started(client, db, sent):
    staff(client, "starter", ["view_sagainstance", "start_saga"])

    assert SECRET not in client.get(START).content.decode()
    assert client.post(START, {"type": SECRET, "input": "{}"}).status_code == 403
    assert not SagaInstance.objects.exists()


def test_with_the_types_permission_it_starts(client, db, sent):
    staff(client, "starter", ["view_sagainstance", "start_saga"], type_permission=True)

    response = client.post(START, {"type": SECRET, "input": '{"note": "by hand"}'})

    assert response.status_code == 302
    assert SagaInstance.objects.get(saga_type=SECRET).input == {"note": "by hand"}


@pytest.mark.parametrize("text, error", [("{not json", "not JSON"), ("[1, 2]", "must be a JSON object")])
def test_a_type_without_fields_takes_a_json_object_and_says_what_is_wrong(admin_client, db, sent, text, error):
    response = admin_client.post(START, {"type": SAGA, "input": text})

    assert response.status_code == 400 and error in response.content.decode()
    assert not SagaInstance.objects.exists()


def test_a_start_from_the_form_is_what_python_would_store(admin_client, db, sent):
    department = fixtures.department()
    typed = {"name": "Bo", "email": "bo@corp.example", "department": str(department.pk), "salary": "70000.5"}

    admin_client.post(START, {"type": EMPLOYEE_ONBOARDING, **typed})
    by_python = start_saga(EMPLOYEE_ONBOARDING, input={**typed, "email": "bo2@corp.example"})

    from_form = SagaInstance.objects.exclude(pk=by_python.pk).get()
    assert {**from_form.input, "email": "-"} == {**by_python.input, "email": "-"}


def test_a_yes_no_field_is_a_tick_box_that_keeps_what_was_chosen(admin_client, db, sent):
    service = fixtures.service(live_version="1.0.0")
    page = admin_client.get(START, {"type": "corporate.system_deployment"}).content.decode()
    assert re.search(r'<input type="checkbox" name="tests_pass"[^>]*checked', page)  # its default: yes

    response = admin_client.post(START, {"type": "corporate.system_deployment", "service": str(service.pk),
                                         "version": "1.0.0", "healthy": "on"})  # tests_pass left unticked

    page = response.content.decode()
    assert response.status_code == 400 and "already live" in page
    assert not re.search(r'<input type="checkbox" name="tests_pass"[^>]*checked', page)
    assert re.search(r'<input type="checkbox" name="healthy"[^>]*checked', page)
