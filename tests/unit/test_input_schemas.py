"""Each saga type's input as JSON Schema, generated from its serializer: in /api/saga-types/ and the API schema."""
import json

import jsonschema
import pytest
from rest_framework import serializers
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from corporate import fixtures
from corporate.fixtures import Inputs
from corporate.sagas import (BUDGET_APPROVAL, EMPLOYEE_ONBOARDING, ORDER_FULFILLMENT, REHEARSAL_VERSIONS,
                             SAGA_TYPES, SYSTEM_DEPLOYMENT)
from sagas import Saga, Step, registry
from sagas.input_schemas import MAX_LISTED_IDS, example_input, input_schema
from sagas.models import SagaInstance
from tests.helpers import saga_user

TYPES_URL = "/api/saga-types/"
# The fields each corporate type's latest version takes, required ones first, and the rows it names.
FIELDS = {
    EMPLOYEE_ONBOARDING: ({"name", "email", "department", "salary"}, {"role", "reference", "laptop_model", "floor"}),
    ORDER_FULFILLMENT: ({"customer", "product", "quantity", "ship_to"}, {"reference"}),
    BUDGET_APPROVAL: ({"department", "amount", "purpose"}, {"reference", "executive_threshold"}),
    SYSTEM_DEPLOYMENT: ({"service", "version"}, {"tests_pass", "healthy", "reference"}),
}
ROWS = {EMPLOYEE_ONBOARDING: {"department"}, ORDER_FULFILLMENT: {"customer", "product"},
        BUDGET_APPROVAL: {"department"}, SYSTEM_DEPLOYMENT: {"service"}}


def client_of(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


@pytest.fixture
def rows(db):
    """Two of each row the corporate inputs name."""
    made = {"department": [fixtures.department() for _ in range(2)], "customer": [fixtures.customer() for _ in range(2)],
            "product": [fixtures.product() for _ in range(2)], "service": [fixtures.service() for _ in range(2)]}
    return {kind: sorted(row.pk for row in made[kind]) for kind in made}


@pytest.fixture
def starter(db):
    return saga_user("starter")


def types_answer(user) -> list[dict]:
    response = client_of(user).get(TYPES_URL)
    assert response.status_code == 200
    return response.json()


def latest_of(answer: list[dict], name: str) -> dict:
    return max((t for t in answer if t["name"] == name), key=lambda t: t["version"])


def openapi(user=None) -> dict:
    client = client_of(user) if user else APIClient()
    return client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()


@pytest.mark.parametrize("saga_type", SAGA_TYPES)
def test_each_corporate_type_lists_its_fields_and_the_ids_of_its_rows(rows, starter, saga_type):
    schema = latest_of(types_answer(starter), saga_type)["input_schema"]

    required, optional = FIELDS[saga_type]
    assert set(schema["required"]) == required
    assert set(schema["properties"]) == required | optional
    assert schema["additionalProperties"] is False
    for field in ROWS[saga_type]:
        assert schema["properties"][field]["enum"] == rows[field]
        assert schema["properties"][field]["type"] == "integer"


@pytest.mark.parametrize("saga_type", SAGA_TYPES)
def test_each_corporate_type_example_is_valid_for_its_serializer_and_its_schema(rows, starter, saga_type):
    described = latest_of(types_answer(starter), saga_type)
    example = described["input_example"]

    assert described["input_schema"]["examples"] == [example]
    jsonschema.validate(example, described["input_schema"])
    serializer = registry.get(saga_type).input_schema(data=example)
    assert serializer.is_valid(), serializer.errors
    for field in ROWS[saga_type]:
        assert example[field] == rows[field][0]


def test_the_example_starts_a_saga_through_the_api(rows, starter, sent):
    example = latest_of(types_answer(starter), ORDER_FULFILLMENT)["input_example"]

    response = client_of(starter).post("/api/sagas/", {"saga_type": ORDER_FULFILLMENT, "input": example},
                                       format="json")

    assert response.status_code == 202, response.json()
    assert SagaInstance.objects.get().input["customer"] == rows["customer"][0]


def test_bad_input_still_answers_400_with_its_field_errors(rows, starter, sent):
    bad = {**Inputs.onboarding(), "salary": "0", "email": "nobody"}

    response = client_of(starter).post("/api/sagas/", {"saga_type": EMPLOYEE_ONBOARDING, "input": bad}, format="json")

    assert response.status_code == 400
    assert set(response.json()["input"]) == {"salary", "email"}
    assert not SagaInstance.objects.exists()


def test_ids_are_listed_only_to_a_user_who_may_start_the_type(rows):
    viewer = saga_user("viewer", ["view_sagainstance"])

    department = latest_of(types_answer(viewer), BUDGET_APPROVAL)["input_schema"]["properties"]["department"]

    assert "enum" not in department
    assert department["type"] == "integer" and "department" in department["description"]
    assert "enum" not in openapi()["components"]["schemas"]["CorporateBudgetApprovalInput"]["properties"][
        "department"]  # the schema is public: nobody's ids


def test_ids_past_the_listed_limit_are_described_not_listed(db, starter, monkeypatch):
    monkeypatch.setattr("sagas.input_schemas.MAX_LISTED_IDS", 2)
    for _ in range(3):
        fixtures.service()

    service = latest_of(types_answer(starter), SYSTEM_DEPLOYMENT)["input_schema"]["properties"]["service"]

    assert "enum" not in service and "existing service" in service["description"]
    assert MAX_LISTED_IDS >= 100  # the real limit lists a usual reference table whole


@pytest.mark.parametrize("value, valid", [
    ("0.01", True), ("5000", True), ("123456789012.99", True), (".5", True), ("0.10", True),
    ("0", False), ("0.00", False), ("-1", False), ("1.234", False), ("1234567890123", False), ("", False),
    ("12a", False), (" 5", False),
])
def test_an_amount_matches_the_schema_only_when_the_serializer_takes_it(rows, starter, value, valid):
    schema = latest_of(types_answer(starter), BUDGET_APPROVAL)["input_schema"]
    data = {**Inputs.budget(), "amount": value, "department": rows["department"][0]}

    matches = jsonschema.Draft202012Validator(schema).is_valid(data)

    assert matches is valid
    if matches:
        assert registry.get(BUDGET_APPROVAL).input_schema(data=data).is_valid()


@pytest.mark.parametrize("name, valid", [("Ann", True), (" Ann ", True), ("", False), ("   ", False),
                                         ("\x1f", False), ("a\x00b", False)])
def test_text_the_serializer_calls_blank_or_that_holds_nul_does_not_match(rows, starter, name, valid):
    schema = latest_of(types_answer(starter), EMPLOYEE_ONBOARDING)["input_schema"]

    data = {**Inputs.onboarding(), "name": name, "department": rows["department"][0]}

    assert jsonschema.Draft202012Validator(schema).is_valid(data) is valid


def test_a_retired_field_is_forbidden_by_the_schema_and_refused_by_the_serializer(rows, starter, sent):
    schema = latest_of(types_answer(starter), BUDGET_APPROVAL)["input_schema"]
    data = {**Inputs.budget(), "executive_threshold": "249999", "department": rows["department"][0]}

    assert schema["properties"]["executive_threshold"]["deprecated"] is True
    assert not jsonschema.Draft202012Validator(schema).is_valid(data)
    response = client_of(starter).post("/api/sagas/", {"saga_type": BUDGET_APPROVAL, "input": data}, format="json")
    assert response.status_code == 400 and "by finance" in response.json()["input"]["executive_threshold"][0]


def test_rehearsal_versions_say_so(starter):
    answer = types_answer(starter)

    rehearsals = {(t["name"], t["version"]) for t in answer if t["rehearsal"]}
    assert set(REHEARSAL_VERSIONS.items()) <= rehearsals
    assert all(t["version"] != max(u["version"] for u in answer if u["name"] == t["name"])
               for t in answer if t["rehearsal"])  # never the latest: a start without a version never drills


def test_the_start_body_is_one_schema_per_type_discriminated_by_saga_type(rows, starter):
    doc = openapi(starter)
    body = doc["paths"]["/api/sagas/"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    components = doc["components"]["schemas"]

    mapping = body["discriminator"]["mapping"]
    assert body["discriminator"]["propertyName"] == "saga_type"
    assert sorted(mapping) == sorted({d.name for d in registry})
    assert [{"$ref": ref} for ref in mapping.values()] == body["oneOf"]
    onboarding = components["CorporateEmployeeOnboardingStart"]
    assert onboarding["properties"]["input"] == {"$ref": "#/components/schemas/CorporateEmployeeOnboardingInput"}
    assert onboarding["required"] == ["saga_type", "input"]
    latest = registry.get(EMPLOYEE_ONBOARDING)
    same_input = sorted((d.version for d in registry if d.name == latest.name
                         and d.input_schema is latest.input_schema), reverse=True)
    others = [d.version for d in registry if d.name == latest.name and d.version not in same_input]
    assert onboarding["properties"]["version"]["enum"] == same_input  # those taking this input
    assert others and all(str(v) in onboarding["properties"]["version"]["description"] for v in others)
    rehearsal = REHEARSAL_VERSIONS[EMPLOYEE_ONBOARDING]
    assert onboarding["x-rehearsal-versions"] == [
        v for v in same_input if registry.get(EMPLOYEE_ONBOARDING, v).rehearsal]
    assert rehearsal in onboarding["x-rehearsal-versions"]
    assert f"{rehearsal} (a rehearsal" in onboarding["properties"]["version"]["description"]
    department = components["CorporateEmployeeOnboardingInput"]["properties"]["department"]
    assert department["enum"] == rows["department"]


def test_no_component_of_the_schema_is_left_unreferenced(rows, starter):
    doc = openapi(starter)
    text = json.dumps(doc)

    unused = [name for name in doc["components"]["schemas"] if f'"#/components/schemas/{name}"' not in text]
    assert unused == []


@pytest.mark.parametrize("saga_type", SAGA_TYPES)
def test_each_type_in_the_api_schema_has_an_example_its_serializer_accepts(rows, starter, saga_type):
    components = openapi(starter)["components"]["schemas"]
    start = next(c for c in components.values()
                 if c.get("properties", {}).get("saga_type", {}).get("enum") == [saga_type])

    example = start["example"]
    assert example["saga_type"] == saga_type
    assert registry.get(saga_type).input_schema(data=example["input"]).is_valid()


class EveryKind(serializers.Serializer):
    colour = serializers.ChoiceField(choices=["red", "blue"])
    count = serializers.IntegerField(min_value=2, max_value=9)
    ratio = serializers.FloatField(required=False)
    when = serializers.DateField(required=False)
    tags = serializers.ListField(child=serializers.CharField(), required=False)
    note = serializers.CharField(allow_null=True, required=False)
    slug = serializers.SlugField()
    active = serializers.BooleanField(default=False)


def test_other_field_kinds_map_to_their_json_schema_and_the_example_validates(db):
    definition = Saga("tests.every_kind", steps=[Step("a", lambda ctx: None)], input_schema=EveryKind)

    schema = input_schema(definition)
    example = example_input(definition)

    properties = schema["properties"]
    assert properties["colour"] == {"enum": ["red", "blue"]}
    assert properties["count"] == {"type": "integer", "minimum": 2, "maximum": 9}
    assert properties["when"]["format"] == "date" and properties["tags"]["type"] == "array"
    assert properties["note"]["type"] == ["string", "null"]
    assert properties["active"] == {"type": "boolean", "default": False}
    jsonschema.validate(example, schema)
    assert EveryKind(data=example).is_valid(), EveryKind(data=example).errors
    assert input_schema(definition, openapi=True)["properties"]["note"]["nullable"] is True


def test_a_type_without_a_serializer_takes_any_object(db):
    schema = input_schema(registry.get("tests.three_steps"))

    assert schema["type"] == "object" and "properties" not in schema
