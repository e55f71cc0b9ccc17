"""The Celery messages a saga becomes: chains of single steps, a Parallel as a group at the end."""
import uuid

from celery.canvas import _chain, group

from sagas import canvas, registry

SAGA_ID = uuid.UUID(int=7)


def parallel():
    return registry.get("tests.parallel")  # a -> Parallel("fanout", b1, b2, b3) -> c


def flatten(signature):
    """(task name or "group", args of each member) for each element of a chain."""
    tasks = signature.tasks if isinstance(signature, _chain) else [signature]
    return [("group", [t.args[1] for t in task.tasks]) if isinstance(task, group) else (task.task, task.args[1])
            for task in tasks]


def test_forward_chain_stops_with_the_first_parallel_as_a_group():
    assert flatten(canvas.forward_chain(SAGA_ID, parallel(), 0)) == [("sagas.run_step", 0), ("group", [1, 2, 3])]


def test_forward_chain_from_a_parallel_is_its_group_alone():
    assert flatten(canvas.forward_chain(SAGA_ID, parallel(), 1)) == [("group", [1, 2, 3])]


def test_forward_chain_after_a_parallel_runs_to_the_end():
    assert flatten(canvas.forward_chain(SAGA_ID, parallel(), 4)) == [("sagas.run_step", 4)]


def test_a_plain_saga_is_still_one_chain():
    assert flatten(canvas.forward_chain(SAGA_ID, registry.get("tests.three_steps"), 0)) == [
        ("sagas.run_step", 0), ("sagas.run_step", 1), ("sagas.run_step", 2)]


def test_each_member_carries_its_time_limits_retry_policy_and_the_error_callback():
    signature = canvas.forward_chain(SAGA_ID, parallel(), 1)
    tasks, _ = signature.prepare_steps((), {}, signature.tasks, link_error=signature.options["link_error"])

    members = tasks[0].tasks
    assert [m.args[1] for m in members] == [1, 2, 3]
    for member in members:
        assert member.options["soft_time_limit"] == 4 and member.options["time_limit"] > 4
        assert member.kwargs["retry"] == {"max_attempts": 3, "backoff": 0.05, "max_backoff": 0.2}
        assert [e["task"] for e in member.options["link_error"]] == ["sagas.compensate_saga"]


def test_members_sent_again_are_a_group_with_the_error_callback_and_nothing_after():
    signature = canvas.steps_group(SAGA_ID, parallel(), [1, 3])
    tasks, _ = signature.prepare_steps((), {}, signature.tasks, link_error=signature.options["link_error"])

    assert len(tasks) == 1 and [m.args[1] for m in tasks[0].tasks] == [1, 3]
    assert all([e["task"] for e in m.options["link_error"]] == ["sagas.compensate_saga"] for m in tasks[0].tasks)


def test_step_and_compensation_messages_name_the_sagas_type_and_version():
    """So the claim on PostgreSQL can be one statement: the definition is known before anything is read."""
    definition = registry.get("tests.three_steps")
    named = {"saga_type": "tests.three_steps", "version": definition.version}

    forward = canvas.forward_chain(SAGA_ID, definition, 0).tasks
    backward = canvas.compensation_chain(SAGA_ID, definition, [1, 0]).tasks

    assert [(t.task, t.args[1]) for t in backward] == [("sagas.compensate_step", 1), ("sagas.compensate_step", 0)]
    for task in (*forward, *backward):
        assert {k: task.kwargs[k] for k in named} == named


def _long_line(n):
    from sagas import Saga, Step

    return Saga(f"tests.line{n}", steps=[Step(f"s{i}", lambda ctx: None, compensation=lambda ctx: None)
                                         for i in range(n)])


def test_a_long_saga_is_sent_in_segments_each_ending_with_the_task_that_sends_the_next(settings):
    settings.SAGAS_CHAIN_SEGMENT = 20
    definition = _long_line(1000)

    first = flatten(canvas.forward_chain(SAGA_ID, definition, 0))
    later = flatten(canvas.forward_chain(SAGA_ID, definition, 980))

    assert first == [("sagas.run_step", i) for i in range(20)] + [("sagas.send_forward", 20)]
    assert later == [("sagas.run_step", i) for i in range(980, 1000)]  # the last segment: nothing after


def test_a_long_compensation_is_sent_in_segments_too(settings):
    settings.SAGAS_CHAIN_SEGMENT = 20
    signature = canvas.compensation_chain(SAGA_ID, _long_line(50), list(range(49, -1, -1)))

    tasks = signature.tasks
    assert [t.args[1] for t in tasks[:20]] == list(range(49, 29, -1))
    assert (tasks[20].task, tasks[20].args[1]) == ("sagas.send_compensation", list(range(29, -1, -1)))


def test_the_first_message_of_a_thousand_step_saga_stays_small(settings):
    import json

    settings.SAGAS_CHAIN_SEGMENT = 20
    signature = canvas.forward_chain(SAGA_ID, _long_line(1000), 0)
    first, rest = signature.tasks[0], signature.tasks[1:]

    # What the first message carries: its own task and the rest of its chain (the segment).
    size = len(json.dumps([dict(first), [dict(t) for t in rest]], default=str))
    assert size < 30_000
