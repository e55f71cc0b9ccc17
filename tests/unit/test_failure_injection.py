"""Failure injection: the master switch, rule lookup, run-time rules, seeded decisions."""
import uuid

import pytest

from corporate import services
from sagas import PermanentError, failure_injection
from sagas.definitions import StepContext
from sagas.failure_injection import InjectedFailure, InjectedPermanentFailure, Rates, decide, maybe_fail, rates_for

SAGA = "corporate.order_fulfillment"


@pytest.fixture(autouse=True)
def fresh_cache():
    failure_injection.clear_cache()
    yield
    failure_injection.clear_cache()


@pytest.fixture
def injecting(settings):
    """Injection switched on with the given settings rules (no run-time rows unless a test writes them)."""
    def configure(rules=None, enabled=True):
        settings.SAGAS_FAILURE_INJECTION_ENABLED = enabled
        settings.SAGAS_FAILURE_INJECTION = rules or {}
        failure_injection.clear_cache()
    return configure


def context(*, attempt=1, step="charge_payment", data=None) -> StepContext:
    return StepContext(saga_id=uuid.uuid4(), saga_type=SAGA, input=data if data is not None else {"n": 1},
                       results={}, step=step, attempt=attempt, idempotency_key="k")


def test_switch_follows_debug_when_not_set(settings):
    if hasattr(settings, "SAGAS_FAILURE_INJECTION_ENABLED"):
        del settings.SAGAS_FAILURE_INJECTION_ENABLED
    settings.DEBUG = True
    assert failure_injection.is_enabled()
    settings.DEBUG = False
    assert not failure_injection.is_enabled()


def test_production_settings_never_inject_even_with_rules(db, settings):
    if hasattr(settings, "SAGAS_FAILURE_INJECTION_ENABLED"):
        del settings.SAGAS_FAILURE_INJECTION_ENABLED
    settings.DEBUG = False
    settings.SAGAS_FAILURE_INJECTION = {"*": {"*": {"permanent": 1.0}}}
    services.failure_rule_set(saga_type=SAGA, permanent=1.0)
    maybe_fail(SAGA, "charge_payment", "action")  # nothing raised


def test_explicit_switch_off_wins_over_debug(injecting, settings):
    injecting({"*": {"*": {"permanent": 1.0}}}, enabled=False)
    settings.DEBUG = True
    maybe_fail(SAGA, "charge_payment", "action")


def test_certain_permanent_failure_is_a_permanent_error(db, injecting):
    injecting({SAGA: {"charge_payment": {"permanent": 1.0}}})
    with pytest.raises(InjectedPermanentFailure) as caught:
        maybe_fail(SAGA, "charge_payment", "action")
    assert isinstance(caught.value, PermanentError)


def test_certain_transient_failure_is_an_ordinary_error(db, injecting):
    injecting({SAGA: {"*": {"transient": 1.0}}})
    with pytest.raises(InjectedFailure) as caught:
        maybe_fail(SAGA, "reserve_stock", "action")
    assert not isinstance(caught.value, PermanentError)


def test_compensations_are_never_failed_on_purpose(db, injecting):
    injecting({"*": {"*": {"permanent": 1.0}}})
    maybe_fail(SAGA, "charge_payment", "compensation")


def test_most_specific_rule_wins():
    rules = {
        "*": {"*": {"transient": 0.1}, "charge_payment": {"transient": 0.2}},
        SAGA: {"*": {"transient": 0.3}, "charge_payment": {"transient": 0.4}},
    }
    assert rates_for(SAGA, "charge_payment", rules).transient == 0.4
    assert rates_for(SAGA, "reserve_stock", rules).transient == 0.3
    assert rates_for("other", "charge_payment", rules).transient == 0.2
    assert rates_for("other", "other", rules).transient == 0.1
    assert not rates_for("other", "other", {})


def test_stored_rules_reach_the_hook_and_override_settings(db, injecting):
    injecting({SAGA: {"charge_payment": {"permanent": 1.0}}})
    services.failure_rule_set(saga_type=SAGA, step="charge_payment", transient=1.0)
    failure_injection.clear_cache()

    assert rates_for(SAGA, "charge_payment") == Rates(transient=1.0, permanent=0.0)
    with pytest.raises(InjectedFailure):
        maybe_fail(SAGA, "charge_payment", "action")


def test_rules_are_cached_briefly(db, injecting, settings):
    injecting()
    settings.SAGAS_FAILURE_INJECTION_CACHE_SECONDS = 60
    assert not rates_for(SAGA, "charge_payment")
    services.failure_rule_set(saga_type=SAGA, permanent=1.0)
    assert not rates_for(SAGA, "charge_payment")  # still the cached answer
    failure_injection.clear_cache()
    assert rates_for(SAGA, "charge_payment").permanent == 1.0


def test_removing_the_demo_rules_leaves_other_rules(db):
    services.failure_rule_set(saga_type=SAGA, permanent=0.5, note="saga_demo")
    services.failure_rule_set(saga_type="*", transient=0.1, note="staging")
    assert services.failure_rules_clear(note="saga_demo") == 1
    assert failure_injection_rows() == [("*", "*")]


def failure_injection_rows():
    from corporate.models import FailureInjectionRule

    return list(FailureInjectionRule.objects.values_list("saga_type", "step"))


def test_seeded_decision_is_the_same_every_time_for_the_same_saga_step_and_attempt():
    rates = Rates(transient=0.3, permanent=0.3, seed=42)
    first = [decide(rates, context(attempt=a, data={"reference": f"r{n}"})) for n in range(50) for a in (1, 2)]
    again = [decide(rates, context(attempt=a, data={"reference": f"r{n}"})) for n in range(50) for a in (1, 2)]
    assert first == again
    assert {None, "transient", "permanent"} == set(first)


def test_seeded_decision_changes_with_the_seed():
    contexts = [context(data={"reference": f"r{n}"}) for n in range(200)]
    one = [decide(Rates(permanent=0.5, seed=1), c) for c in contexts]
    two = [decide(Rates(permanent=0.5, seed=2), c) for c in contexts]
    assert one != two


def test_seeded_decisions_follow_the_rates():
    rates = Rates(transient=0.2, permanent=0.1, seed=7)
    outcomes = [decide(rates, context(data={"reference": f"r{n}"})) for n in range(5000)]
    assert 0.17 < outcomes.count("transient") / 5000 < 0.23
    assert 0.07 < outcomes.count("permanent") / 5000 < 0.13


def test_reference_names_the_saga_so_other_input_may_differ():
    rates = Rates(permanent=0.5, seed=3)
    decisions = {decide(rates, context(data={"reference": "order-1", "stamp": n})) for n in range(30)}
    assert len(decisions) == 1


def test_seeded_hook_with_context_reproduces_the_decision(db, injecting):
    injecting({SAGA: {"*": {"permanent": 0.5, "seed": 11}}})
    ctx_fails = next(c for c in (context(data={"reference": f"r{n}"}) for n in range(100))
                     if decide(Rates(permanent=0.5, seed=11), c) == "permanent")
    for _ in range(3):
        with pytest.raises(InjectedPermanentFailure, match=r"attempt 1"):
            maybe_fail(SAGA, "charge_payment", "action", context=ctx_fails)
