"""The tree invariants (``sagas.invariants.tree_problems``) pass a consistent parent and child and name each
way a broken tree is wrong. The rows are built directly: no engine, no worker."""
import uuid

import pytest

from sagas.invariants import check_sagas, check_trees, tree_problems
from sagas.models import SagaInstance, SagaStatus, StepRecord, StepStatus


def parent(status: str) -> SagaInstance:
    return SagaInstance.objects.create(saga_type="tests.parent", status=status)


def child_step(saga: SagaInstance, status: str, name: str = "provision") -> StepRecord:
    return StepRecord.objects.create(saga=saga, index=StepRecord.objects.filter(saga=saga).count(), name=name,
                                     status=status)


def child(saga: SagaInstance, record: StepRecord, status: str) -> SagaInstance:
    made = SagaInstance.objects.create(saga_type="tests.child", status=status, parent=saga, parent_step=record,
                                       depth=saga.depth + 1)
    if record.status == StepStatus.SUCCEEDED:  # the step's output names its child, as the engine writes it
        StepRecord.objects.filter(pk=record.pk).update(result={"saga_id": str(made.pk), "results": {}})
    return made


def problems_of(saga: SagaInstance) -> list[str]:
    return tree_problems(SagaInstance.objects.filter(pk=saga.pk)).get(str(saga.pk), [])


@pytest.mark.parametrize("parent_status, step_status, child_status", [
    (SagaStatus.SUCCEEDED, StepStatus.SUCCEEDED, SagaStatus.SUCCEEDED),
    (SagaStatus.COMPENSATED, StepStatus.COMPENSATED, SagaStatus.COMPENSATED),  # undone as a whole
    (SagaStatus.COMPENSATED, StepStatus.FAILED, SagaStatus.COMPENSATED),  # the child compensated itself
    (SagaStatus.FAILED, StepStatus.COMPENSATION_FAILED, SagaStatus.FAILED),  # a person must act on both
])
def test_a_consistent_tree_passes(db, parent_status, step_status, child_status):
    saga = parent(parent_status)
    child(saga, child_step(saga, step_status), child_status)

    assert problems_of(saga) == []
    assert check_trees(SagaInstance.objects.filter(pk=saga.pk)).passed


def test_a_compensated_parent_with_a_succeeded_child_is_caught(db):
    saga = parent(SagaStatus.COMPENSATED)
    kid = child(saga, child_step(saga, StepStatus.COMPENSATED), SagaStatus.SUCCEEDED)

    found = problems_of(saga)
    assert f"compensated, but its child {kid.pk} of step provision is succeeded" in found
    assert f"step provision is compensated, but its child {kid.pk} of step provision is succeeded" in found


def test_a_succeeded_parent_with_a_child_that_did_not_succeed_is_caught(db):
    saga = parent(SagaStatus.SUCCEEDED)
    record = child_step(saga, StepStatus.SUCCEEDED)
    kid = child(saga, record, SagaStatus.COMPENSATED)

    assert f"succeeded, but its child {kid.pk} of step provision is compensated" in problems_of(saga)


def test_a_step_whose_status_disagrees_with_its_childs_is_caught(db):
    saga = parent(SagaStatus.FAILED)
    kid = child(saga, child_step(saga, StepStatus.COMPENSATION_FAILED), SagaStatus.COMPENSATED)

    assert problems_of(saga) == [f"step provision is compensation_failed, but its child {kid.pk} of step "
                                 f"provision is compensated"]


def test_a_succeeded_step_that_names_another_child_is_caught(db):
    saga = parent(SagaStatus.SUCCEEDED)
    record = child_step(saga, StepStatus.SUCCEEDED)
    kid = child(saga, record, SagaStatus.SUCCEEDED)
    other = str(uuid.uuid4())
    StepRecord.objects.filter(pk=record.pk).update(result={"saga_id": other, "results": {}})

    assert problems_of(saga) == [f"step provision succeeded naming child {other}, not {kid.pk}"]


def test_a_child_a_step_replaced_must_have_been_compensated(db):
    saga = parent(SagaStatus.SUCCEEDED)
    record = child_step(saga, StepStatus.SUCCEEDED)
    first = SagaInstance.objects.create(saga_type="tests.child", status=SagaStatus.COMPENSATED, parent=saga,
                                        parent_step=record, depth=1)
    child(saga, record, SagaStatus.SUCCEEDED)  # the step ran again after its pivot: a second child
    assert problems_of(saga) == []

    SagaInstance.objects.filter(pk=first.pk).update(status=SagaStatus.SUCCEEDED)
    assert problems_of(saga) == [f"child {first.pk} of step provision is succeeded, though the step started "
                                 f"another after it"]


def test_an_active_parent_is_not_judged(db):
    saga = parent(SagaStatus.RUNNING)  # its step waits: the child's end is a message away
    child(saga, child_step(saga, StepStatus.WAITING), SagaStatus.SUCCEEDED)

    assert problems_of(saga) == []


def test_check_sagas_includes_the_tree_check(db):
    saga = parent(SagaStatus.COMPENSATED)
    child(saga, child_step(saga, StepStatus.COMPENSATED), SagaStatus.SUCCEEDED)

    tree = next(c for c in check_sagas(SagaInstance.objects.filter(pk=saga.pk))
                if c.name == "parent sagas agree with their child sagas")
    assert not tree.passed and "1 inconsistent" in tree.detail
