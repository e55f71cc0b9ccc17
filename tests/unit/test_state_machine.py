import pytest

from sagas.engine import PARENT_ONLY_MOVES, SAGA_MOVES, STEP_MOVES, can_move_saga, can_move_step
from sagas.models import SagaStatus, StepStatus


@pytest.mark.parametrize(
    "current, target",
    [
        (SagaStatus.PENDING, SagaStatus.RUNNING),
        (SagaStatus.RUNNING, SagaStatus.SUCCEEDED),
        (SagaStatus.RUNNING, SagaStatus.COMPENSATING),
        (SagaStatus.PENDING, SagaStatus.COMPENSATING),
        (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED),
        (SagaStatus.COMPENSATING, SagaStatus.FAILED),
        (SagaStatus.FAILED, SagaStatus.COMPENSATING),
    ],
)
def test_allowed_saga_moves(current, target):
    assert can_move_saga(current, target)


@pytest.mark.parametrize(
    "current, target",
    [
        (SagaStatus.PENDING, SagaStatus.SUCCEEDED),
        (SagaStatus.SUCCEEDED, SagaStatus.COMPENSATING),
        (SagaStatus.COMPENSATED, SagaStatus.RUNNING),
        (SagaStatus.FAILED, SagaStatus.SUCCEEDED),
        (SagaStatus.RUNNING, SagaStatus.COMPENSATED),
        (SagaStatus.RUNNING, SagaStatus.FAILED),
        (SagaStatus.COMPENSATING, SagaStatus.RUNNING),
    ],
)
def test_refused_saga_moves(current, target):
    assert not can_move_saga(current, target)


def test_finished_sagas_are_final_except_failed_and_a_child_its_parent_undoes():
    assert SAGA_MOVES[SagaStatus.COMPENSATED] == set()
    assert SAGA_MOVES[SagaStatus.FAILED] == {SagaStatus.COMPENSATING}
    # Succeeded is final for everyone but a child's parent, which may undo it as a whole.
    assert SAGA_MOVES[SagaStatus.SUCCEEDED] == {SagaStatus.COMPENSATING}
    assert PARENT_ONLY_MOVES == {(SagaStatus.SUCCEEDED, SagaStatus.COMPENSATING)}
    assert not any(can_move_saga(SagaStatus.SUCCEEDED, target) for target in SagaStatus.values)
    assert can_move_saga(SagaStatus.SUCCEEDED, SagaStatus.COMPENSATING, by_parent=True)


@pytest.mark.parametrize(
    "current, target, allowed",
    [
        (StepStatus.PENDING, StepStatus.RUNNING, True),
        (StepStatus.PENDING, StepStatus.SKIPPED, True),
        (StepStatus.PENDING, StepStatus.SUCCEEDED, False),
        (StepStatus.RUNNING, StepStatus.RUNNING, True),
        (StepStatus.RUNNING, StepStatus.SUCCEEDED, True),
        (StepStatus.RUNNING, StepStatus.FAILED, True),
        (StepStatus.RUNNING, StepStatus.COMPENSATING, False),
        (StepStatus.SUCCEEDED, StepStatus.COMPENSATING, True),
        (StepStatus.SUCCEEDED, StepStatus.FAILED, False),
        # Only a failed step whose action may have applied effects is compensated.
        (StepStatus.FAILED, StepStatus.COMPENSATING, True),
        (StepStatus.FAILED, StepStatus.SUCCEEDED, False),
        (StepStatus.COMPENSATING, StepStatus.COMPENSATED, True),
        (StepStatus.COMPENSATING, StepStatus.COMPENSATION_FAILED, True),
        (StepStatus.COMPENSATION_FAILED, StepStatus.COMPENSATING, True),
        (StepStatus.COMPENSATED, StepStatus.COMPENSATING, False),
        (StepStatus.SKIPPED, StepStatus.RUNNING, False),
    ],
)
def test_step_moves(current, target, allowed):
    assert can_move_step(current, target) is allowed


def test_every_status_has_an_entry_in_the_state_machine():
    assert set(SAGA_MOVES) == set(SagaStatus.values)
    assert set(STEP_MOVES) == set(StepStatus.values)
