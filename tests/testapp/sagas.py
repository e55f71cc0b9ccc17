"""Sagas the integration tests drive. Their behaviour comes from the input:

- ``fail``: step -> "permanent" (PermanentError) or "always" (RuntimeError every attempt)
- ``flaky``: step -> number of attempts that raise before one succeeds
- ``sleep``: step -> seconds every attempt sleeps; ``sleep_first``: only attempt 1
- ``comp_fail``: step -> number of compensation calls that raise
- ``stubborn``: step -> seconds to keep sleeping even after the soft time limit
- ``bad_output``: step -> "nul" or "nan": the action returns a value no database stores as is
- ``wait_for_file``: step -> a path the action waits for (at most 30 s) before it returns
"""
import os
import time

from celery.exceptions import SoftTimeLimitExceeded
from django.db import transaction

from sagas import ChildSaga, Parallel, PermanentError, Retry, Saga, Step, registry

from .models import Call, Ledger


def _record(ctx, kind):
    Call.objects.create(saga_id=ctx.saga_id, step=ctx.step, kind=kind, attempt=ctx.attempt, pid=os.getpid())


def _calls(ctx, kind):
    return Call.objects.filter(saga_id=ctx.saga_id, step=ctx.step, kind=kind).count()


def _wait_for(path, seconds=30):
    """Wait until ``path`` exists; ``path.started`` says the wait began (rows written in a transaction show later)."""
    if path:
        open(f"{path}.started", "w").close()
    deadline = time.monotonic() + seconds
    while path and not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)


def action(ctx):
    _record(ctx, "action")
    spec = ctx.input
    seconds = spec.get("sleep", {}).get(ctx.step, 0)
    if ctx.attempt == 1:
        seconds += spec.get("sleep_first", {}).get(ctx.step, 0)
    if seconds:
        time.sleep(seconds)
    stubborn = spec.get("stubborn", {}).get(ctx.step)
    if stubborn:
        deadline = time.monotonic() + stubborn
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except SoftTimeLimitExceeded:
                pass  # ignores its soft limit: only the hard limit stops it
    _wait_for(spec.get("wait_for_file", {}).get(ctx.step))
    mode = spec.get("fail", {}).get(ctx.step)
    if mode == "permanent":
        raise PermanentError(f"{ctx.step} refused")
    if mode == "always":
        raise RuntimeError(f"{ctx.step} broke")
    if ctx.attempt <= spec.get("flaky", {}).get(ctx.step, 0):
        raise ConnectionError(f"{ctx.step} flaked on attempt {ctx.attempt}")
    # A child saga's step has {"saga_id", "results"} as output: it adds nothing.
    previous = sum(r.get("value", 0) for r in ctx.results.values() if isinstance(r, dict))
    bad = spec.get("bad_output", {}).get(ctx.step)
    if bad:
        return {"value": previous + 1, "note": "nul \x00 here" if bad == "nul" else float("nan")}
    return {"value": previous + 1, "attempt": ctx.attempt}


def compensation(ctx):
    _record(ctx, "compensation")
    _wait_for(ctx.input.get("wait_for_file", {}).get(f"undo-{ctx.step}"))
    if _calls(ctx, "compensation") <= ctx.input.get("comp_fail", {}).get(ctx.step, 0):
        raise RuntimeError(f"cannot undo {ctx.step}")


FAST = Retry(max_attempts=3, backoff=0.05, max_backoff=0.2)
COMP = Retry(max_attempts=2, backoff=0.05, max_backoff=0.1)

registry.register(Saga(
    name="tests.three_steps",
    steps=[
        Step("a", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
        Step("b", action, compensation=compensation, retry=FAST, compensation_retry=COMP, timeout=4),
        Step("c", action, compensation=compensation, retry=Retry(max_attempts=1), compensation_retry=COMP,
             timeout=1),
    ],
))


registry.register(Saga(
    name="tests.parallel",
    steps=[
        Step("a", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
        Parallel(
            "fanout",
            Step("b1", action, compensation=compensation, retry=FAST, compensation_retry=COMP, timeout=4),
            Step("b2", action, compensation=compensation, retry=FAST, compensation_retry=COMP, timeout=4),
            Step("b3", action, compensation=compensation, retry=FAST, compensation_retry=COMP, timeout=4),
        ),
        Step("c", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    ],
))


def credit(ctx):
    _record(ctx, "action")
    Ledger.objects.create(saga_id=ctx.saga_id, amount=ctx.input.get("amount", 1))
    _wait_for(ctx.input.get("wait_for_file", {}).get("credit"))
    if ctx.input.get("fail_after_write"):
        raise RuntimeError("failed after writing")
    return {"credited": ctx.input.get("amount", 1)}


def debit(ctx):
    with transaction.atomic():
        Ledger.objects.create(saga_id=ctx.saga_id, amount=-ctx.result["credited"])


registry.register(Saga(
    name="tests.ledger",
    steps=[
        Step("credit", credit, compensation=debit, retry=Retry(max_attempts=2, backoff=0.05), transactional=True),
        Step("notify", action, retry=Retry(max_attempts=1)),
    ],
))


# Steps with the default timeout (minutes): a worker that dies in them must be
# noticed by its silence, not by their leases.
registry.register(Saga(
    name="tests.slow",
    steps=[
        Step("a", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
        Step("slow", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
        Step("c", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    ],
))


# --- waiting steps ------------------------------------------------------------------------------
# ``gate`` waits for a signal; the input decides: ``skip_wait`` (its action completes it itself),
# ``fail`` as above. Its action keeps its wait's token where a test can read it (as an e-signature
# service would receive it); its compensation keeps the ``ctx.result`` it saw.

from sagas import SkipWait  # noqa: E402

from .models import Seen  # noqa: E402

GATE_PERMISSION = "testapp.change_call"


def ask(ctx):
    Seen.objects.create(saga_id=ctx.saga_id, step=ctx.step, kind="token",
                        data={"token": ctx.signal_token, "attempt": ctx.attempt})
    output = action(ctx)
    return SkipWait(output) if ctx.input.get("skip_wait") else output


def withdraw(ctx):
    Seen.objects.create(saga_id=ctx.saga_id, step=ctx.step, kind="compensation", data=ctx.result)
    compensation(ctx)


def _gated(name: str, timeout: float | None) -> Saga:
    return Saga(name=name, steps=[
        Step("a", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
        Step("gate", ask, compensation=withdraw, retry=FAST, compensation_retry=COMP, wait_for_signal=True,
             signal_timeout=timeout, signal_permission=GATE_PERMISSION),
        Step("c", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    ])


registry.register(_gated("tests.gated", 3600))
registry.register(_gated("tests.gated_short", 1))  # its deadline passes during a test

registry.register(Saga(name="tests.pure_wait", steps=[
    Step("wait", None, wait_for_signal=True),
    Step("c", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
]))

registry.register(Saga(name="tests.parallel_gate", steps=[
    Step("a", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    Parallel(
        "checks",
        Step("gate", ask, compensation=withdraw, retry=FAST, compensation_retry=COMP, wait_for_signal=True),
        Step("b2", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    ),
    Step("c", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
]))


# --- sagas whose steps leave real effects (``ChaosEffect`` rows), for the interleaving harness ------------
# Input ``fail``: the name of the step that refuses for good.

from sagas.chaos import apply_effect, undo_effect  # noqa: E402

registry.register(Saga(name="tests.effects_line", steps=[
    Step("a", apply_effect, compensation=undo_effect, retry=FAST, compensation_retry=COMP),
    Step("b", apply_effect, compensation=undo_effect, retry=FAST, compensation_retry=COMP),
    Step("c", apply_effect, compensation=undo_effect, retry=FAST, compensation_retry=COMP),
]))

registry.register(Saga(name="tests.effects_fanout", steps=[
    Step("a", apply_effect, compensation=undo_effect, retry=FAST, compensation_retry=COMP),
    Parallel("fan", *[Step(f"b{i}", apply_effect, compensation=undo_effect, retry=FAST, compensation_retry=COMP)
                      for i in range(1, 5)]),
    Step("c", apply_effect, compensation=undo_effect, retry=FAST, compensation_retry=COMP),
]))

registry.register(Saga(name="tests.effects_first_fanout", steps=[
    Parallel("fan", *[Step(f"b{i}", apply_effect, compensation=undo_effect, retry=FAST, compensation_retry=COMP)
                      for i in range(1, 4)]),
    Step("c", apply_effect, compensation=undo_effect, retry=FAST, compensation_retry=COMP),
]))

registry.register(Saga(name="tests.effects_gated", steps=[
    Step("a", apply_effect, compensation=undo_effect, retry=FAST, compensation_retry=COMP),
    Step("gate", apply_effect, compensation=undo_effect, retry=FAST, compensation_retry=COMP, wait_for_signal=True,
         signal_timeout=3600),
    Step("c", apply_effect, compensation=undo_effect, retry=FAST, compensation_retry=COMP),
]))

# Longer than one chain segment (SAGAS_CHAIN_SEGMENT, 20): sent in three segments forward and back.
registry.register(Saga(name="tests.long_line", steps=[
    Step(f"s{i:02d}", apply_effect, compensation=undo_effect, retry=FAST, compensation_retry=COMP) for i in range(45)
]))


# --- a point of no return (``pivot``) -------------------------------------------------------------------
# ``ship`` is the pivot: a failure before or at it compensates, one after it pauses the saga for a person.

registry.register(Saga(name="tests.pivoted", steps=[
    Step("a", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    Step("ship", action, compensation=compensation, retry=FAST, compensation_retry=COMP, pivot=True),
    Step("notify", action, retry=FAST),
    Step("close", action, retry=FAST),
]))

registry.register(Saga(name="tests.pivoted_gate", steps=[
    Step("ship", action, compensation=compensation, retry=FAST, compensation_retry=COMP, pivot=True),
    Step("gate", ask, retry=FAST, wait_for_signal=True, signal_timeout=3600),
    Step("close", action, retry=FAST),
]))


# --- conditions (``when``) ------------------------------------------------------------------------------
# Input ``skip``: the names whose condition answers no (a step's, or the Parallel ``p``'s); ``broken``: the
# name whose condition raises. ``b``'s condition also reads ``a``'s output, as its action would see it.


def _unless_skipped(name):
    def when(ctx):
        if ctx.input.get("broken") == name:
            raise ValueError(f"cannot decide {name}")
        return name not in ctx.input.get("skip", [])
    return when


def _b_when(ctx):
    return ctx.results["a"]["value"] == 1 and _unless_skipped("b")(ctx)


registry.register(Saga(name="tests.conditional", steps=[
    Step("a", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    Step("b", action, compensation=compensation, retry=FAST, compensation_retry=COMP, when=_b_when),
    Parallel(
        "p",
        Step("c", action, compensation=compensation, retry=FAST, compensation_retry=COMP, when=_unless_skipped("c")),
        Step("d", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
        when=_unless_skipped("p"),
    ),
    Step("e", action, compensation=compensation, retry=FAST, compensation_retry=COMP, when=_unless_skipped("e")),
]))



# --- child sagas (``ChildSaga``) -------------------------------------------------------------------------
# A parent's input ``child`` is its child's input (``tests.three_steps``, driven as above); the parent's own
# steps read ``fail`` and the rest as any test saga's.


def _child_input(ctx):
    return ctx.input.get("child", {})


registry.register(Saga(name="tests.nested", steps=[
    Step("a", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    ChildSaga("child", "tests.three_steps", input=_child_input),
    Step("c", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
]))

registry.register(Saga(name="tests.nested_parallel", steps=[
    Step("a", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    Parallel(
        "fan",
        ChildSaga("kid", "tests.three_steps", input=_child_input),
        Step("b2", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    ),
    Step("c", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
]))

# Its child may take a second at most (then it is cancelled and the step fails).
registry.register(Saga(name="tests.nested_timeout", steps=[
    Step("a", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    ChildSaga("child", "tests.three_steps", input=_child_input, timeout=1),
    Step("c", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
]))

# Its child's last step waits for a signal, so a test can end the child itself.
registry.register(Saga(name="tests.child_gate", steps=[
    Step("a", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    Step("gate", ask, compensation=withdraw, retry=FAST, compensation_retry=COMP, wait_for_signal=True),
]))

registry.register(Saga(name="tests.nested_gate", steps=[
    Step("a", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    ChildSaga("child", "tests.child_gate", input=_child_input),
    Step("c", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
]))

# Its child's steps have the default time limit (the last of tests.three_steps has one second): a test can
# hold a worker where the child's end is committed for as long as it needs.
registry.register(Saga(name="tests.unhurried", steps=[
    Step("a", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    Step("b", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
]))

registry.register(Saga(name="tests.nested_unhurried", steps=[
    Step("a", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    ChildSaga("child", "tests.unhurried", input=_child_input),
    Step("c", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
]))

registry.register(Saga(name="tests.nested_unknown", steps=[
    Step("a", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    ChildSaga("ghost", "tests.no_such_saga"),
]))

# A saga whose child is another of its kind: it nests until SAGAS_MAX_DEPTH refuses the next.
registry.register(Saga(name="tests.recursive", steps=[
    Step("a", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    ChildSaga("deeper", "tests.recursive", input=lambda ctx: ctx.input),
]))

registry.register(Saga(name="tests.conditional_child", steps=[
    Step("a", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
    ChildSaga("child", "tests.three_steps", input=_child_input, when=lambda ctx: ctx.input.get("with_child", True)),
    Step("c", action, compensation=compensation, retry=FAST, compensation_retry=COMP),
]))
