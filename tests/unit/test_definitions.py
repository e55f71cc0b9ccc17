import pytest

from sagas import Parallel, Retry, Saga, SagaDefinitionError, Step, UnknownSagaType
from sagas.definitions import Registry


def noop(ctx):
    return None


def test_valid_saga_registers_and_is_found_by_name_and_latest_version():
    registry = Registry()
    v1 = registry.register(Saga(name="travel.booking", steps=[Step("a", noop)]))
    v2 = registry.register(Saga(name="travel.booking", version=2, steps=[Step("a", noop), Step("b", noop)]))

    assert registry.get("travel.booking") is v2
    assert registry.get("travel.booking", 1) is v1
    assert "travel.booking" in registry
    assert len(registry) == 2


def test_registering_the_same_name_and_version_twice_is_an_error():
    registry = Registry()
    registry.register(Saga(name="dup", steps=[Step("a", noop)]))

    with pytest.raises(SagaDefinitionError, match="'dup' version 1 is already registered"):
        registry.register(Saga(name="dup", steps=[Step("a", noop)]))


def test_unknown_saga_type_names_it():
    with pytest.raises(UnknownSagaType, match="nope"):
        Registry().get("nope")
    registry = Registry()
    registry.register(Saga(name="x", steps=[Step("a", noop)]))
    with pytest.raises(UnknownSagaType, match="x v7"):
        registry.get("x", 7)


@pytest.mark.parametrize(
    "saga, message",
    [
        (Saga(name="empty", steps=[]), "'empty': a saga needs at least one step"),
        (Saga(name="twice", steps=[Step("a", noop), Step("a", noop)]), "'twice': duplicate step name 'a'"),
        (Saga(name="notcallable", steps=[Step("a", "book_hotel")]), "step 'a': action must be callable"),
        (Saga(name="badcomp", steps=[Step("a", noop, compensation=42)]), "step 'a': compensation must be callable"),
        (Saga(name="badtimeout", steps=[Step("a", noop, timeout=0)]), "step 'a': timeout must be a positive"),
        (Saga(name="badretry", steps=[Step("a", noop, retry=3)]), "step 'a': retry must be a Retry"),
        (Saga(name="badstepname", steps=[Step("has space", noop)]), "step name 'has space' is not a valid"),
        (Saga(name="notastep", steps=[noop]), "'notastep': <function noop"),
        (Saga(name="badversion", version=0, steps=[Step("a", noop)]), "version must be an int >= 1"),
        (Saga(name="", steps=[Step("a", noop)]), "saga name '' is not a valid identifier"),
        (Saga(name="par", steps=[Parallel("p", Step("a", noop))]), "Parallel\\('p'\\) is not supported"),
    ],
)
def test_bad_definitions_fail_at_registration_naming_saga_and_problem(saga, message):
    registry = Registry()
    with pytest.raises(SagaDefinitionError, match=message):
        registry.register(saga)
    assert len(registry) == 0


def test_retry_rejects_nonsense_policies():
    with pytest.raises(SagaDefinitionError, match="max_attempts"):
        Retry(max_attempts=0)
    with pytest.raises(SagaDefinitionError, match="backoff"):
        Retry(backoff=-1)


def test_backoff_doubles_from_the_base_and_is_capped():
    policy = Retry(max_attempts=10, backoff=0.2, max_backoff=1.0)

    assert [policy.delay_after(n) for n in range(1, 6)] == [0.2, 0.4, 0.8, 1.0, 1.0]


def test_max_attempts_counts_the_first_attempt():
    policy = Retry(max_attempts=3)

    assert [policy.allows_another(n) for n in range(1, 4)] == [True, True, False]
    assert Retry(max_attempts=1).allows_another(1) is False


def test_describe_lists_steps_with_their_policies():
    saga = Saga(name="d", steps=[Step("a", noop, compensation=noop, timeout=5), Step("b", noop)])

    described = saga.describe()

    assert [s["name"] for s in described["steps"]] == ["a", "b"]
    assert described["steps"][0]["timeout"] == 5
    assert described["steps"][1]["has_compensation"] is False
