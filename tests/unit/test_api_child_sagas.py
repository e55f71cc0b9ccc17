"""Child sagas in the API: ``parent`` and ``children`` on a saga, ``?parent=``, and a saga's tree."""
import uuid

import pytest
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from sagas import ChildSaga, Saga, Step, registry, start_saga
from sagas.api.views import saga_tree
from sagas.engine import execute_step
from sagas.models import SagaInstance
from tests.helpers import saga_user

SAGAS_URL = "/api/sagas/"
SECRET = "tests.api_secret_child"
WITH_SECRET = "tests.api_secret_parent"


def noop(ctx):
    return {"ok": True}


@pytest.fixture
def secret_types():
    """A child type that asks for a permission of its own, and a parent that starts one: registered for one
    test (a type with a permission narrows every list and analytics for users without it)."""
    registry.register(Saga(name=SECRET, steps=[Step("x", noop)], permission="testapp.change_call"))
    registry.register(Saga(name=WITH_SECRET, steps=[ChildSaga("open", "tests.three_steps"),
                                                     ChildSaga("hidden", SECRET)]))
    yield
    registry.unregister(SECRET)
    registry.unregister(WITH_SECRET)


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def user(db):
    return saga_user("operator")


@pytest.fixture
def api(user, sent):
    return client_for(user)


def start_child(saga, index):
    """Run the saga's step ``index``, a ChildSaga's: the child it starts."""
    execute_step(saga.id, index)
    return SagaInstance.objects.get(parent=saga, parent_step__index=index)


@pytest.fixture
def family(db, sent):
    """A root (``tests.recursive``), its child and its grandchild: each started by the step ``deeper``."""
    root = start_saga("tests.recursive")
    execute_step(root.id, 0)
    child = start_child(root, 1)
    execute_step(child.id, 0)
    grandchild = start_child(child, 1)
    return root, child, grandchild


def test_a_saga_shows_its_parent_its_step_its_depth_and_its_children(api, family):
    root, child, grandchild = family

    body = api.get(f"{SAGAS_URL}{child.pk}/").json()

    assert (body["parent"], body["parent_step"], body["depth"]) == (str(root.pk), "deeper", 1)
    assert body["children"] == [str(grandchild.pk)]
    top = api.get(f"{SAGAS_URL}{root.pk}/").json()
    assert (top["parent"], top["parent_step"], top["depth"], top["children"]) == (None, None, 0, [str(child.pk)])


def test_a_new_saga_has_no_parent_and_no_children(api):
    body = api.post(SAGAS_URL, {"saga_type": "tests.three_steps"}, format="json").json()

    assert (body["parent"], body["parent_step"], body["depth"], body["children"]) == (None, None, 0, [])


def test_the_list_shows_children_and_filters_by_parent(api, family):
    root, child, grandchild = family

    listed = api.get(SAGAS_URL, {"parent": str(root.pk)}).json()["results"]

    assert [s["id"] for s in listed] == [str(child.pk)]
    assert listed[0]["children"] == [str(grandchild.pk)]
    everyone = {s["id"]: s for s in api.get(SAGAS_URL).json()["results"]}
    assert everyone[str(root.pk)]["children"] == [str(child.pk)]
    assert api.get(SAGAS_URL, {"parent": str(uuid.uuid4())}).json()["results"] == []


def test_a_parent_that_is_not_an_id_is_a_field_error(api):
    response = api.get(SAGAS_URL, {"parent": "nope"})

    assert response.status_code == 400
    assert "parent" in response.json()


def test_root_true_lists_only_root_sagas_and_root_false_only_children(api, family):
    root, child, grandchild = family
    other = start_saga("tests.three_steps")

    roots = api.get(SAGAS_URL, {"root": "true"}).json()["results"]
    children = api.get(SAGAS_URL, {"root": "false"}).json()["results"]

    assert {s["id"] for s in roots} == {str(root.pk), str(other.pk)}
    assert {s["id"] for s in children} == {str(child.pk), str(grandchild.pk)}


def test_root_goes_with_the_other_filters(api, family):
    root, child, grandchild = family

    listed = api.get(SAGAS_URL, {"root": "false", "parent": str(child.pk)}).json()["results"]

    assert [s["id"] for s in listed] == [str(grandchild.pk)]
    assert api.get(SAGAS_URL, {"root": "true", "parent": str(root.pk)}).json()["results"] == []


@pytest.mark.parametrize("value", ["yes", "1", ""])
def test_a_root_filter_that_is_not_true_or_false_is_a_field_error(api, family, value):
    response = api.get(SAGAS_URL, {"root": value})

    assert response.status_code == 400
    assert "root" in response.json()


def test_analytics_split_roots_from_children_and_root_narrows_them(api, family):
    body = api.get("/api/analytics/").json()

    recursive = body["saga_types"][0]
    assert (recursive["total"], recursive["roots"], recursive["children"]) == (3, 1, 2)
    assert (body["overall"]["roots"], body["overall"]["children"]) == (1, 2)
    assert body["window"]["root"] is None
    children = api.get("/api/analytics/", {"root": "false"}).json()
    assert (children["overall"]["total"], children["overall"]["roots"], children["window"]["root"]) == (2, 0, False)
    assert {s["step"]: s["total"] for s in children["steps"]} == {"a": 2, "deeper": 2}
    roots = api.get("/api/analytics/", {"root": "true"}).json()
    assert (roots["overall"]["total"], roots["overall"]["children"], roots["window"]["root"]) == (1, 0, True)


def test_an_analytics_root_that_is_not_true_or_false_is_a_field_error(api):
    response = api.get("/api/analytics/", {"root": "maybe"})

    assert response.status_code == 400
    assert "root" in response.json()


def test_the_tree_of_a_root_saga_holds_all_of_it_in_one_call(api, family):
    root, child, grandchild = family

    response = api.get(f"{SAGAS_URL}{root.pk}/tree/")

    assert response.status_code == 200
    body = response.json()
    assert (body["nodes"], body["truncated"]) == (3, False)
    top = body["root"]
    assert (top["id"], top["saga_type"], top["status"], top["depth"], top["parent"]) == (
        str(root.pk), "tests.recursive", "running", 0, None)
    (middle,) = top["children"]
    assert (middle["id"], middle["parent"], middle["parent_step"], middle["depth"]) == (
        str(child.pk), str(root.pk), "deeper", 1)
    (bottom,) = middle["children"]
    assert (bottom["id"], bottom["status"], bottom["children"]) == (str(grandchild.pk), "pending", [])


def test_a_childs_tree_is_what_is_below_it(api, family):
    _, child, grandchild = family

    body = api.get(f"{SAGAS_URL}{child.pk}/tree/").json()

    assert body["root"]["id"] == str(child.pk) and body["nodes"] == 2
    assert [n["id"] for n in body["root"]["children"]] == [str(grandchild.pk)]


def test_a_tree_is_bounded_and_says_when_it_left_sagas_out(family):
    root, child, _ = family

    tree = saga_tree(saga_user("reader"), SagaInstance.objects.get(pk=root.pk), max_nodes=2)

    assert (tree["nodes"], tree["truncated"]) == (2, True)
    assert [n["id"] for n in tree["root"]["children"]] == [child.pk]
    assert tree["root"]["children"][0]["children"] == []


def test_a_tree_deeper_than_the_nesting_limit_is_cut_there(family, settings):
    root, child, _ = family
    settings.SAGAS_MAX_DEPTH = 1

    tree = saga_tree(saga_user("reader"), SagaInstance.objects.get(pk=root.pk))

    assert (tree["nodes"], tree["truncated"]) == (2, True)


def test_a_tree_leaves_out_the_children_a_user_may_not_read(db, sent, secret_types):
    parent = start_saga(WITH_SECRET)
    open_child = start_child(parent, 0)
    # Its second child, of a type that asks for a permission of its own (written here: it starts after the first).
    secret = SagaInstance.objects.create(saga_type=SECRET, parent=parent, depth=1)
    reader = client_for(saga_user("reader", permissions=("view_sagainstance",)))
    allowed_user = saga_user("allowed", permissions=("view_sagainstance",))
    allowed_user.user_permissions.add(Permission.objects.get(codename="change_call", content_type__app_label="testapp"))
    allowed = client_for(allowed_user)

    seen = reader.get(f"{SAGAS_URL}{parent.pk}/tree/").json()
    everything = allowed.get(f"{SAGAS_URL}{parent.pk}/tree/").json()

    assert [n["id"] for n in seen["root"]["children"]] == [str(open_child.pk)]
    assert seen["nodes"] == 2
    assert [n["id"] for n in everything["root"]["children"]] == [str(open_child.pk), str(secret.pk)]
    assert reader.get(f"{SAGAS_URL}{secret.pk}/tree/").status_code == 404
    assert allowed.get(f"{SAGAS_URL}{secret.pk}/tree/").status_code == 200


def test_whoever_started_a_root_may_read_its_whole_tree(db, sent):
    starter = saga_user("starter", permissions=("start_saga",))
    root = start_saga("tests.recursive", by=starter)
    execute_step(root.id, 0)
    child = start_child(root, 1)

    body = client_for(starter).get(f"{SAGAS_URL}{root.pk}/tree/").json()

    assert [n["id"] for n in body["root"]["children"]] == [str(child.pk)]
    assert SagaInstance.objects.get(pk=child.pk).started_by_id == starter.pk


def test_the_tree_of_an_unknown_saga_is_404(api):
    assert api.get(f"{SAGAS_URL}{uuid.uuid4()}/tree/").status_code == 404
    assert api.get(f"{SAGAS_URL}nope/tree/").status_code == 404


def test_the_tree_needs_authentication(db, family):
    root, _, _ = family
    assert APIClient().get(f"{SAGAS_URL}{root.pk}/tree/").status_code in (401, 403)


def test_the_schema_documents_the_tree_the_parent_filter_and_the_new_fields(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    tree = schema["paths"]["/api/sagas/{saga_id}/tree/"]["get"]
    assert set(tree["responses"]) == {"200", "404", "429"}
    assert tree["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/SagaTreeOutput")
    node = schema["components"]["schemas"]["SagaTreeNodeOutput"]["properties"]
    assert node["children"]["items"]["$ref"] == "#/components/schemas/SagaTreeNodeOutput"
    listed = {p["name"]: p for p in schema["paths"]["/api/sagas/"]["get"]["parameters"]}
    assert listed["parent"]["schema"]["format"] == "uuid"
    assert sorted(listed["root"]["schema"]["enum"]) == ["false", "true"] and "root sagas" in listed["root"]["description"]
    analytics = {p["name"]: p for p in schema["paths"]["/api/analytics/"]["get"]["parameters"]}
    assert sorted(analytics["root"]["schema"]["enum"]) == ["false", "true"]
    figures = schema["components"]["schemas"]["SagaStatsOutput"]["properties"]
    assert {"roots", "children"} <= set(figures)
    saga = schema["components"]["schemas"]["SagaInstanceOutput"]["properties"]
    assert {"parent", "parent_step", "depth", "children"} <= set(saga)
    assert saga["parent"]["nullable"] and saga["parent_step"]["nullable"]  # null for a root saga
    step = schema["components"]["schemas"]["StepDefinitionOutput"]["properties"]
    assert {"conditional", "child_saga"} <= set(step)


def test_saga_types_describe_their_child_sagas_and_conditions(api):
    types = {t["name"]: t for t in api.get("/api/saga-types/").json()}

    steps = {s["name"]: s for s in types["tests.nested_timeout"]["steps"]}
    assert steps["child"]["child_saga"] == {"saga_type": "tests.three_steps", "version": None, "timeout": 1.0}
    assert steps["a"]["child_saga"] is None
    assert [s["conditional"] for s in types["tests.conditional"]["steps"]] == [False, True, True, True, True]
