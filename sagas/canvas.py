"""How a saga becomes Celery messages: signatures, chains and their time limits.

A workflow is data here: the forward chain and the compensation chain are
built as signatures (inspectable, serialisable) and sent only after the
transaction that decided them has committed.
"""
from __future__ import annotations

from celery import chain, group
from celery.canvas import Signature
from django.conf import settings

from .definitions import Saga, Step, registry


def effective_timeout(step: Step, *, compensation: bool = False) -> float:
    """Seconds one attempt may run: the step's own timeout, or the default."""
    own = step.compensation_timeout if compensation else step.timeout
    return float(own or settings.SAGAS_DEFAULT_STEP_TIMEOUT)


def hard_time_limit(step: Step, *, compensation: bool = False) -> float:
    """The pool kills an attempt still running this long after it began."""
    return effective_timeout(step, compensation=compensation) + settings.SAGAS_HARD_TIMEOUT_GRACE


def names_of(definition: Saga | None) -> dict:
    """What a step's or a compensation's message says of its saga besides the id: its type and version, so
    the claim need not read them first (it checks them against the stored saga)."""
    return {"saga_type": definition.name, "version": definition.version} if definition is not None else {}


def step_signature(saga_id, index: int, step: Step, definition: Saga | None = None) -> Signature:
    """``definition``: named in the message too (``names_of``)."""
    from .tasks import run_step

    return run_step.si(str(saga_id), index, retry=step.retry.as_dict(), **names_of(definition)).set(
        soft_time_limit=effective_timeout(step), time_limit=hard_time_limit(step)
    )


def compensation_signature(saga_id, index: int, step: Step, definition: Saga | None = None) -> Signature:
    """``definition``: named in the message too (``names_of``)."""
    from .tasks import compensate_step

    return compensate_step.si(str(saga_id), index, retry=step.compensation_retry.as_dict(),
                              **names_of(definition)).set(
        soft_time_limit=effective_timeout(step, compensation=True),
        time_limit=hard_time_limit(step, compensation=True),
    )


def forward_chain(saga_id, definition: Saga, from_index: int = 0) -> Signature:
    """run_step for each step from ``from_index`` up to and including the first Parallel.

    A Parallel ends the chain as a group of its members (those from
    ``from_index`` on): there is no chord, because the join needs no result
    backend. The member whose success completes the stage has the engine
    send what follows. Every task carries the error callback compensate_saga.

    A chain holds ``SAGAS_CHAIN_SEGMENT`` steps at most, then a
    ``sagas.send_forward`` task that sends the next segment: every message
    carries the rest of its chain, so a saga of a thousand steps in one
    chain would send the thousand signatures with every step (quadratic in
    bytes through the broker, and in the time to read each message).
    """
    from .tasks import compensate_saga

    stage = definition.stage_of(from_index)
    signatures: list[Signature] = []
    for indices in definition.stages[stage:]:
        if definition.is_parallel(indices[0]):
            members = [step_signature(saga_id, i, definition.step_at(i), definition) for i in indices if i >= from_index]
            signatures.append(group(*members))
            break
        if len(signatures) == settings.SAGAS_CHAIN_SEGMENT:
            signatures.append(signature_of("sagas.send_forward", str(saga_id), indices[0]))
            break
        signatures.append(step_signature(saga_id, indices[0], definition.step_at(indices[0]), definition))
    return chain(*signatures).on_error(compensate_saga.si(str(saga_id)))


def signature_of(task: str, *args) -> Signature:
    """An immutable signature of one of the orchestrator's tasks, by its registered name."""
    from config.celery import app

    return app.signature(task, args=args, immutable=True)


def steps_group(saga_id, definition: Saga, indices: list[int]) -> Signature:
    """run_step for each index at once, each with the error callback: members of a Parallel sent again."""
    from .tasks import compensate_saga

    members = [step_signature(saga_id, i, definition.step_at(i), definition) for i in indices]
    return chain(group(*members)).on_error(compensate_saga.si(str(saga_id)))


def compensation_chain(saga_id, definition: Saga, indices: list[int]) -> Signature:
    """compensate_step for each index, in the order given (latest step first); in segments as
    ``forward_chain``'s, the rest sent by a ``sagas.send_compensation`` task."""
    segment, rest = indices[:settings.SAGAS_CHAIN_SEGMENT], indices[settings.SAGAS_CHAIN_SEGMENT:]
    signatures = [compensation_signature(saga_id, i, definition.step_at(i), definition) for i in segment]
    if rest:
        signatures.append(signature_of("sagas.send_compensation", str(saga_id), rest))
    return chain(*signatures)


def _definition_for(saga_id) -> Saga:
    from .models import SagaInstance

    saga_type, version = SagaInstance.objects.values_list("saga_type", "version").get(pk=saga_id)
    return registry.get(saga_type, version)


# ``definition``: the saga's, when the caller has it (the engine always
# does); else it is looked up from the stored instance.

def dispatch_forward(saga_id, from_index: int = 0, *, definition: Saga | None = None) -> None:
    forward_chain(saga_id, definition or _definition_for(saga_id), from_index).apply_async()


def dispatch_steps(saga_id, indices: list[int], *, definition: Saga | None = None) -> None:
    """Send these steps (members of one Parallel) each on its own; nothing follows them."""
    if indices:
        steps_group(saga_id, definition or _definition_for(saga_id), indices).apply_async()


def dispatch_compensation(saga_id, indices: list[int], *, definition: Saga | None = None) -> None:
    if indices:
        compensation_chain(saga_id, definition or _definition_for(saga_id), indices).apply_async()


def dispatch_late_compensation(saga_id, index: int, attempt: int, result, *, definition: Saga | None = None) -> None:
    """Undo again what a late success of step ``index`` applied (``engine.compensate_late_success``)."""
    definition = definition or _definition_for(saga_id)
    step = definition.step_at(index)
    signature_of("sagas.compensate_late_success", str(saga_id), index, attempt, result).set(
        soft_time_limit=effective_timeout(step, compensation=True),
        time_limit=hard_time_limit(step, compensation=True)).apply_async()


def dispatch_child_ended(parent_id, child_id) -> None:
    """Tell a parent saga that its child ended (``sagas.child_ended``): the parent's step moves on."""
    signature_of("sagas.child_ended", str(parent_id), str(child_id)).apply_async()
