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


def _sized(name: str) -> Saga | None:
    size = name.rsplit(".s", 1)[-1]
    return Saga(name=name, steps=[Step(f"s{i}", noop) for i in range(int(size))]) if size.isdigit() else None


def test_a_family_builds_its_sagas_on_first_use_and_lists_only_those_used():
    registry = Registry()
    registry.register_family("sized.", _sized)

    assert len(registry) == 0
    three = registry.get("sized.s3")
    assert [s.name for s in three.steps] == ["s0", "s1", "s2"]
    assert registry.get("sized.s3", 1) is three  # built once
    assert [s.name for s in registry] == ["sized.s3"]


def test_a_name_its_family_does_not_build_is_unknown():
    registry = Registry()
    registry.register_family("sized.", _sized)

    with pytest.raises(UnknownSagaType):
        registry.get("sized.sx")
    with pytest.raises(UnknownSagaType):
        registry.get("sized.s3", 2)
    assert len(registry) == 1  # sized.s3 version 1 was built by the second look-up


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
        (Saga(name="par", steps=[Parallel("p")]), "'par', Parallel\\('p'\\): a Parallel needs at least one step"),
        (Saga(name="nested", steps=[Parallel("p", Step("a", noop), Parallel("q", Step("b", noop)))]),
         "'nested', Parallel\\('p'\\): Parallel\\('q'\\) is nested; Parallel members must be Steps"),
        (Saga(name="member", steps=[Parallel("p", Step("a", noop), noop)]),
         "'member', Parallel\\('p'\\): <function noop"),
        (Saga(name="across", steps=[Step("a", noop), Parallel("p", Step("b", noop), Step("a", noop))]),
         "'across': duplicate step name 'a'"),
        (Saga(name="inside", steps=[Parallel("p", Step("b", noop), Step("b", noop))]),
         "'inside': duplicate step name 'b'"),
        (Saga(name="twogroups", steps=[Parallel("p", Step("a", noop)), Parallel("p", Step("b", noop))]),
         "'twogroups': duplicate Parallel name 'p'"),
        (Saga(name="clash", steps=[Step("p", noop), Parallel("p", Step("b", noop))]),
         "'clash': 'p' names both a Parallel and a step"),
        (Saga(name="badgroup", steps=[Parallel("has space", Step("b", noop))]),
         "Parallel name 'has space' is not a valid identifier"),
        (Saga(name="noaction", steps=[Step("a", None)]),
         "step 'a': action=None is only allowed for a pure wait"),
        (Saga(name="zerowait", steps=[Step("a", noop, wait_for_signal=True, signal_timeout=0)]),
         "step 'a': signal_timeout must be a positive number"),
        (Saga(name="negwait", steps=[Step("a", noop, wait_for_signal=True, signal_timeout=-5)]),
         "step 'a': signal_timeout must be a positive number"),
        (Saga(name="textwait", steps=[Step("a", noop, wait_for_signal=True, signal_timeout="1h")]),
         "step 'a': signal_timeout must be a positive number"),
        (Saga(name="perm", steps=[Step("a", noop, wait_for_signal=True, signal_permission="approve_budget")]),
         "step 'a': signal_permission must be shaped 'app_label.codename'"),
        (Saga(name="perm2", steps=[Step("a", noop, wait_for_signal=True, signal_permission="a.b.c")]),
         "step 'a': signal_permission must be shaped 'app_label.codename'"),
        (Saga(name="perm3", steps=[Step("a", noop, wait_for_signal=True, signal_permission=42)]),
         "step 'a': signal_permission must be shaped 'app_label.codename'"),
        (Saga(name="nowait", steps=[Step("a", noop, signal_timeout=60)]),
         "step 'a': signal_timeout and signal_permission need wait_for_signal=True"),
        (Saga(name="nowait2", steps=[Step("a", noop, signal_permission="corporate.approve_budget")]),
         "step 'a': signal_timeout and signal_permission need wait_for_signal=True"),
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


# --- Parallel ---------------------------------------------------------------------------


def fanout_saga() -> Saga:
    return Saga(name="fan", steps=[
        Step("a", noop),
        Parallel("fanout", Step("b1", noop), Step("b2", noop, compensation=noop), Step("b3", noop)),
        Step("c", noop),
    ])


def test_parallel_is_accepted_where_a_step_may_stand():
    registry = Registry()

    saga = registry.register(fanout_saga())

    assert registry.get("fan") is saga


def test_steps_are_flat_and_stages_group_their_indices():
    saga = fanout_saga()

    assert [s.name for s in saga.steps] == ["a", "b1", "b2", "b3", "c"]
    assert saga.stages == [[0], [1, 2, 3], [4]]
    assert saga.step_at(2).name == "b2"
    assert [saga.stage_of(i) for i in range(5)] == [0, 1, 1, 1, 2]
    assert saga.stage_indices(2) == [1, 2, 3]
    assert [saga.group_of(i) for i in range(5)] == [None, "fanout", "fanout", "fanout", None]
    assert [saga.next_stage_start(i) for i in range(5)] == [1, 4, 4, 4, None]


def test_a_parallel_may_open_or_close_a_saga():
    saga = Saga(name="edges", steps=[Parallel("first", Step("a", noop), Step("b", noop)),
                                      Parallel("last", Step("c", noop))])
    saga.validate()

    assert saga.stages == [[0, 1], [2]]
    assert saga.is_parallel(2) and saga.next_stage_start(2) is None


def test_describe_shows_each_steps_stage_and_group():
    described = fanout_saga().describe()

    assert [(s["name"], s["stage"], s["parallel_group"]) for s in described["steps"]] == [
        ("a", 0, None), ("b1", 1, "fanout"), ("b2", 1, "fanout"), ("b3", 1, "fanout"), ("c", 2, None),
    ]
    assert described["steps"][2]["has_compensation"] is True


def test_a_waiting_step_may_have_no_action_and_may_stand_in_a_parallel():
    registry = Registry()
    saga = registry.register(Saga(name="gates", steps=[
        Step("wait", None, wait_for_signal=True, signal_timeout=3600, signal_permission="corporate.approve_budget"),
        Parallel("p", Step("b", noop, wait_for_signal=True), Step("c", noop)),
    ]))
    described = saga.describe()["steps"]
    assert [(s["name"], s["wait_for_signal"], s["signal_timeout"], s["signal_permission"]) for s in described] == [
        ("wait", True, 3600, "corporate.approve_budget"), ("b", True, None, None), ("c", False, None, None)]
