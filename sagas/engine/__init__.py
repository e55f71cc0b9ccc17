"""The state machine: every transition of a saga and of its steps happens here.

Split by phase, behind these names:

- ``core``: the allowed moves, the saga's lock and the database's clock, events, sending after commit;
- ``start``: validating input and starting a saga;
- ``forward``: claiming, running and recording one attempt of one step, and the join of a ``Parallel``;
- ``compensation``: moving to ``compensating`` and undoing one step;
- ``waiting``: waiting steps: the wait, the signals that end it (``complete_step``, ``fail_step``), deadlines;
- ``children``: child sagas: starting one for a ``ChildSaga`` step, its end moving the parent, undoing it;
- ``intervention``: cancel, pause, resume, skip a step, retry compensation, resubmit, release a held saga;
- ``recovery``: the sweeper.

Tasks, views, admin actions and the sweeper call these functions and never
set a status themselves. Messages are sent only after the transaction that
decided them commits, and a send that fails then is left to the sweeper.
"""
from .children import child_ended
from .compensation import begin_compensation, compensate_late_success, execute_compensation, record_compensation
from .core import (
    PARENT_ONLY_MOVES,
    SAGA_MOVES,
    STEP_MOVES,
    Claim,
    Decision,
    Outcome,
    Report,
    ReportPending,
    can_move_saga,
    can_move_step,
    definition_of,
)
from .forward import claim_step, execute_step, record_step
from .intervention import cancel, pause, release_held, resubmit, resume, retry_compensation, skip_step
from .recovery import SweepReport, resume_stalled, sweep
from .running import INFRASTRUCTURE_ERRORS
from .start import start_saga, validate_input
from .waiting import complete_step, complete_step_by_token, fail_step, fail_step_by_token, may_signal

__all__ = [
    "PARENT_ONLY_MOVES", "SAGA_MOVES", "STEP_MOVES", "Claim", "Decision", "INFRASTRUCTURE_ERRORS", "Outcome",
    "Report", "ReportPending",
    "SweepReport", "begin_compensation", "can_move_saga", "can_move_step", "cancel", "child_ended", "claim_step",
    "compensate_late_success",
    "complete_step", "complete_step_by_token", "definition_of", "execute_compensation", "execute_step",
    "fail_step", "fail_step_by_token", "may_signal", "pause", "record_compensation", "record_step",
    "release_held", "resubmit", "resume", "resume_stalled", "retry_compensation", "skip_step", "start_saga",
    "sweep", "validate_input",
]
