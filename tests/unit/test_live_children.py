"""Child sagas on the live page: a child names its parent and the step it works for, a parent's step names
its child, each with a link, and only for the types the page's user may read."""
import pytest
from django.urls import reverse

from sagas import ChildSaga, Saga, Step, pause, registry, start_saga
from sagas.engine import execute_step
from sagas.live import snapshot
from sagas.models import SagaInstance, SagaStatus

NESTED = "tests.nested"  # a, ChildSaga child (tests.three_steps), c
SECRET = "tests.live_secret"
SECRET_PARENT = "tests.live_secret_parent"


def url(saga):
    return reverse("admin:sagas_sagainstance_change", args=[saga.pk])


@pytest.fixture
def family(db, sent):
    """A tests.nested saga whose step ``child`` waits for its child (a tests.three_steps, pending)."""
    parent = start_saga(NESTED, input={})
    execute_step(parent.id, 0)
    execute_step(parent.id, 1)  # starts the child: the step waits for it
    return parent, SagaInstance.objects.get(parent=parent)


def rows(snap, section):
    return {row["id"]: row for row in snap[section]}


def test_a_child_in_flight_names_its_parent_and_the_step_it_works_for(family):
    parent, child = family

    row = rows(snapshot.build_snapshot(), "in_flight")[str(child.pk)]

    assert row["depth"] == 1
    assert row["parent"] == {"id": str(parent.pk), "short_id": parent.pk.hex[:8], "saga_type": NESTED,
                             "status": SagaStatus.RUNNING, "url": url(parent), "step": "child"}
    assert row["child"] is None


def test_a_parent_waiting_for_its_child_names_the_child_in_flight_and_among_waiting_steps(family):
    parent, child = family

    snap = snapshot.build_snapshot()

    in_flight = rows(snap, "in_flight")[str(parent.pk)]
    assert (in_flight["step"], in_flight["step_status"]) == ("child", "waiting")
    assert in_flight["child"] == {"id": str(child.pk), "short_id": child.pk.hex[:8], "saga_type": "tests.three_steps",
                                  "status": SagaStatus.PENDING, "url": url(child)}
    assert in_flight["parent"] is None and in_flight["depth"] == 0
    waiting = rows(snap, "waiting")[str(parent.pk)]
    assert (waiting["step"], waiting["child"]["id"]) == ("child", str(child.pk))
    assert "step_id" not in in_flight and "step_id" not in waiting


def test_a_parent_whose_undoing_waits_for_its_childs_names_the_child(db, sent):
    from sagas.engine import child_ended, execute_compensation

    parent = start_saga(NESTED, input={"fail": {"c": "permanent"}})
    execute_step(parent.id, 0)
    execute_step(parent.id, 1)
    child = SagaInstance.objects.get(parent=parent)
    for index in range(3):
        execute_step(child.id, index)
    child_ended(parent.id, child.id)
    execute_step(parent.id, 2)  # c refuses: the parent undoes its child as a whole
    execute_compensation(parent.id, 1)

    row = rows(snapshot.build_snapshot(), "in_flight")[str(parent.pk)]

    assert (row["status"], row["step"], row["step_status"]) == (SagaStatus.COMPENSATING, "child", "compensating")
    assert (row["child"]["id"], row["child"]["status"]) == (str(child.pk), SagaStatus.COMPENSATING)


def test_a_saga_with_no_child_names_none(db, sent):
    saga = start_saga("tests.three_steps", input={})

    row = rows(snapshot.build_snapshot(), "in_flight")[str(saga.pk)]

    assert (row["parent"], row["child"], row["depth"]) == (None, None, 0)


def test_a_failed_child_that_holds_its_parent_names_it_among_those_needing_a_person(family):
    parent, child = family
    SagaInstance.objects.filter(pk=child.pk).update(status=SagaStatus.FAILED, error="cannot undo b")

    snap = snapshot.build_snapshot()

    held = rows(snap, "needs_person")[str(child.pk)]
    assert (held["parent"]["id"], held["parent"]["step"]) == (str(parent.pk), "child")
    assert rows(snap, "in_flight")[str(parent.pk)]["child"]["status"] == SagaStatus.FAILED


def test_a_child_paused_with_its_parent_says_so(family):
    parent, child = family

    pause(parent, reason="audit")

    held = rows(snapshot.build_snapshot(), "needs_person")
    assert held[str(child.pk)]["error"].startswith("paused with its parent saga")
    assert held[str(child.pk)]["parent"]["id"] == str(parent.pk)
    assert held[str(parent.pk)]["error"].startswith("paused by a person")


def test_the_snapshot_costs_the_same_queries_however_many_children_it_shows(db, sent,
                                                                            django_assert_max_num_queries):
    for _ in range(5):
        parent = start_saga(NESTED, input={})
        execute_step(parent.id, 0)
        execute_step(parent.id, 1)

    with django_assert_max_num_queries(7):  # counts, in flight and its steps, waiting, two lists, the children
        snap = snapshot.build_snapshot()

    assert sum(1 for row in snap["in_flight"] if row["child"]) == 5
    assert sum(1 for row in snap["in_flight"] if row["parent"]) == 5


# --- who sees what ---------------------------------------------------------------------------------


@pytest.fixture
def secret_types():
    """A child type that needs a permission of its own, and a parent type that needs one and starts a child
    any operator may read."""
    registry.register(Saga(SECRET, steps=[Step("x", lambda ctx: None)], permission="testapp.change_call"))
    registry.register(Saga(SECRET_PARENT, steps=[ChildSaga("open", "tests.three_steps"), ChildSaga("hidden", SECRET)],
                           permission="testapp.change_call"))
    registry.register(Saga("tests.live_opens_secret", steps=[ChildSaga("hidden", SECRET)]))
    yield
    for name in (SECRET, SECRET_PARENT, "tests.live_opens_secret"):
        registry.unregister(name)


def test_a_child_whose_parent_the_user_may_not_read_is_shown_as_a_child_without_its_parent(db, sent, secret_types):
    parent = start_saga(SECRET_PARENT, input={})
    execute_step(parent.id, 0)
    child = SagaInstance.objects.get(parent=parent)

    snap = snapshot.build_snapshot(exclude=(SECRET, SECRET_PARENT))

    row = rows(snap, "in_flight")[str(child.pk)]
    assert (row["parent"], row["depth"]) == (None, 1)
    assert str(parent.pk) not in rows(snap, "in_flight")
    assert str(parent.pk) not in snapshot.snapshot_json(exclude=(SECRET, SECRET_PARENT))


def test_a_parent_whose_child_the_user_may_not_read_names_no_child(db, sent, secret_types):
    parent = start_saga("tests.live_opens_secret", input={})
    execute_step(parent.id, 0)
    child = SagaInstance.objects.get(parent=parent)

    hidden = snapshot.build_snapshot(exclude=(SECRET, SECRET_PARENT))
    shown = snapshot.build_snapshot()

    assert rows(hidden, "in_flight")[str(parent.pk)]["child"] is None
    assert str(child.pk) not in snapshot.snapshot_json(exclude=(SECRET, SECRET_PARENT))
    assert rows(shown, "in_flight")[str(parent.pk)]["child"]["id"] == str(child.pk)


def test_the_page_a_user_gets_leaves_out_the_parent_of_a_type_they_may_not_read(client, db, sent, secret_types):
    from tests.helpers import saga_user

    parent = start_saga(SECRET_PARENT, input={})
    execute_step(parent.id, 0)
    child = SagaInstance.objects.get(parent=parent)
    client.force_login(saga_user("operator", is_staff=True))

    page = client.get("/admin/sagas/live/").content.decode()

    assert str(child.pk) in page and str(parent.pk) not in page
